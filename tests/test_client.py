"""The client SDK against a real service process on the fake engine: results, retries, errors, streams."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import socketserver
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from ocr_client import (
    AsyncOcrClient,
    BadRequest,
    Block,
    Conflict,
    NotFound,
    OcrClient,
    OcrConnectionError,
    Overloaded,
    Page,
    RateLimited,
    RetryPolicy,
    Task,
    TaskFailed,
    TaskProgress,
    Unauthorized,
    WaitTimeout,
)
from tests.client_helpers import fake_service, metric, page_digest, page_png, queue_full_rejections
from tests.helpers import ServiceProcess, file_server, free_port, solid_image
from tests.helpers import _serve as serve

NO_RETRY = RetryPolicy(max_wait=0)


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """Room for 4 waiting pages, 2-page batches of 0.15 s: more than 4 clients at once get 503s."""
    with fake_service(tmp_path_factory.mktemp("busy"), max_queue_size="4", batch_size="2",
                      fake_batch_latency="0.05", fake_item_latency="0.05") as service:
        yield service


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """One page at a time, 1 s each, room for 2 waiting: tasks stay pending or running long enough to act on."""
    with fake_service(tmp_path_factory.mktemp("slow"), max_queue_size="2", batch_size="1",
                      fake_batch_latency="1.0", fake_item_latency="0") as service:
        yield service


KEYS = ("key-one", "key-two")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    with fake_service(tmp_path_factory.mktemp("keyed"), api_keys=",".join(KEYS), rate_limit="5/second",
                      fake_batch_latency="0", fake_item_latency="0") as service:
        yield service


def two_page_pdf() -> bytes:
    buffer = io.BytesIO()
    solid_image(1, (300, 200)).save(buffer, format="PDF", save_all=True, append_images=[solid_image(2, (300, 200))])
    return buffer.getvalue()


# Results


def test_ocr_returns_a_typed_task_with_pages_and_blocks(busy: ServiceProcess, tmp_path: Path) -> None:
    path = tmp_path / "scan.png"
    path.write_bytes(page_png(7))
    with OcrClient(busy.url) as client:
        task = client.ocr(path)
    assert isinstance(task, Task) and task.ok and task.done
    assert task.progress.pages_done == task.progress.pages_total == 1
    [page] = task.pages
    assert isinstance(page, Page) and page.page == 1 and not page.truncated
    assert f"sha256={page_digest(7)}" in page.markdown and task.result == page.markdown
    # The server's default prompt asks for grounding: the fake engine answers with three regions.
    assert [block.label for block in page.blocks] == ["title", "text", "image"]
    assert page.width and page.height  # the pixel space the boxes are in
    assert all(isinstance(block, Block) and len(block.bbox) == 4 for block in page.blocks)


def test_a_pdf_comes_back_page_by_page_and_options_reach_the_engine(busy: ServiceProcess) -> None:
    with OcrClient(busy.url) as client:
        task_id = client.submit(two_page_pdf(), filename="two.pdf", prompt="<image>\nFree OCR.", max_tokens=2)
        task = client.wait(task_id)
    assert task.ok and [page.page for page in task.pages] == [1, 2]
    # max_tokens=2 cut every page (the fake engine counts words as tokens); Free OCR has no grounding.
    assert all(page.truncated and page.finish_reason == "length" and not page.blocks for page in task.pages)
    assert task.warnings


def test_sync_clients_wait_out_a_full_queue(busy: ServiceProcess) -> None:
    """Twelve blocking clients at once against room for four: every one gets its own result."""
    before = queue_full_rejections(busy.url)

    def one(seed: int) -> tuple[Task, int]:
        with OcrClient(busy.url) as client:
            return client.ocr(page_png(seed)), client.counters.refusals

    with ThreadPoolExecutor(12) as pool:
        outcomes = list(pool.map(one, range(100, 112)))
    for seed, (task, _) in zip(range(100, 112), outcomes, strict=True):
        assert task.ok and f"sha256={page_digest(seed)}" in (task.result or "")
    refusals = sum(count for _, count in outcomes)
    assert refusals > 0
    assert queue_full_rejections(busy.url) - before == refusals


async def test_async_client_waits_out_a_full_queue(busy: ServiceProcess) -> None:
    before = queue_full_rejections(busy.url)
    async with AsyncOcrClient(busy.url) as client:
        tasks = await asyncio.gather(*(client.ocr(page_png(seed)) for seed in range(200, 220)))
        refusals = client.counters.refusals
    for seed, task in zip(range(200, 220), tasks, strict=True):
        assert task.ok and f"sha256={page_digest(seed)}" in (task.result or "")
    assert refusals > 0
    assert queue_full_rejections(busy.url) - before == refusals


async def test_urls_and_url_batches(busy: ServiceProcess) -> None:
    with file_server({"/a.png": page_png(301), "/b.png": page_png(302)}) as base:
        async with AsyncOcrClient(busy.url) as client:
            task = await client.wait(await client.submit_url(f"{base}/a.png"))
            assert task.ok and task.url == f"{base}/a.png" and page_digest(301) in (task.result or "")
            batch_id = await client.submit_urls([f"{base}/a.png", f"{base}/b.png", f"{base}/missing.png"])
            batch = await client.batch(batch_id)
            ended = [await client.wait(item.task_id) for item in batch.results]
            batch = await client.batch(batch_id)
    assert [task.status for task in ended] == ["completed", "completed", "failed"]
    assert page_digest(302) in (ended[1].result or "") and "404" in (ended[2].error or "")
    assert batch.done and (batch.total, batch.completed, batch.failed) == (3, 2, 1)


def test_stats(busy: ServiceProcess) -> None:
    with OcrClient(busy.url) as client:
        stats = client.stats()
    assert stats["engine"] == "fake" and stats["queue_limit"] == 4


# Waiting


def test_wait_long_polls_instead_of_looping(slow: ServiceProcess) -> None:
    polls = {"route": "/ocr/{task_id}", "method": "GET"}
    with OcrClient(slow.url) as client:
        task_id = client.submit(page_png(1))
        before = metric(slow.url, "ocr_http_requests_total", **polls)
        task = client.wait(task_id)
        after = metric(slow.url, "ocr_http_requests_total", **polls)
    assert task.ok
    assert after - before <= 2  # a second of engine time: one long poll (two if it began just before a window ended)


def test_wait_gives_up_after_its_timeout_with_the_last_state(slow: ServiceProcess) -> None:
    with OcrClient(slow.url) as client:
        task_id = client.submit(page_png(2))
        with pytest.raises(WaitTimeout) as caught:
            client.wait(task_id, timeout=0.2)
        assert caught.value.task.status in {"pending", "processing"}
        assert client.wait(task_id).ok


def test_cancel_a_waiting_and_a_running_task_and_conflict_for_an_ended_one(slow: ServiceProcess) -> None:
    with OcrClient(slow.url) as client:
        running = client.submit(page_png(3))
        updates: list[str] = []
        deadline = time.monotonic() + 10
        while client.get(running).status != "processing" and time.monotonic() < deadline:
            time.sleep(0.02)
        waiting = client.submit(page_png(4))
        done = client.submit(page_png(5))
        assert client.cancel(waiting).status == "cancelled"
        assert client.cancel(running).status == "cancelled"
        assert client.wait(done, on_update=lambda task: updates.append(task.status)).ok
        assert updates[-1] == "completed"
        with pytest.raises(Conflict) as caught:
            client.cancel(done)
        assert caught.value.status_code == 409 and "completed" in caught.value.detail


def test_a_full_queue_past_the_retry_budget_is_overloaded(slow: ServiceProcess) -> None:
    accepted: list[str] = []
    with OcrClient(slow.url, retry=NO_RETRY) as client:
        with pytest.raises(Overloaded) as caught:
            for seed in range(10):
                accepted.append(client.submit(page_png(seed)))
        error = caught.value
        assert error.status_code == 503 and error.retry_after is not None and error.retry_after >= 1
        assert error.detail == "Service is at full capacity. Please try again later."
        for task_id in accepted:  # leave the queue empty for the next test
            with contextlib.suppress(Conflict):
                client.cancel(task_id)
            client.wait(task_id)


# Errors


def test_typed_errors_carry_the_status_and_the_servers_detail(busy: ServiceProcess) -> None:
    with OcrClient(busy.url) as client:
        with pytest.raises(NotFound) as not_found:
            client.get("no-such-task")
        assert not_found.value.status_code == 404 and "no-such-task" in not_found.value.detail
        with pytest.raises(NotFound):
            client.cancel("no-such-task")
        with pytest.raises(BadRequest) as corrupt:
            client.submit(b"\x89PNG\r\n\x1a\n broken", filename="broken.png")
        assert corrupt.value.status_code == 422 and "corrupt" in corrupt.value.detail
        with pytest.raises(BadRequest) as empty:
            client.submit(b"")
        assert empty.value.status_code == 400 and "empty" in empty.value.detail
        with pytest.raises(BadRequest) as invalid:
            client.submit(page_png(1), temperature=5)
        assert invalid.value.status_code == 422
        with pytest.raises(TaskFailed) as failed:
            client.ocr(page_png(1), prompt="<image>\n[fake:fail]")
        assert failed.value.task.status == "failed" and "[fake:fail]" in failed.value.detail


def test_api_keys(keyed: ServiceProcess) -> None:
    for key in (None, "wrong"):
        with OcrClient(keyed.url, api_key=key) as client, pytest.raises(Unauthorized) as caught:
            client.stats()
        assert caught.value.status_code == 401 and "API key" in caught.value.detail
    with OcrClient(keyed.url, api_key=KEYS[0]) as owner, OcrClient(keyed.url, api_key=KEYS[1]) as other:
        task = owner.ocr(page_png(5))
        assert task.ok
        with pytest.raises(NotFound):  # a task belongs to the key that created it
            other.get(task.task_id)


def test_rate_limit_is_waited_out_or_raised(keyed: ServiceProcess) -> None:
    limited = {"status": "429"}
    before = metric(keyed.url, "ocr_http_requests_total", api_key=KEYS[0], **limited)
    with OcrClient(keyed.url, api_key=KEYS[0]) as client:
        for _ in range(12):
            client.stats()
        refusals = client.counters.refusals
    assert refusals > 0
    assert metric(keyed.url, "ocr_http_requests_total", api_key=KEYS[0], **limited) - before == refusals
    with OcrClient(keyed.url, api_key=KEYS[1], retry=NO_RETRY) as client, pytest.raises(RateLimited) as caught:
        for _ in range(12):
            client.stats()
    assert caught.value.status_code == 429 and caught.value.retry_after and "rate limit" in caught.value.detail


# Connection errors


@contextlib.contextmanager
def hanging_up_server() -> Iterator[tuple[str, list[bytes]]]:
    """A TCP server on 127.0.0.1 that reads each request's first bytes and closes without answering."""
    seen: list[bytes] = []

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            seen.append(self.request.recv(65536))

    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_a_broken_connection_is_retried_for_a_get_but_never_for_a_post_that_was_sent() -> None:
    retry = RetryPolicy(max_wait=1.0, base_delay=0.1)
    with hanging_up_server() as (url, seen), OcrClient(url, retry=retry) as client:
        with pytest.raises(OcrConnectionError):
            client.get("some-task")
        gets = len(seen)
        assert gets >= 2 and client.counters.reconnects == gets - 1
        with pytest.raises(OcrConnectionError):
            client.submit(page_png(1))
        posts = [request for request in seen if request.startswith(b"POST")]
        assert len(posts) == 1  # the service may have accepted it: a second one could run it twice


