"""Operations through HTTP, on the fake engine: metrics, readiness, cancelling, queue position,
API keys, rate limits, request ids and logs, and a batcher that dies."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence

import pytest

from ocr_service.engines.base import DecodedPage, PageOutcome
from ocr_service.engines.fake import FakeEngine
from ocr_service.logs import JsonFormatter
from tests.files import make_pdf
from tests.helpers import (
    encode,
    running_app,
    running_services,
    settings,
    solid_image,
    stalling_server,
    upload,
    wait_for_task,
)


class EngineCrash(BaseException):
    """Not an Exception: nothing per page catches it, as with a dying device driver."""


class CrashingEngine(FakeEngine):
    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        raise EngineCrash("the device fell off the bus")


async def wait_until(predicate, timeout: float = 10) -> None:  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.02)


def metric(text: str, name: str) -> float:
    """The value of one sample line of the Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and line.split(" ")[0] == name):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics:\n{text}")


async def test_metrics_count_requests_batches_outcomes_and_503s() -> None:
    engine = FakeEngine(batch_latency=0.2)
    async with running_app(settings(max_queue_size=2, batch_size=1), engine) as client:
        ids, refused = [], 0
        for seed in range(6):
            response = await upload(client, encode(solid_image(seed)))
            if response.status_code == 202:
                ids.append(response.json()["task_id"])
            else:
                refused += 1
        assert refused
        for task_id in ids:
            await wait_for_task(client, task_id)
        await client.get("/ocr/no-such-task")
        response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert metric(text, 'ocr_http_requests_total{method="POST",route="/ocr",status="202"}') == len(ids)
    assert metric(text, 'ocr_http_requests_total{method="POST",route="/ocr",status="503"}') == refused
    assert metric(text, 'ocr_http_requests_total{method="GET",route="/ocr/{task_id}",status="404"}') == 1
    assert metric(text, 'ocr_rejections_total{reason="queue_full"}') == refused
    assert metric(text, 'ocr_tasks_finished_total{status="completed"}') == len(ids)
    assert metric(text, "ocr_batch_size_pages_count") == len(ids)
    assert metric(text, "ocr_engine_batch_seconds_count") == len(ids)
    assert metric(text, "ocr_batch_wait_seconds_count") == len(ids)
    for name in ("ocr_queue_depth", "ocr_pages_in_flight", "ocr_oom_events_total", "ocr_ready"):
        metric(text, name)


async def test_two_apps_keep_their_own_metrics() -> None:
    async with running_app(settings()) as first, running_app(settings()) as second:
        await wait_for_task(first, (await upload(first, encode(solid_image(1)))).json()["task_id"])
        text = (await second.get("/metrics")).text
    assert 'route="/ocr"' not in text


async def test_ready_while_serving_and_503_after_shutdown() -> None:
    async with running_app(settings()) as client:
        assert (await client.get("/ready")).json() == {"status": "ready"}
        supervisor = running_services(client).supervisor
        await supervisor.shutdown(1)
        response = await client.get("/ready")
        assert response.status_code == 503 and response.json()["status"] == "stopped"
        refused = await upload(client, encode(solid_image(1)))
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        assert "shutting down" in refused.json()["detail"]  # the real reason, not "full capacity"
        assert (await client.get("/health")).status_code == 200


async def test_a_dying_batcher_turns_readiness_red_and_fails_waiting_tasks() -> None:
    async with running_app(settings(batch_size=8, batch_policy="timeout", batch_timeout=0.3), CrashingEngine()) as client:
        assert (await client.get("/ready")).status_code == 200
        ids = [(await upload(client, encode(solid_image(seed)))).json()["task_id"] for seed in range(3)]
        tasks = [await wait_for_task(client, task_id) for task_id in ids]
        ready = await client.get("/ready")
        refused = await upload(client, encode(solid_image(9)))
    assert all(task["status"] == "failed" for task in tasks)
    assert all("batcher stopped" in task["error"] and "EngineCrash" in task["error"] for task in tasks)
    assert ready.status_code == 503 and ready.json()["status"] == "failed"
    assert "device fell off the bus" in ready.json()["detail"]
    assert refused.status_code == 503 and "batcher stopped" in refused.json()["detail"]


