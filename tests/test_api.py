"""The seed's API through HTTP, on the fake engine: every endpoint, status and rule."""

from __future__ import annotations

import asyncio
import hashlib

from ocr_service.engines.base import DecodedPage, PageOutput, PageRequest
from ocr_service.engines.fake import FakeEngine
from tests.helpers import (
    encode,
    file_server,
    running_app,
    settings,
    solid_image,
    upload,
    wait_for_batch,
    wait_for_task,
)


def pixel_hash(seed: int) -> str:
    return hashlib.sha256(solid_image(seed).tobytes()).hexdigest()


class RecordingEngine(FakeEngine):
    """The fake engine, remembering every page request it was given."""

    def __init__(self, **kwargs: float) -> None:
        super().__init__(**kwargs)
        self.requests: list[DecodedPage] = []

    def predict(self, pages):  # type: ignore[no-untyped-def]
        self.requests.extend(pages)
        return super().predict(pages)


async def test_upload_poll_and_complete() -> None:
    async with running_app(settings()) as client:
        response = await upload(client, encode(solid_image(1)), prompt="Free OCR.")
        assert response.status_code == 202
        accepted = response.json()
        assert accepted["status"] == "pending" and set(accepted) == {"task_id", "status"}

        task = await wait_for_task(client, accepted["task_id"])
        assert task["status"] == "completed"
        assert f"sha256={pixel_hash(1)}" in task["result"]
        assert task["created_at"] <= task["updated_at"]
        assert task["progress"] == {"pages_done": 1, "pages_total": 1}
        assert "error" not in task


async def test_unknown_ids_are_404_with_json_detail() -> None:
    async with running_app(settings()) as client:
        for path in ("/ocr/no-such-task", "/ocr/batch/no-such-batch"):
            response = await client.get(path)
            assert response.status_code == 404
            assert "not found" in response.json()["detail"]


async def test_health_stats_and_docs() -> None:
    async with running_app(settings(max_queue_size=7)) as client:
        assert (await client.get("/health")).json() == {"status": "ok"}
        stats = (await client.get("/stats")).json()
        for key in ("total", "pending", "processing", "completed", "failed", "queue_limit", "queue_depth",
                    "batch_size", "batches_run", "mean_batch_size", "engine"):
            assert key in stats
        assert stats["queue_limit"] == 7 and stats["engine"] == "fake"
        assert (await client.get("/docs")).status_code == 200
        assert "/ocr/url/batch" in (await client.get("/openapi.json")).json()["paths"]


async def test_full_queue_answers_503_with_retry_after_and_loses_nothing() -> None:
    engine = FakeEngine(batch_latency=0.3)
    async with running_app(settings(max_queue_size=3, batch_size=1), engine) as client:
        accepted, refused = [], []
        for seed in range(10):
            response = await upload(client, encode(solid_image(seed)))
            (accepted if response.status_code == 202 else refused).append(response)
        assert refused, "the queue never filled"
        for response in refused:
            assert response.status_code == 503
            assert response.json() == {"detail": "Service is at full capacity. Please try again later."}
            assert int(response.headers["Retry-After"]) >= 1
        # 3 waiting + the one the engine took first
        assert len(accepted) <= 4
        for response in accepted:
            assert (await wait_for_task(client, response.json()["task_id"]))["status"] == "completed"


async def test_every_result_reaches_its_own_task_through_batches() -> None:
    engine = FakeEngine(batch_latency=0.02)
    async with running_app(settings(batch_size=5, max_queue_size=200), engine) as client:
        pages = [encode(solid_image(seed)) for seed in range(40)]
        responses = await asyncio.gather(*(upload(client, page, prompt="Free OCR.") for page in pages))
        task_ids = [response.json()["task_id"] for response in responses]
        results = await asyncio.gather(*(wait_for_task(client, task_id) for task_id in task_ids))
        for seed, task in enumerate(results):
            assert task["status"] == "completed"
            assert task["result"] == f"fake-ocr sha256={pixel_hash(seed)} size=64x48"
        assert max(engine.batches_seen) > 1, "pages were never batched together"
        assert sum(engine.batches_seen) == 40


async def test_idle_service_full_of_finished_tasks_still_accepts_work() -> None:
    async with running_app(settings(max_queue_size=2)) as client:
        for seed in range(12):
            response = await upload(client, encode(solid_image(seed)))
            assert response.status_code == 202
            await wait_for_task(client, response.json()["task_id"])
        stats = (await client.get("/stats")).json()
        assert stats["completed"] == 12 and stats["queue_depth"] == 0