def test_a_post_that_never_left_is_sent_again() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens: connection refused before anything is sent
    with OcrClient(url, retry=RetryPolicy(max_wait=0.6, base_delay=0.1)) as client, pytest.raises(OcrConnectionError):
        client.submit(page_png(1))
    assert client.counters.reconnects >= 1


# Event streams: `stream()` is tested on events written to the documented contract, around a
# real task's JSON, served over HTTP with a dropped connection, and against the real endpoint.


@contextlib.contextmanager
def recorded_stream(task: dict, abrupt: bool) -> Iterator[tuple[str, list[str | None]]]:
    """Serve a task's events; the first connection breaks after page 1, the next resumes after its id.

    `abrupt`: the first connection dies mid-chunk (a transport error); else it ends cleanly early.
    """
    pages = task["pages"]
    progress = {"task_id": task["task_id"], "status": "processing", "pages_done": 0, "pages_total": len(pages)}
    events = [f"event: progress\ndata: {json.dumps(progress)}\n\n", ": keep-alive\r\n\r\n"]
    events += [f"id: {n}\nevent: page\ndata: {json.dumps(page)}\n\n" for n, page in enumerate(pages, 1)]
    # The last event's JSON spans several data: lines, as a server may send it.
    events.append("event: done\n" + "".join(f"data: {line}\n" for line in json.dumps(task, indent=1).splitlines()) + "\n")
    resumed_from: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            last = self.headers.get("Last-Event-ID")
            resumed_from.append(last)
            first = last is None
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            todo = events[:3] if first else events[2 + int(last):]
            for event in todo:
                data = event.encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            if first and abrupt:
                self.wfile.write(b"40\r\npartial")  # a chunk cut short
            else:
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            self.close_connection = True

    with serve(Handler) as base:
        yield base, resumed_from