async def test_a_batcher_loop_that_raises_fails_waiting_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = FakeEngine(batch_latency=0.3)
    async with running_app(settings(batch_size=1, max_queue_size=10), engine) as client:
        first = (await upload(client, encode(solid_image(0)))).json()["task_id"]
        waiting = [(await upload(client, encode(solid_image(seed)))).json()["task_id"] for seed in range(1, 4)]
        batcher = running_services(client).batcher

        def broken(*_: object) -> None:
            raise RuntimeError("a bug in the batch loop")

        monkeypatch.setattr(batcher.queue, "take", broken)
        tasks = [await wait_for_task(client, task_id) for task_id in [first, *waiting]]
        assert (await client.get("/ready")).status_code == 503
    for task in tasks[1:]:
        assert task["status"] == "failed" and "a bug in the batch loop" in task["error"]
    assert tasks[0]["status"] == "completed"  # its batch ended before the loop went for more


async def test_cancel_frees_a_waiting_tasks_slot_stops_a_running_one_and_an_ended_one_is_409() -> None:
    engine = FakeEngine(batch_latency=0.5)
    async with running_app(settings(batch_size=1, max_queue_size=2), engine) as client:
        running = (await upload(client, encode(solid_image(0)))).json()["task_id"]
        await wait_until(lambda: _status_is(client, running, "processing"))
        waiting = [(await upload(client, encode(solid_image(seed)))).json()["task_id"] for seed in (1, 2)]
        assert (await upload(client, encode(solid_image(3)))).status_code == 503  # full

        second = (await client.get(f"/ocr/{waiting[1]}")).json()
        assert second["status"] == "pending" and second["queue_position"] == 1

        cancelled = await client.delete(f"/ocr/{waiting[0]}")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert (await client.delete(f"/ocr/{waiting[0]}")).json()["status"] == "cancelled"  # again: harmless
        assert (await client.get(f"/ocr/{waiting[1]}")).json()["queue_position"] == 0
        assert (await upload(client, encode(solid_image(4)))).status_code == 202  # the slot is free

        stopped = await client.delete(f"/ocr/{running}")  # running: cancelled too, its page's result dropped
        assert stopped.status_code == 200 and stopped.json()["status"] == "cancelled"
        assert (await wait_for_task(client, waiting[1]))["status"] == "completed"
        ended = await client.delete(f"/ocr/{waiting[1]}")
        assert ended.status_code == 409 and "completed" in ended.json()["detail"]
        assert (await client.delete("/ocr/no-such-task")).status_code == 404
        assert (await client.get(f"/ocr/{waiting[0]}")).json()["status"] == "cancelled"
        assert (await wait_for_task(client, waiting[1]))["status"] == "completed"


async def test_cancelling_a_running_document_keeps_its_done_pages_and_runs_no_more() -> None:
    engine = FakeEngine(batch_latency=0.4)
    pdf = make_pdf([(200, 300, (seed * 30, 90, 160)) for seed in range(6)])
    async with running_app(settings(batch_size=2, batch_policy="timeout", batch_timeout=0.05), engine) as client:
        task_id = (await upload(client, pdf, "doc.pdf")).json()["task_id"]
        await wait_until(lambda: _pages_done_at_least(client, task_id, 2))
        cancelled = await client.delete(f"/ocr/{task_id}")
        assert cancelled.status_code == 200
        body = cancelled.json()
        assert body["status"] == "cancelled"
        done = body["progress"]["pages_done"]
        assert 2 <= done < 6 and len(body["pages"]) == done  # the finished pages' results are kept
        assert f"cancelled after {done} of 6 pages; not done: pages" in body["warnings"][-1]
        await asyncio.sleep(1.0)  # a page that was in the engine finishes there; nothing new starts
        assert sum(engine.batches_seen) <= done + 2
        assert (await client.get(f"/ocr/{task_id}")).json()["progress"]["pages_done"] == done


async def _pages_done_at_least(client, task_id: str, pages: int) -> bool:  # type: ignore[no-untyped-def]
    return (await client.get(f"/ocr/{task_id}")).json()["progress"]["pages_done"] >= pages


async def _status_is(client, task_id: str, status: str) -> bool:  # type: ignore[no-untyped-def]
    return (await client.get(f"/ocr/{task_id}")).json()["status"] == status


async def test_cancel_a_batch_cancels_its_waiting_items() -> None:
    # A local server that answers slowly: the items wait for their downloads.
    engine = FakeEngine(batch_latency=0.5)
    with stalling_server(seconds=3) as base:
        async with running_app(settings(batch_size=1, max_queue_size=10, image_download_timeout=5), engine) as client:
            busy = (await upload(client, encode(solid_image(0)))).json()["task_id"]
            response = await client.post("/ocr/url/batch", json={"urls": [f"{base}/a.png", f"{base}/b.png"]})
            batch_id = response.json()["batch_task_id"]
            cancelled = await client.delete(f"/ocr/batch/{batch_id}")
            assert cancelled.status_code == 200
            body = cancelled.json()
            assert body["status"] == "cancelled" and body["cancelled"] == 2
            stats = (await client.get("/stats")).json()
            assert stats["queue_depth"] == 0, "cancelled downloads still hold queue slots"
            assert (await client.delete("/ocr/batch/nope")).status_code == 404
            await wait_for_task(client, busy)


