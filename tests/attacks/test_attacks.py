"""The attack suite: what an attacker tried, and the answer each attempt must get.

Fast attacks run here, in CI, against an app in-process or a real `run_service.py`
process on loopback. The slow, large ones (21,000 idle sockets, 300,000 stored tasks,
a 40-minute PDF) are in `bench/attacks.py`, run by hand.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ocr_service.engines.fake import FakeEngine
from tests.helpers import (
    encode,
    running_app,
    service_process,
    settings,
    solid_image,
    stalling_server,
    upload,
    wait_for_task,
)

NON_FINITE = ["1e999", "-1e999", "NaN", "Infinity", "-Infinity"]
JSON_ROUTES = {
    "/ocr/url": '{{"url": "http://fuzz.invalid/a.png", "{field}": {value}}}',
    "/ocr/url/batch": '{{"urls": ["http://fuzz.invalid/a.png"], "{field}": {value}}}',
    "/ocr_batch": '{{"input": {{"images": ["http://fuzz.invalid/a.png"]}}, "{field}": {value}}}',
}
FIELDS = ["temperature", "max_tokens", "prompt", "url"]


# -- 500s on valid JSON --------------------------------------------------------


async def test_non_finite_numbers_in_any_json_body_get_a_json_422_and_change_nothing() -> None:
    async with running_app(settings(url_allowed_hosts="fuzz.invalid")) as client:
        for path, template in JSON_ROUTES.items():
            for field in FIELDS:
                for value in NON_FINITE:
                    body = template.format(field=field, value=value)
                    response = await client.post(path, content=body, headers={"Content-Type": "application/json"})
                    assert response.status_code < 500, (path, body, response.status_code)
                    assert response.headers["content-type"] == "application/json", (path, body)
                    assert response.headers["x-request-id"]
                    if response.status_code == 422:
                        detail = response.json()["detail"]
                        assert isinstance(detail, list) and detail, (path, body)
        stats = (await client.get("/stats")).json()
        assert stats["total"] == stats["failed"]  # only the accepted fuzz.invalid URLs, each failed
        good = await upload(client, encode(solid_image(1)))
        assert (await wait_for_task(client, good.json()["task_id"]))["status"] == "completed"


async def test_a_422_does_not_echo_a_megabyte_back() -> None:
    async with running_app(settings()) as client:
        response = await client.post("/ocr/url", json={"url": "http://x.test/a.png", "prompt": "p" * 1_000_000})
    assert response.status_code == 422
    assert len(response.content) < 2_000
    assert "cut at 200 of 1000000 characters" in response.text


async def test_an_unexpected_error_is_json_with_the_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocr_service.api import routes

    def boom(*_: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(routes, "check_batch_length", boom)
    app_settings = settings()
    from ocr_service.app import create_app

    app = create_app(app_settings)
    from asgi_lifespan import LifespanManager

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://ocr.test") as client:
            response = await client.post("/ocr/url/batch", json={"urls": ["http://x.test/a.png"]})
    assert response.status_code == 500
    body = response.json()
    assert body["request_id"] == response.headers["x-request-id"] and body["request_id"] in body["detail"]
    assert "a bug" not in response.text  # no internals in the answer


# -- unbounded task memory -----------------------------------------------------


async def test_a_client_cannot_fill_memory_with_tasks_that_fail_at_once() -> None:
    urls = [f"http://10.0.0.{n}/a.png" for n in range(30)]  # private: each fails at once
    quota = settings(allow_private_urls=False, max_stored_tasks_per_client=50, max_batch_urls=30)
    async with running_app(quota) as client:
        first = await client.post("/ocr/url/batch", json={"urls": urls})
        assert first.status_code == 202
        second = await client.post("/ocr/url/batch", json={"urls": urls})
        assert second.status_code == 429 and int(second.headers["Retry-After"]) >= 1
        assert "OCR_MAX_STORED_TASKS_PER_CLIENT=50" in second.json()["detail"]
        other = await client.post("/ocr/url", json={"url": urls[0]}, headers={"X-Forwarded-For": "1.2.3.4"})
        assert other.status_code == 202  # 31 held: still under; the address is not taken from the header
        stats = (await client.get("/stats")).json()
    assert stats["total"] == 31


async def test_the_store_refuses_with_503_when_full() -> None:
    async with running_app(settings(allow_private_urls=False, max_stored_tasks=5)) as client:
        codes = [(await client.post("/ocr/url", json={"url": "http://10.0.0.1/a.png"})).status_code for _ in range(7)]
        refused = await client.post("/ocr/url", json={"url": "http://10.0.0.1/a.png"})
        metrics = (await client.get("/metrics")).text
    assert codes[:5] == [202] * 5 and codes[5:] == [503, 503]
    assert "OCR_MAX_STORED_TASKS=5" in refused.json()["detail"]
    assert 'ocr_rejections_total{reason="store_full"} 3.0' in metrics


# -- unthrottled key guessing --------------------------------------------------


async def test_wrong_keys_on_metrics_count_against_the_rate_limit() -> None:
    async with running_app(settings(api_keys="right-key", rate_limit="5/minute")) as client:
        codes = [(await client.get("/metrics", headers={"X-API-Key": f"guess-{n}"})).status_code for n in range(8)]
        scrape = await client.get("/metrics", headers={"X-API-Key": "right-key"})
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    assert scrape.status_code == 200  # a scrape with the key is never limited


# -- lesser findings -----------------------------------------------------------


async def test_a_newline_in_the_path_cannot_forge_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocr_service.access")
    async with running_app(settings()) as client:
        await client.get("/ocr/abc%0A2026-01-01 INFO forged line")
    (record,) = [r for r in caplog.records if r.name == "ocr_service.access" and "/ocr/abc" in r.getMessage()]
    assert "\n" not in record.getMessage() and "\\n" in record.getMessage()


async def test_one_clients_stalling_urls_do_not_hold_up_another_client() -> None:
    engine = FakeEngine()
    with stalling_server(seconds=4) as slow:
        async with running_app(settings(api_keys="a,b", image_download_timeout=10), engine) as client:
            stalled = await client.post(
                "/ocr/url/batch", json={"urls": [f"{slow}/{n}.png" for n in range(16)]}, headers={"X-API-Key": "a"}
            )
            page = encode(solid_image(3))
            from tests.helpers import file_server

            with file_server({"/page.png": page}) as files:
                # Another host name too: the stalling host's own share is full.
                other_host = files.replace("127.0.0.1", "localhost")
                other = await client.post("/ocr/url", json={"url": f"{other_host}/page.png"}, headers={"X-API-Key": "b"})
                done = await wait_for_task(client_with(client, "b"), other.json()["task_id"], timeout=3.5)
            batch = (await client.get(f"/ocr/batch/{stalled.json()['batch_task_id']}", headers={"X-API-Key": "a"})).json()
    assert done["status"] == "completed"
    assert batch["pending"] == 16  # client a's downloads were all still stalling meanwhile


def client_with(client: httpx.AsyncClient, key: str) -> httpx.AsyncClient:
    client.headers["X-API-Key"] = key
    return client


async def test_an_engine_error_on_one_page_fails_that_page_alone() -> None:
    class Picky(FakeEngine):
        def predict(self, pages):  # type: ignore[no-untyped-def]
            if any("poison" in page.prompt for page in pages):
                raise ValueError("bad tensor shape")
            return super().predict(pages)

    engine = Picky(batch_latency=0.2)
    async with running_app(settings(batch_size=8, batch_policy="timeout", batch_timeout=0.3), engine) as client:
        responses = await asyncio.gather(
            *(upload(client, encode(solid_image(seed)), prompt="poison" if seed == 2 else "Free OCR.") for seed in range(6))
        )
        tasks = [await wait_for_task(client, r.json()["task_id"]) for r in responses]
    assert [t["status"] for t in tasks] == ["completed", "completed", "failed", "completed", "completed", "completed"]
    assert "bad tensor shape" in tasks[2]["error"]


# -- a real process: connections and bodies ------------------------------------


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    env = {
        "OCR_ENGINE": "fake",
        "OCR_REQUEST_HEADER_TIMEOUT": "1.5",
        "OCR_BODY_TIMEOUT": "1.5",
        "OCR_MAX_CONNECTIONS_PER_CLIENT": "20",
        "OCR_MAX_QUEUE_SIZE": "1",
        "OCR_FAKE_BATCH_LATENCY": "3",
        "OCR_RATE_LIMIT": "4/minute",
    }
    with service_process(Path(tmp_path_factory.mktemp("guarded")), env) as service:
        yield service.url


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=5, source_address=(source, 0))
    return sock


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends within 5 s, or until it closes the connection."""
    sock.settimeout(5)
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 4 + _length(answer):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def _length(answer: bytes) -> int:
    for line in answer.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 0


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_idle_connections_are_closed_and_capped_per_client_while_others_are_served(guarded: str) -> None:
    idle = [connect(guarded) for _ in range(30)]
    try:
        over = sum(closed_by_server(sock, 0.3) for sock in idle)
        assert over >= 10  # beyond 20 per client, cut at once
        with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2"), timeout=5) as other_client:
            health = other_client.get(f"{guarded}/health")
        assert health.status_code == 200  # another client is served meanwhile
        time.sleep(2.0)
        assert all(closed_by_server(sock, 0.5) for sock in idle)  # none sent a request: all closed
    finally:
        for sock in idle:
            sock.close()


