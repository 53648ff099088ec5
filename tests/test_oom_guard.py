"""The runtime out-of-memory guard, through HTTP: bursts larger than memory all complete, each page its own."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence

import httpx
import pytest

from ocr_service.core import batcher as batcher_module
from ocr_service.engines.base import DecodedPage, EngineOutOfMemory, PageOutcome
from ocr_service.engines.fake import FakeEngine
from tests.helpers import (
    encode,
    running_app,
    running_services,
    settings,
    solid_image,
    upload,
    wait_for_task,
)


def pixel_hash(seed: int, size: tuple[int, int] = (64, 48)) -> str:
    return hashlib.sha256(solid_image(seed, size).tobytes()).hexdigest()


def holds_eight() -> FakeEngine:
    """Simulated memory for 8 pages: 80 MB, 10 MB a page."""
    return FakeEngine(batch_latency=0.01, memory_budget_mb=80, item_memory_mb=10)


def burst_settings() -> object:
    # The timeout policy sends a batch as soon as 16 pages wait, so a burst reaches the engine as 16.
    return settings(batch_size=16, batch_policy="timeout", batch_timeout=5.0, max_queue_size=1000)


async def send_burst(client: httpx.AsyncClient, seeds: Sequence[int]) -> dict[int, dict]:
    """Upload one page per seed at once; return each seed's finished task."""
    responses = await asyncio.gather(*(upload(client, encode(solid_image(seed))) for seed in seeds))
    assert all(response.status_code == 202 for response in responses)
    tasks = await asyncio.gather(*(wait_for_task(client, r.json()["task_id"]) for r in responses))
    return dict(zip(seeds, tasks, strict=True))


def successful_pages(engine: FakeEngine) -> int:
    """Pages the engine actually ran (batches that fitted), counting retries once each."""
    return sum(n for n in engine.batches_seen if n * engine.item_memory_mb <= engine.memory_budget_mb)


async def test_a_burst_larger_than_memory_all_completes_each_with_its_own_result() -> None:
    engine = holds_eight()
    async with running_app(burst_settings(), engine) as client:
        tasks = await send_burst(client, range(24))
        for seed, task in tasks.items():
            assert task["status"] == "completed", task
            assert f"sha256={pixel_hash(seed)}" in task["result"]
        assert len({task["result"] for task in tasks.values()}) == 24  # nobody got another page's text
        assert successful_pages(engine) == 24  # none lost, none run twice
        assert max(engine.batches_seen) == 16  # the burst did reach the engine too large

        stats = (await client.get("/stats")).json()
        assert stats["oom_events"] > 0
        assert stats["batch_cap"] <= 8
        assert stats["completed"] == 24 and stats["failed"] == 0
        assert stats["pages_too_large"] == 0


class PixelMemoryEngine(FakeEngine):
    """Memory grows with each page's pixels, so one large page can need more than the budget."""

    MB_PER_MEGAPIXEL = 100.0

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        needed = sum(page.image.width * page.image.height / 1e6 * self.MB_PER_MEGAPIXEL for page in pages)
        self.batches_seen.append(len(pages))
        if needed > self.memory_budget_mb:
            raise EngineOutOfMemory(f"batch of {len(pages)} needs {needed:.0f} MB")
        return [self._read(page) for page in pages]


async def test_a_page_that_alone_does_not_fit_fails_and_the_others_complete() -> None:
    engine = PixelMemoryEngine(memory_budget_mb=50)  # a 64x48 page needs 0.3 MB; 1000x1000 needs 100 MB
    async with running_app(burst_settings(), engine) as client:
        huge = upload(client, encode(solid_image(99, (1000, 1000))))
        small = [upload(client, encode(solid_image(seed))) for seed in range(15)]
        responses = await asyncio.gather(huge, *small)
        huge_task, *small_tasks = await asyncio.gather(*(wait_for_task(client, r.json()["task_id"]) for r in responses))

        assert huge_task["status"] == "failed"
        assert "too large for this GPU at this mode" in huge_task["error"]
        for seed, task in enumerate(small_tasks):
            assert task["status"] == "completed", task
            assert f"sha256={pixel_hash(seed)}" in task["result"]
        stats = (await client.get("/stats")).json()
        assert stats["pages_too_large"] == 1 and stats["oom_events"] >= 1


async def test_the_cap_climbs_back_after_clean_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "RECOVERY_BATCHES", 2)
    engine = FakeEngine(batch_latency=0.01, memory_budget_mb=100, item_memory_mb=10)  # holds 10
    async with running_app(burst_settings(), engine) as client:
        batcher = running_services(client).batcher
        await send_burst(client, range(16))
        assert 8 <= batcher.cap.value < 16  # 16 did not fit; its halves of 8 did (and count as clean)

        seeds = iter(range(100, 400))
        sent, caps = 16, []
        for _ in range(12):  # rounds of one full batch at the current cap
            tasks = await send_burst(client, [next(seeds) for _ in range(batcher.cap.value)])
            assert all(task["status"] == "completed" for task in tasks.values())
            sent += len(tasks)
            caps.append(batcher.cap.value)
        assert 10 in caps  # climbed back to what memory holds
        assert 11 in engine.batches_seen  # tried one page more, which did not fit ...
        assert min(caps[caps.index(11) + 1 :]) == 10  # ... and fell back to the 10 that fitted, not to half of 11
        assert successful_pages(engine) == sent