async def test_waiting_task_shows_queue_position_and_estimated_wait() -> None:
    engine = FakeEngine(batch_latency=0.3)
    async with running_app(settings(batch_size=1, max_queue_size=20), engine) as client:
        warm = (await upload(client, encode(solid_image(0)))).json()["task_id"]
        await wait_for_task(client, warm)  # one batch measured: the throughput is known
        ids = [(await upload(client, encode(solid_image(seed)))).json()["task_id"] for seed in range(1, 5)]
        last = (await client.get(f"/ocr/{ids[-1]}")).json()
        assert last["status"] == "pending"
        assert last["queue_position"] >= 1
        assert last["estimated_wait_s"] > 0
        done = await wait_for_task(client, ids[-1])
        assert "queue_position" not in done and "estimated_wait_s" not in done


async def test_api_keys_guard_every_route_but_probes_and_tasks_belong_to_their_key() -> None:
    async with running_app(settings(api_keys="alpha-key,beta-key")) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        for method, path in (("GET", "/stats"), ("GET", "/metrics"), ("GET", "/ocr/x"), ("DELETE", "/ocr/x"),
                             ("GET", "/ocr/batch/x"), ("POST", "/ocr/url")):
            response = await client.request(method, path, json={"url": "http://example.com/a.png"})
            assert response.status_code == 401, (method, path)
            assert "API key" in response.json()["detail"]
        wrong = await client.get("/stats", headers={"X-API-Key": "alpha-kez"})
        assert wrong.status_code == 401

        alpha = {"X-API-Key": "alpha-key"}
        beta = {"Authorization": "Bearer beta-key"}
        page = encode(solid_image(1))
        created = await client.post("/ocr", files={"file": ("p.png", page)}, headers=alpha)
        assert created.status_code == 202
        task_id = created.json()["task_id"]
        assert (await client.get(f"/ocr/{task_id}", headers=beta)).status_code == 404
        assert (await client.delete(f"/ocr/{task_id}", headers=beta)).status_code == 404
        client.headers.update(alpha)
        assert (await wait_for_task(client, task_id))["status"] == "completed"
        assert (await client.get("/stats", headers=beta)).status_code == 200


async def test_rate_limit_answers_429_with_retry_after_per_client() -> None:
    async with running_app(settings(rate_limit="3/minute", api_keys="one,two")) as client:
        one, two = {"X-API-Key": "one"}, {"X-API-Key": "two"}
        codes = [(await client.get("/stats", headers=one)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = await client.get("/ocr/anything", headers=one)
        assert limited.status_code == 429
        assert int(limited.headers["Retry-After"]) >= 1
        assert "rate limit" in limited.json()["detail"]
        assert (await client.get("/stats", headers=two)).status_code == 200  # its own budget
        for _ in range(5):  # probes and metrics are never limited
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/ready")).status_code == 200


async def test_request_id_is_echoed_and_logged_with_the_task_id(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ocr_service.access")
    async with running_app(settings()) as client:
        response = await upload(client, encode(solid_image(1)))
        generated = response.headers["X-Request-ID"]
        task_id = response.json()["task_id"]
        polled = await client.get(f"/ocr/{task_id}", headers={"X-Request-ID": "client-id-42"})
        assert polled.headers["X-Request-ID"] == "client-id-42"
        odd = await client.get("/health", headers={"X-Request-ID": "not a sane id"})
        assert odd.headers["X-Request-ID"] != "not a sane id"
    records = [r for r in caplog.records if r.name == "ocr_service.access"]
    by_id = {r.request_id: r for r in records}  # type: ignore[attr-defined]
    assert by_id[generated].task_id == task_id and by_id[generated].status == 202  # type: ignore[attr-defined]
    assert by_id["client-id-42"].task_id == task_id and by_id["client-id-42"].route == "/ocr/{task_id}"  # type: ignore[attr-defined]
    line = json.loads(JsonFormatter().format(by_id["client-id-42"]))
    assert line["request_id"] == "client-id-42" and line["task_id"] == task_id and line["status"] == 200
    assert line["message"].startswith("GET /ocr/")