def test_slowloris_headers_are_cut_off(guarded: str) -> None:
    sock = connect(guarded)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        for _ in range(4):
            time.sleep(0.6)
            try:
                sock.sendall(b"X-Slow: 1\r\n")
            except OSError:
                break
        assert closed_by_server(sock, 1.0)
    finally:
        sock.close()


def test_a_body_that_stops_arriving_gets_408(guarded: str) -> None:
    sock = connect(guarded, "127.0.0.3")
    try:
        body = b'{"url": "http://x.test/a.png"}'
        sock.sendall(
            b"POST /ocr/url HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body) + 10}\r\n\r\n".encode()
            + body[:10]
        )
        answer = read_answer(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408") and b"OCR_BODY_TIMEOUT" in answer


def test_a_body_trickling_a_byte_at_a_time_gets_408(guarded: str) -> None:
    sock = connect(guarded, "127.0.0.8")
    try:
        sock.sendall(
            b"POST /ocr/url HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n"
        )
        answer = b""
        for _ in range(20):  # a byte every 0.4 s: never a pause of OCR_BODY_TIMEOUT, but far too slow
            time.sleep(0.4)
            try:
                sock.sendall(b" ")
            except OSError:
                break
            sock.settimeout(0.01)
            try:
                answer = sock.recv(4096)
            except TimeoutError:
                continue
            if answer:
                break
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 408")


def test_a_full_service_refuses_an_upload_before_reading_its_body(guarded: str) -> None:
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4"), timeout=5) as client:  # 4 requests
        busy = client.post(f"{guarded}/ocr", files={"file": ("a.png", encode(solid_image(1)))})
        queued = client.post(f"{guarded}/ocr", files={"file": ("b.png", encode(solid_image(2)))})
    assert busy.status_code == 202 and queued.status_code in (202, 503)
    sock = connect(guarded, "127.0.0.5")
    try:
        # Headers of a 5 MB upload, and not one byte of its body.
        sock.sendall(
            b"POST /ocr HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=zz\r\n"
            b"Content-Length: 5000000\r\n\r\n"
        )
        answer = read_answer(sock)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 503") and b"retry-after:" in answer.lower()
    with httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.4"), timeout=35) as client:
        for accepted in (busy, queued):  # leave the queue empty for the next test (long polls: few requests)
            if accepted.status_code == 202:
                assert client.get(f"{guarded}/ocr/{accepted.json()['task_id']}?wait=30").json()["status"] == "completed"


def test_x_forwarded_for_is_not_believed_by_default(guarded: str) -> None:
    transport = httpx.HTTPTransport(local_address="127.0.0.6")
    with httpx.Client(transport=transport, timeout=5) as client:
        codes = [
            client.get(f"{guarded}/stats", headers={"X-Forwarded-For": f"10.9.8.{n}"}).status_code for n in range(6)
        ]
    assert codes[:4] == [200] * 4 and set(codes[4:]) == {429}  # one address, one budget


def test_every_error_of_the_real_server_is_json(guarded: str) -> None:
    transport = httpx.HTTPTransport(local_address="127.0.0.7")
    with httpx.Client(transport=transport, timeout=5) as client:
        answer = client.post(f"{guarded}/ocr/url", content='{"url": "http://x", "temperature": 1e999}',
                              headers={"Content-Type": "application/json"})
    assert answer.status_code == 422
    assert json.loads(answer.text)["detail"][0]["input"] == "inf"