@pytest.fixture(scope="module")
def real_task(busy: ServiceProcess) -> dict:
    """A real two-page task, as GET /ocr/{id} answers it."""
    with OcrClient(busy.url) as client:
        task_id = client.wait(client.submit(two_page_pdf())).task_id
    return httpx.get(f"{busy.url}/ocr/{task_id}").json()


def check_streamed(items: list, task: dict) -> None:
    kinds = [type(item) for item in items]
    assert kinds == [TaskProgress, Page, Page, Task]
    assert [page.page for page in items[1:3]] == [1, 2]
    assert [page.markdown for page in items[1:3]] == [page["markdown"] for page in task["pages"]]
    assert items[-1].ok and items[-1].result == task["result"] and items[-1].pages == tuple(items[1:3])


def test_stream_resumes_after_a_broken_connection(real_task: dict) -> None:
    with recorded_stream(real_task, abrupt=True) as (url, resumed_from), OcrClient(url) as client:
        items = list(client.stream(real_task["task_id"]))
        assert client.counters.reconnects == 1
    check_streamed(items, real_task)
    assert resumed_from == [None, "1"]


async def test_async_stream_resumes_after_an_early_end(real_task: dict) -> None:
    with recorded_stream(real_task, abrupt=False) as (url, resumed_from):
        async with AsyncOcrClient(url) as client:
            items = [item async for item in client.stream(real_task["task_id"])]
    check_streamed(items, real_task)
    assert resumed_from == [None, "1"]


def test_stream_of_an_unknown_task_is_not_found(busy: ServiceProcess) -> None:
    with OcrClient(busy.url) as client, pytest.raises(NotFound):
        list(client.stream("no-such-task"))


def test_stream_from_the_real_endpoint(busy: ServiceProcess) -> None:
    if "/ocr/{task_id}/events" not in httpx.get(f"{busy.url}/openapi.json").json()["paths"]:
        pytest.skip("the service has no GET /ocr/{task_id}/events yet")
    with OcrClient(busy.url) as client:
        task_id = client.submit(two_page_pdf())
        items = list(client.stream(task_id))
        final = client.get(task_id)
    pages = [item for item in items if isinstance(item, Page)]
    assert [page.page for page in pages] == [1, 2]
    assert items[-1] == final and final.pages == tuple(pages)
