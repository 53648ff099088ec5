"""OCR_ENGINE=remote without vLLM: routing, retries and error mapping against local HTTP replicas.

Each `Replica` is a small HTTP server on 127.0.0.1 that speaks the part of `vllm serve`'s
API the engine uses (`/health`, `/v1/models`, `/tokenize`, `/v1/chat/completions`) and
records what it was sent. The real `vllm serve` runs in tests/models/test_remote_engine.py.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from PIL import Image
from pydantic import ValidationError

from ocr_service.config import Settings
from ocr_service.deepseek import EOS
from ocr_service.engines.base import PageOutput, PageRequest, Parallel
from ocr_service.engines.registry import build_engine
from ocr_service.engines.remote import PUBLISHED_TABLE_CELL_IDS, RemoteEngine, RemoteOptions
from tests.helpers import (
    _QuietHandler,
    _serve,
    encode,
    free_port,
    running_app,
    settings,
    solid_image,
    upload,
    wait_for_task,
)

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


@dataclass
class Replica:
    """What one fake replica answers, and what it was asked."""

    name: str
    delay: float = 0.0
    health: int = 200
    chat_status: int = 200
    chat_error: str = "boom"
    drop_connection: bool = False
    drop_first: int = 0  # chat requests to drop before answering (a replica restarting)
    dropped: int = 0
    health_drops: int = 0  # health checks to drop (a connection closed as it was reused)
    tokenize_status: int = 200
    table_cell_ids: tuple[int, int] = (265, 266)
    finish_reason: str = "stop"
    guard_applied: bool = True  # started with the n-gram logits processor (on a V1 model runner)
    canaries: int = 0
    url: str = ""
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    active: int = 0
    max_active: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def chat(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        if body.get("return_token_ids"):
            return self.canary(body)
        with self.lock:
            self.requests.append(body)
            self.headers.append(headers)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
        try:
            time.sleep(self.delay)
        finally:
            with self.lock:
                self.active -= 1
        if self.chat_status != 200:
            return self.chat_status, {"error": {"message": self.chat_error, "type": "Error", "code": self.chat_status}}
        return 200, {
            "choices": [{"message": {"content": f"read by {self.name}{EOS}"}, "finish_reason": self.finish_reason}],
            "usage": {"prompt_tokens": 300, "completion_tokens": 7},
        }


    def canary(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """The guard's canary: a model that loops unless the request's n-gram rule is applied."""
        with self.lock:
            self.canaries += 1
        count = body["max_tokens"]
        applied = self.guard_applied and "vllm_xargs" in body and body.get("ignore_eos") is True
        ids = list(range(10, 10 + count)) if applied else [5, 6] * (count // 2)
        choice = {"message": {"content": "x"}, "finish_reason": "length", "token_ids": ids}
        return 200, {"choices": [choice], "usage": {"prompt_tokens": 280, "completion_tokens": count}}


@contextlib.contextmanager
def serving(replica: Replica) -> Iterator[Replica]:
    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            if self.path == "/health" and replica.health_drops > 0:
                replica.health_drops -= 1
                self.close_connection = True
            elif self.path == "/health":
                self._answer(replica.health, {})
            elif self.path == "/v1/models":
                self._answer(200, {"object": "list", "data": [{"id": f"model-{replica.name}"}]})
            else:
                self._answer(404, {"error": {"message": "not found"}})

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path == "/tokenize":
                if replica.tokenize_status != 200:
                    self._answer(replica.tokenize_status, {"detail": "Not Found"})
                    return
                token_id = replica.table_cell_ids[0 if body["prompt"] == "<td>" else 1]
                self._answer(200, {"count": 1, "max_model_len": 2048, "tokens": [token_id]})
            elif self.path == "/v1/chat/completions":
                canary = body.get("return_token_ids") is True
                if not canary and (replica.drop_connection or replica.dropped < replica.drop_first):
                    replica.dropped += 1
                    self.close_connection = True  # a killed server: the socket closes, no answer
                    return
                self._answer(*replica.chat(body, dict(self.headers)))
            else:
                self._answer(404, {"error": {"message": "not found"}})

        def _answer(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    with _serve(Handler) as url:
        replica.url = url
        yield replica


@contextlib.contextmanager
def replicas(*configs: Replica) -> Iterator[tuple[Replica, ...]]:
    with contextlib.ExitStack() as stack:
        yield tuple(stack.enter_context(serving(config)) for config in configs)


def options(*urls: str, cap: int = 2, **overrides: Any) -> RemoteOptions:
    values: dict[str, Any] = dict(
        urls=urls,
        max_pages_per_replica=cap,
        page_timeout=10.0,
        startup_timeout=5.0,
        ngram_size=30,
        window_size=90,
        health_interval=60.0,  # no health checks during a test unless it asks
    )
    values.update(overrides)
    return RemoteOptions(**values)


@contextlib.asynccontextmanager
async def loaded(engine_options: RemoteOptions) -> Any:
    engine = RemoteEngine(engine_options)
    await asyncio.to_thread(engine.load)
    try:
        yield engine
    finally:
        await asyncio.to_thread(engine.close)


async def run_all(engine: RemoteEngine, pages: list[PageRequest]) -> list[Any]:
    outcomes: list[Any] = [None] * len(pages)
    async for index, outcome in engine.run(pages):
        outcomes[index] = outcome
    return outcomes


def pages(count: int, **kwargs: Any) -> list[PageRequest]:
    return [PageRequest.of_image(solid_image(seed), PROMPT, **kwargs) for seed in range(count)]


# -- routing ---------------------------------------------------------------------


async def test_pages_spread_evenly_and_never_past_the_cap() -> None:
    with replicas(Replica("a", delay=0.3), Replica("b", delay=0.3)) as (a, b):
        async with loaded(options(a.url, b.url, cap=2)) as engine:
            outcomes = await run_all(engine, pages(8))
            states = engine.replica_states()
    assert all(isinstance(outcome, PageOutput) for outcome in outcomes), outcomes
    assert (len(a.requests), len(b.requests)) == (4, 4)
    assert a.max_active <= 2 and b.max_active <= 2
    assert [(s.state, s.pages_done, s.pages_in_flight, s.errors) for s in states] == [("up", 4, 0, 0), ("up", 4, 0, 0)]


async def test_the_least_loaded_replica_gets_the_next_page() -> None:
    # Both replicas take 2 pages at once; the fast one frees its slots first and takes the rest.
    with replicas(Replica("slow", delay=1.5), Replica("fast", delay=0.05)) as (slow, fast):
        async with loaded(options(slow.url, fast.url, cap=2)) as engine:
            outcomes = await run_all(engine, pages(8))
    assert all(isinstance(outcome, PageOutput) for outcome in outcomes)
    assert (len(slow.requests), len(fast.requests)) == (2, 6)


async def test_one_page_at_a_time_alternates_between_idle_replicas() -> None:
    with replicas(Replica("a"), Replica("b")) as (a, b):
        async with loaded(options(a.url, b.url)) as engine:
            for page in pages(6):
                await run_all(engine, [page])
    assert len(a.requests) + len(b.requests) == 6


# -- what a request carries, and what comes back ----------------------------------


async def test_each_page_is_a_chat_completion_as_vllm_recipe_asks() -> None:
    image = solid_image(7, size=(90, 60))
    request = PageRequest.of_image(image, PROMPT, temperature=0.3, max_tokens=321)
    with replicas(Replica("a", finish_reason="length")) as (a,):
        async with loaded(options(a.url, api_key="secret-key")) as engine:
            [outcome] = await run_all(engine, [request])
    body, headers = a.requests[0], a.headers[0]
    assert headers["Authorization"] == "Bearer secret-key"
    assert body["model"] == "model-a"  # asked of /v1/models
    assert (body["temperature"], body["max_tokens"], body["skip_special_tokens"]) == (0.3, 321, False)
    assert body["vllm_xargs"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": [265, 266]}
    [message] = body["messages"]
    image_part, text_part = message["content"]
    assert text_part == {"type": "text", "text": "<|grounding|>Convert the document to markdown."}
    prefix, _, data = image_part["image_url"]["url"].partition(",")
    assert prefix == "data:image/png;base64"
    sent = Image.open(io.BytesIO(base64.b64decode(data)))
    assert sent.tobytes() == image.tobytes()  # lossless: the model reads the page's own pixels
    assert outcome == PageOutput("read by a", "length", output_tokens=7, prompt_tokens=300, width=90, height=60)
    assert "ignore_eos" not in body


async def test_a_configured_model_name_and_ignore_eos_are_sent() -> None:
    with replicas(Replica("a")) as (a,):
        async with loaded(options(a.url, model="deepseek-ai/DeepSeek-OCR", ignore_eos=True)) as engine:
            await run_all(engine, pages(1))
    assert a.requests[0]["model"] == "deepseek-ai/DeepSeek-OCR"
    assert a.requests[0]["ignore_eos"] is True


async def test_table_cell_ids_fall_back_to_the_published_ones_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with replicas(Replica("a", tokenize_status=404)) as (a,), caplog.at_level(logging.WARNING):
        async with loaded(options(a.url)) as engine:
            await run_all(engine, pages(1))
    assert a.requests[0]["vllm_xargs"]["whitelist_token_ids"] == list(PUBLISHED_TABLE_CELL_IDS)
    assert any("published ids" in record.message for record in caplog.records)


async def test_an_unreadable_page_fails_alone_without_a_request() -> None:
    class Broken:
        def load(self) -> Image.Image:
            raise OSError("cannot identify image file")

    with replicas(Replica("a")) as (a,):
        async with loaded(options(a.url)) as engine:
            bad, good = await run_all(engine, [PageRequest(Broken(), PROMPT, 0.0, 10), *pages(1)])
    assert isinstance(bad, OSError) and isinstance(good, PageOutput)
    assert len(a.requests) == 1


# -- failures ----------------------------------------------------------------------


async def test_a_page_refused_with_4xx_fails_with_vllms_message_and_is_not_retried() -> None:
    message = "This model's maximum context length is 2048 tokens."
    with replicas(Replica("a", chat_status=400, chat_error=message), Replica("b", chat_status=400)) as (a, b):
        async with loaded(options(a.url, b.url)) as engine:
            [outcome] = await run_all(engine, pages(1))
            states = engine.replica_states()
    assert isinstance(outcome, Exception) and message in str(outcome) and "HTTP 400" in str(outcome)
    assert len(a.requests) + len(b.requests) == 1
    assert all(s.state == "up" and s.errors == 0 for s in states)


async def test_a_5xx_marks_the_replica_down_and_the_page_goes_to_the_other() -> None:
    with replicas(Replica("a", chat_status=500, chat_error="engine dead"), Replica("b")) as (a, b):
        async with loaded(options(a.url, b.url)) as engine:
            [first] = await run_all(engine, pages(1))
            later = await run_all(engine, pages(4))
            down, up = engine.replica_states()
    assert first == PageOutput("read by b", "stop", output_tokens=7, prompt_tokens=300, width=64, height=48)
    assert all(isinstance(outcome, PageOutput) for outcome in later)
    assert (len(a.requests), len(b.requests)) == (1, 5)  # a is not used while down
    assert (down.state, down.errors, down.pages_done) == ("down", 1, 0)
    assert down.last_error is not None and "engine dead" in down.last_error and "500" in down.last_error
    assert (up.state, up.pages_done) == ("up", 5)


async def test_a_dropped_connection_sends_the_page_elsewhere() -> None:
    with replicas(Replica("a", drop_connection=True), Replica("b")) as (a, b):
        async with loaded(options(a.url, b.url)) as engine:
            outcomes = await run_all(engine, pages(2))
            states = engine.replica_states()
    assert [outcome.text for outcome in outcomes] == ["read by b", "read by b"]
    assert states[0].state == "down" and states[0].errors >= 1


async def test_a_page_is_tried_on_two_replicas_at_most_and_its_error_names_both() -> None:
    with replicas(
        Replica("a", chat_status=503, chat_error="a is overloaded"),
        Replica("b", chat_status=502, chat_error="b lost its engine"),
        Replica("c", chat_status=500),
    ) as (a, b, c):
        async with loaded(options(a.url, b.url, c.url)) as engine:
            [outcome] = await run_all(engine, pages(1))
    assert isinstance(outcome, Exception)
    assert len(a.requests) + len(b.requests) + len(c.requests) == 2
    tried = [replica for replica in (a, b, c) if replica.requests]
    for replica in tried:
        assert replica.url in str(outcome) and replica.chat_error in str(outcome)


async def test_with_every_replica_down_a_page_waits_then_fails() -> None:
    with replicas(Replica("a", drop_connection=True)) as (a,):
        async with loaded(options(a.url, startup_timeout=0.5)) as engine:
            started = time.monotonic()
            [outcome] = await run_all(engine, pages(1))
    assert isinstance(outcome, Exception)
    assert "no replica up for 0.5 s" in str(outcome) and a.url in str(outcome)
    assert time.monotonic() - started >= 0.5


async def test_a_lone_replica_gets_the_retry_once_it_is_healthy_again() -> None:
    with replicas(Replica("only", drop_first=1)) as (only,):
        async with loaded(options(only.url, health_interval=0.1)) as engine:
            [outcome] = await run_all(engine, pages(1))
            [state] = engine.replica_states()
    assert isinstance(outcome, PageOutput) and outcome.text == "read by only"
    assert (only.dropped, len(only.requests)) == (1, 1)
    assert (state.state, state.errors, state.pages_done) == ("up", 1, 1)
    assert only.canaries == 4  # checked again when it came back


async def test_a_replica_that_does_not_apply_the_guard_takes_no_page_and_says_how_to_fix_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with replicas(Replica("a", health=503, guard_applied=False), Replica("b")) as (a, b), caplog.at_level(logging.INFO):
        async with loaded(options(a.url, b.url, health_interval=0.1)) as engine:
            await run_all(engine, pages(2))
            a.health = 200  # it starts answering, without the guard
            deadline = time.monotonic() + 5
            while a.canaries < 4:  # refused, then asked again at the next checks
                assert time.monotonic() < deadline, "the canary never ran"
                await asyncio.sleep(0.05)
            await run_all(engine, pages(2))
            refused, _ = engine.replica_states()
    assert (len(a.requests), len(b.requests)) == (0, 4)
    assert b.canaries == 2  # one page with the rule, one without
    # Said once when the reason changed (503, then the canary), not at every check.
    said = [r.message for r in caplog.records if "does not apply DeepSeek-OCR's n-gram" in r.message]
    assert len(said) == 1 and said[0].startswith(f"replica {a.url} is not ready")
    assert refused.state == "down" and refused.last_error is not None
    assert "does not apply DeepSeek-OCR's n-gram repetition guard" in refused.last_error
    assert "--logits_processors" in refused.last_error and "VLLM_USE_V2_MODEL_RUNNER=0" in refused.last_error


async def test_a_down_replica_comes_back_when_its_health_check_passes() -> None:
    with replicas(Replica("a", health=503), Replica("b", delay=0.2)) as (a, b):
        async with loaded(options(a.url, b.url, health_interval=0.1)) as engine:
            assert [s.state for s in engine.replica_states()] == ["down", "up"]
            await run_all(engine, pages(2))
            assert len(a.requests) == 0
            a.health = 200
            deadline = time.monotonic() + 5
            while engine.replica_states()[0].state != "up":
                assert time.monotonic() < deadline, "the replica did not come back"
                await asyncio.sleep(0.05)
            await run_all(engine, pages(4))
    assert (len(a.requests), len(b.requests)) == (2, 4)
    assert a.requests[0]["model"] == "model-a"  # learnt when it came up
    assert a.canaries == 2  # and checked then


async def test_one_failed_health_check_is_asked_again_before_the_replica_counts_as_down() -> None:
    with replicas(Replica("a")) as (a,):
        async with loaded(options(a.url, health_interval=0.05)) as engine:
            await run_all(engine, pages(1))  # starts the health checks
            a.health_drops = 1
            await asyncio.sleep(0.5)
            assert a.health_drops == 0
            assert engine.replica_states()[0].last_error is None  # never marked down
            a.health_drops = 2
            deadline = time.monotonic() + 5
            while engine.replica_states()[0].last_error is None:
                assert time.monotonic() < deadline, "two failed checks in a row did not mark it down"
                await asyncio.sleep(0.02)
            assert "RemoteProtocolError" in str(engine.replica_states()[0].last_error)


async def test_load_gives_up_naming_every_replica() -> None:
    urls = (f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}")
    engine = RemoteEngine(options(*urls, startup_timeout=0.3, health_interval=0.1))
    with pytest.raises(RuntimeError, match="no vLLM replica became healthy within 0.3 s") as error:
        await asyncio.to_thread(engine.load)
    assert all(f"{url}: ConnectError" in str(error.value) for url in urls)


async def test_load_waits_for_the_first_healthy_replica() -> None:
    with replicas(Replica("a", health=503)) as (a,):
        threading.Timer(0.4, lambda: setattr(a, "health", 200)).start()
        async with loaded(options(a.url, health_interval=0.1)) as engine:
            assert engine.replica_states()[0].state == "up"


# -- settings and the service --------------------------------------------------------


def test_settings_require_and_check_the_replica_urls() -> None:
    with pytest.raises(ValidationError, match="OCR_REMOTE_URLS"):
        Settings(_env_file=None, engine="remote")
    for bad, reason in [
        ("ftp://gpu1:8000", "not an http"),
        ("http://gpu1:8000,http://GPU1:8000/", "listed twice"),
        ("http://gpu1:8000/v1", "without /v1"),
        ("gpu1:8000", "not an http"),
    ]:
        with pytest.raises(ValidationError, match=reason):
            Settings(_env_file=None, engine="remote", remote_urls=bad)
    with pytest.raises(ValidationError, match="OCR_ENGINE_WORKERS does not apply"):
        Settings(_env_file=None, engine="remote", remote_urls="http://gpu1:8000", engine_workers=2)
    good = Settings(_env_file=None, engine="remote", remote_urls=" http://gpu1:8000/ , https://gpu2/ocr ", batch_size=16)
    assert good.remote_url_list == ("http://gpu1:8000", "https://gpu2/ocr")
    engine = build_engine(good)
    assert isinstance(engine, RemoteEngine) and engine.options.max_pages_per_replica == 16
    # The batcher keeps OCR_BATCH_SIZE pages in flight per instance: 32 here.
    assert isinstance(engine, Parallel) and engine.instances == 2
    assert engine.max_batches_in_flight is None


async def test_the_service_answers_an_upload_through_the_replicas() -> None:
    with replicas(Replica("a", delay=0.5), Replica("b", delay=0.5)) as (a, b):
        app_settings = settings(engine="remote", remote_urls=f"{a.url},{b.url}", batch_size=2, remote_api_key="k")
        async with running_app(app_settings) as client:
            ids = [(await upload(client, encode(solid_image(seed)))).json()["task_id"] for seed in range(6)]
            done = [await wait_for_task(client, task_id) for task_id in ids]
            stats = (await client.get("/stats")).json()
            metrics = (await client.get("/metrics")).text
    assert all(task["status"] == "completed" for task in done), done
    assert {task["result"] for task in done} <= {"read by a", "read by b"}
    assert len(a.requests) + len(b.requests) == 6
    # OCR_BATCH_SIZE=2 pages in flight on each replica at once, never more: 4 in all.
    assert (a.max_active, b.max_active) == (2, 2)
    assert (stats["engine"], stats["batch_size"]) == ("remote", 2)
    by_url = {replica["url"]: replica for replica in stats["replicas"]}
    assert set(by_url) == {a.url, b.url}
    for replica, server in ((by_url[a.url], a), (by_url[b.url], b)):
        assert replica["state"] == "up" and replica["errors"] == 0 and replica["pages_in_flight"] == 0
        assert replica["pages_done"] == sum(1 for task in done if task["result"] == f"read by {server.name}")
    assert f'ocr_replica_up{{url="{a.url}"}} 1.0' in metrics
    assert f'ocr_replica_pages_done_total{{url="{b.url}"}} {float(by_url[b.url]["pages_done"])}' in metrics