async def test_ttl_counts_from_the_end_of_a_long_task() -> None:
    engine = FakeEngine(batch_latency=2.0)
    async with running_app(settings(task_ttl=1.0, cleanup_interval=0.05), engine) as client:
        task_id = (await upload(client, encode(solid_image(3)))).json()["task_id"]
        task = await wait_for_task(client, task_id)  # ran twice as long as the TTL
        assert task["status"] == "completed"
        await asyncio.sleep(0.1)
        assert (await client.get(f"/ocr/{task_id}")).status_code == 200, "expired before a TTL had passed"
        await asyncio.sleep(1.3)
        assert (await client.get(f"/ocr/{task_id}")).status_code == 404


async def test_each_page_keeps_its_own_parameters() -> None:
    engine = RecordingEngine(batch_latency=0.2)
    async with running_app(settings(batch_size=8, batch_policy="timeout", batch_timeout=2.0), engine) as client:
        forms = [
            {"prompt": "<image>\nFree OCR.", "temperature": 0.0, "max_tokens": 100},
            {"prompt": "Parse the figure.", "temperature": 0.7, "max_tokens": 2000},
            {},
        ]
        responses = [await upload(client, encode(solid_image(seed)), **form) for seed, form in enumerate(forms)]
        for response in responses:
            await wait_for_task(client, response.json()["task_id"])
    assert engine.batches_seen == [3], "the three pages should have shared one batch"
    by_hash = {hashlib.sha256(r.image.tobytes()).hexdigest(): r for r in engine.requests}
    first, second, third = (by_hash[pixel_hash(seed)] for seed in range(3))
    assert (first.prompt, first.temperature, first.max_tokens) == ("<image>\nFree OCR.", 0.0, 100)
    assert (second.prompt, second.temperature, second.max_tokens) == ("<image>\nParse the figure.", 0.7, 2000)
    assert third.prompt == "<image>\n<|grounding|>Convert the document to markdown."
    assert (third.temperature, third.max_tokens) == (0.0, 8192)


async def test_a_failing_page_does_not_fail_its_batch_mates() -> None:
    engine = FakeEngine(batch_latency=0.1)
    async with running_app(settings(batch_size=4, batch_policy="timeout", batch_timeout=2.0), engine) as client:
        prompts = ["Free OCR.", "Free OCR. [fake:fail]", "Free OCR.", "Free OCR."]
        ids = [(await upload(client, encode(solid_image(s)), prompt=p)).json()["task_id"] for s, p in enumerate(prompts)]
        tasks = [await wait_for_task(client, task_id) for task_id in ids]
    assert engine.batches_seen == [4]
    assert [t["status"] for t in tasks] == ["completed", "failed", "completed", "completed"]
    assert "[fake:fail]" in tasks[1]["error"] and "result" not in tasks[1]


async def test_timeout_policy_waits_for_a_full_batch_or_the_timeout() -> None:
    engine = FakeEngine()
    async with running_app(settings(batch_size=4, batch_policy="timeout", batch_timeout=0.5), engine) as client:
        ids = [(await upload(client, encode(solid_image(s)))).json()["task_id"] for s in range(4)]
        for task_id in ids:
            await wait_for_task(client, task_id)
        assert engine.batches_seen == [4]  # full: it went without waiting for the timeout
        started = asyncio.get_running_loop().time()
        lone = (await upload(client, encode(solid_image(9)))).json()["task_id"]
        await wait_for_task(client, lone)
        waited = asyncio.get_running_loop().time() - started
    assert engine.batches_seen == [4, 1]
    assert waited >= 0.45, f"a lone page went after {waited:.2f} s, before the 0.5 s timeout"


async def test_adaptive_policy_sends_at_once_when_idle_and_grows_batches_when_busy() -> None:
    engine = FakeEngine(batch_latency=1.0)
    async with running_app(settings(batch_size=8, batch_policy="adaptive", batch_timeout=10.0), engine) as client:
        first = (await upload(client, encode(solid_image(0)))).json()["task_id"]
        await asyncio.sleep(0.05)  # the engine is now busy with the first page
        rest = [(await upload(client, encode(solid_image(s)))).json()["task_id"] for s in range(1, 6)]
        await wait_for_task(client, first, timeout=5)  # far less than the 10 s timeout
        for task_id in rest:
            await wait_for_task(client, task_id, timeout=8)
        stats = (await client.get("/stats")).json()
    assert engine.batches_seen == [1, 5]
    assert stats["batches_run"] == 2 and stats["mean_batch_size"] == 3.0


async def test_url_and_url_batch_with_a_failing_item() -> None:
    files = {f"/page{seed}.png": encode(solid_image(seed)) for seed in range(3)}
    files["/not-an-image.png"] = b"<html>this is not an image</html>"
    with file_server(files) as base:
        async with running_app(settings()) as client:
            single = await client.post("/ocr/url", json={"url": f"{base}/page0.png", "prompt": "Free OCR."})
            assert single.status_code == 202
            task = await wait_for_task(client, single.json()["task_id"])
            assert f"sha256={pixel_hash(0)}" in task["result"] and task["url"] == f"{base}/page0.png"

            urls = [f"{base}/page1.png", f"{base}/missing.png", "ftp://example.com/x.png",
                    f"{base}/page2.png", f"{base}/not-an-image.png"]
            response = await client.post("/ocr/url/batch", json={"urls": urls})
            assert response.status_code == 202
            assert response.json()["status"] in {"pending", "processing"}
            batch = await wait_for_batch(client, response.json()["batch_task_id"])
    assert (batch["total"], batch["completed"], batch["failed"], batch["pending"], batch["processing"]) == (5, 2, 3, 0, 0)
    assert batch["status"] == "completed"
    assert [item["url"] for item in batch["results"]] == urls
    items = {item["url"]: item for item in batch["results"]}
    assert f"sha256={pixel_hash(1)}" in items[urls[0]]["result"]
    assert f"sha256={pixel_hash(2)}" in items[urls[3]]["result"]
    assert "404" in items[urls[1]]["error"]
    assert "http" in items[urls[2]]["error"]
    assert items[urls[4]]["status"] == "failed" and items[urls[4]]["error"]


async def test_batch_of_only_failures_is_failed_never_pending() -> None:
    async with running_app(settings()) as client:
        response = await client.post("/ocr/url/batch", json={"urls": ["ftp://a/b.png", "notaurl"]})
        assert response.status_code == 202
        batch = (await client.get(f"/ocr/batch/{response.json()['batch_task_id']}")).json()
    assert batch["status"] == "failed" and batch["failed"] == 2 and batch["pending"] == 0


async def test_url_batch_length_is_capped() -> None:
    async with running_app(settings(max_batch_urls=3)) as client:
        response = await client.post("/ocr/url/batch", json={"urls": ["http://127.0.0.1/x.png"] * 4})
    assert response.status_code == 422 and "at most 3" in response.json()["detail"]


async def test_private_urls_are_refused_by_default() -> None:
    with file_server({"/page.png": encode(solid_image(5))}) as base:
        async with running_app(settings(allow_private_urls=False)) as client:
            response = await client.post("/ocr/url", json={"url": f"{base}/page.png"})
            assert response.status_code == 202
            task = await wait_for_task(client, response.json()["task_id"])
    assert task["status"] == "failed"
    assert "127.0.0.1" in task["error"] and "OCR_ALLOW_PRIVATE_URLS" in task["error"]


async def test_bad_requests_are_4xx_json_and_change_nothing() -> None:
    async with running_app(settings()) as client:
        cases = [
            await client.post("/ocr"),
            await upload(client, b""),
            await upload(client, b"plain text, not an image"),
            await upload(client, encode(solid_image(1)), temperature=-1),
            await client.post("/ocr/url", json={"prompt": "no url"}),
            await client.post("/ocr/url", content=b"{not json", headers={"content-type": "application/json"}),
            await client.post("/ocr/url/batch", json={"urls": []}),
        ]
        for response in cases:
            assert 400 <= response.status_code < 500, response.text
            assert "detail" in response.json()
        stats = (await client.get("/stats")).json()
        assert stats["total"] == 0 and stats["queue_depth"] == 0
        good = (await upload(client, encode(solid_image(2)))).json()["task_id"]
        assert (await wait_for_task(client, good))["status"] == "completed"


class PageByPageEngine:
    """An engine that, like vLLM, runs pages concurrently and returns each as it finishes.

    A prompt "sleep=S" makes that page take S seconds.
    """

    name = "page-by-page"
    max_batches_in_flight = None

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    async def run(self, pages):  # type: ignore[no-untyped-def]
        async def one(index: int, page: PageRequest):  # type: ignore[no-untyped-def]
            await asyncio.sleep(float(page.prompt.rsplit("sleep=", 1)[1]))
            return index, PageOutput(f"done after {page.prompt}")

        for next_done in asyncio.as_completed([one(i, p) for i, p in enumerate(pages)]):
            yield await next_done


async def test_a_slow_page_does_not_hold_the_slots_of_its_finished_batch_mates() -> None:
    engine = PageByPageEngine()
    async with running_app(settings(batch_size=2, batch_policy="adaptive"), engine) as client:
        slow = (await upload(client, encode(solid_image(0)), prompt="sleep=3")).json()["task_id"]
        quick = (await upload(client, encode(solid_image(1)), prompt="sleep=0.05")).json()["task_id"]
        await wait_for_task(client, quick, timeout=2)
        # The slow page still runs; the quick one's slot is free for the next page.
        later = (await upload(client, encode(solid_image(2)), prompt="sleep=0.05")).json()["task_id"]
        assert (await wait_for_task(client, later, timeout=2))["status"] == "completed"
        assert (await client.get(f"/ocr/{slow}")).json()["status"] == "processing"
        assert (await wait_for_task(client, slow, timeout=10))["status"] == "completed"
