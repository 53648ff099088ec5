"""The batcher alone: flush rule, batch cap and OOM guard, with a list-backed sink, the fake
engine and an injected clock. No HTTP and no wall-clock sleeps: time moves when a test says so."""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence

import pytest

from ocr_service.core import batcher as batcher_module
from ocr_service.core.batcher import BatchCap, Batcher, BatchPolicy, flush_delay
from ocr_service.core.queue import PageJob, PageQueue
from ocr_service.core.tasks import OcrParams, Task
from ocr_service.engines.base import DecodedPage, EngineError, ImagePage, PageOutcome, PageOutput, PageRequest
from ocr_service.engines.fake import FAIL_MARKER, FakeEngine
from tests.helpers import solid_image

# -- the flush rule ------------------------------------------------------------


def test_nothing_queued_waits_for_arrivals() -> None:
    assert flush_delay("timeout", queued=0, room=8, first_arrival=None, now=5.0, timeout=2.0) is None


def test_a_full_batch_goes_at_once_under_either_policy() -> None:
    for policy in ("timeout", "adaptive"):
        assert flush_delay(policy, queued=8, room=8, first_arrival=5.0, now=5.0, timeout=2.0) == 0.0


def test_timeout_counts_from_the_first_arrival() -> None:
    assert flush_delay("timeout", queued=3, room=8, first_arrival=10.0, now=10.5, timeout=2.0) == 1.5
    assert flush_delay("timeout", queued=3, room=8, first_arrival=10.0, now=12.0, timeout=2.0) == 0.0
    assert flush_delay("timeout", queued=3, room=8, first_arrival=10.0, now=30.0, timeout=2.0) == 0.0


def test_adaptive_sends_a_partial_batch_when_there_is_room() -> None:
    assert flush_delay("adaptive", queued=1, room=8, first_arrival=10.0, now=10.0, timeout=2.0) == 0.0


# -- the batch cap -------------------------------------------------------------


def test_cap_halves_on_out_of_memory_and_climbs_back_after_clean_batches() -> None:
    cap = BatchCap(16)
    cap.out_of_memory(16)
    assert cap.value == 8
    for _ in range(batcher_module.RECOVERY_BATCHES - 1):
        cap.batch_fitted(8)
    assert cap.value == 8
    cap.batch_fitted(8)
    assert cap.value == 9


def test_a_climb_that_went_one_page_too_far_drops_back_one_page() -> None:
    cap = BatchCap(16)
    cap.out_of_memory(16)
    cap.value = 10
    cap.batch_fitted(10)
    cap.out_of_memory(11)
    assert cap.value == 10  # the largest batch that fitted, not half of 11


def test_cap_never_passes_the_limit_or_drops_below_one() -> None:
    cap = BatchCap(2)
    for _ in range(50):
        cap.batch_fitted(2)
    assert cap.value == 2
    cap.out_of_memory(1)
    assert cap.value == 1


# -- the batcher ---------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class ListSink:
    """Records what the batcher reports; `wait_for(n)` returns once n pages finished."""

    def __init__(self) -> None:
        self.started: list[list[PageJob]] = []
        self.finished: list[tuple[PageJob, PageOutcome]] = []
        self._changed = asyncio.Event()

    def pages_started(self, jobs: Sequence[PageJob]) -> None:
        self.started.append(list(jobs))

    def page_finished(self, job: PageJob, outcome: PageOutcome) -> None:
        self.finished.append((job, outcome))
        self._changed.set()

    async def wait_for(self, pages: int) -> None:
        async with asyncio.timeout(30):
            while len(self.finished) < pages:
                self._changed.clear()
                await self._changed.wait()


def job(seed: int, clock: Clock, prompt: str = "<image>\nFree OCR.") -> PageJob:
    task = Task(OcrParams(prompt, 0.0, 100))
    return PageJob(task, 0, PageRequest.of_image(solid_image(seed), prompt), arrived_at=clock())


class Rig:
    """A batcher over a queue, a fake engine and a list sink, running as a task."""

    def __init__(self, engine: FakeEngine, *, batch_size: int, policy: BatchPolicy, timeout: float = 2.0) -> None:
        self.clock = Clock()
        self.queue = PageQueue()
        self.sink = ListSink()
        self.engine = engine
        self.batcher = Batcher(
            self.queue, engine, self.sink, batch_size=batch_size, timeout=timeout, policy=policy, clock=self.clock
        )
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Rig:
        self._task = asyncio.create_task(self.batcher.run())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.engine.close()

    async def settle(self) -> None:
        """Let the batcher look at the queue (event-loop turns, no wall-clock time)."""
        for _ in range(20):
            await asyncio.sleep(0)

    def put(self, *jobs: PageJob) -> None:
        self.queue.put(jobs)


async def test_a_full_batch_goes_to_the_engine_at_once() -> None:
    async with Rig(FakeEngine(), batch_size=4, policy="timeout") as rig:
        rig.put(*(job(seed, rig.clock) for seed in range(4)))
        await rig.sink.wait_for(4)
    assert [len(batch) for batch in rig.sink.started] == [4]
    assert rig.engine.batches_seen == [4]


async def test_a_partial_batch_waits_for_the_timeout_from_its_first_page() -> None:
    async with Rig(FakeEngine(), batch_size=4, policy="timeout", timeout=2.0) as rig:
        rig.put(job(1, rig.clock))
        rig.clock.now += 1.0
        rig.put(job(2, rig.clock))
        await rig.settle()
        assert rig.sink.started == []
        rig.clock.now += 0.9  # 1.9 s after the first page
        rig.batcher.wake()
        await rig.settle()
        assert rig.sink.started == []
        rig.clock.now += 0.1  # 2.0 s after the first page: it goes, with its companion
        rig.batcher.wake()
        await rig.sink.wait_for(2)
    assert [len(batch) for batch in rig.sink.started] == [2]
    waited_from = rig.sink.started[0][0].arrived_at
    assert waited_from == 100.0


async def test_adaptive_sends_a_lone_page_when_the_engine_is_idle() -> None:
    async with Rig(FakeEngine(), batch_size=4, policy="adaptive") as rig:
        rig.put(job(1, rig.clock))
        await rig.sink.wait_for(1)
    assert [len(batch) for batch in rig.sink.started] == [1]


async def test_one_bad_page_fails_alone() -> None:
    async with Rig(FakeEngine(), batch_size=3, policy="timeout") as rig:
        rig.put(job(1, rig.clock), job(2, rig.clock, prompt=f"<image>\n{FAIL_MARKER}"), job(3, rig.clock))
        await rig.sink.wait_for(3)
    outcomes = {finished.request.source.load().tobytes(): outcome for finished, outcome in rig.sink.finished}
    assert len(outcomes) == 3
    failed = [o for o in outcomes.values() if isinstance(o, Exception)]
    assert len(failed) == 1 and isinstance(failed[0], EngineError) and FAIL_MARKER in str(failed[0])


async def test_out_of_memory_splits_the_batch_lowers_the_cap_and_every_page_gets_its_own_result() -> None:
    engine = FakeEngine(memory_budget_mb=30, item_memory_mb=10)  # holds 3 pages
    async with Rig(engine, batch_size=8, policy="timeout") as rig:
        jobs = [job(seed, rig.clock) for seed in range(8)]
        rig.put(*jobs)
        await rig.sink.wait_for(8)
        assert rig.batcher.cap.value < 8
        assert rig.batcher.stats.oom_events >= 2
    results = {id(finished): outcome for finished, outcome in rig.sink.finished}
    assert set(results) == {id(j) for j in jobs}  # every page once, none lost or repeated
    for finished, outcome in rig.sink.finished:
        assert isinstance(outcome, PageOutput)
        own = hashlib.sha256(finished.request.source.load().tobytes()).hexdigest()
        assert f"sha256={own}" in outcome.text  # its own page's result, not a batch-mate's
        assert outcome.width == 64 and outcome.height == 48
    assert engine.batches_seen[0] == 8 and max(n for n in engine.batches_seen[1:]) <= 4


async def test_the_cap_recovers_after_clean_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batcher_module, "RECOVERY_BATCHES", 3)
    engine = FakeEngine(memory_budget_mb=60, item_memory_mb=10)  # holds 6
    async with Rig(engine, batch_size=8, policy="timeout", timeout=0.0) as rig:
        rig.put(*(job(seed, rig.clock) for seed in range(8)))
        await rig.sink.wait_for(8)
        assert rig.batcher.cap.value == 4  # 8 did not fit; its halves of 4 did (two clean batches at the cap)
        rig.put(*(job(100 + i, rig.clock) for i in range(4)))  # the third clean batch at the cap ...
        await rig.sink.wait_for(12)
        assert rig.batcher.cap.value == 5  # ... and it grows by one page


async def test_a_page_alone_too_large_fails_with_the_reason() -> None:
    engine = FakeEngine(memory_budget_mb=5, item_memory_mb=10)  # not even one page fits
    async with Rig(engine, batch_size=2, policy="timeout") as rig:
        rig.put(job(1, rig.clock), job(2, rig.clock))
        await rig.sink.wait_for(2)
    assert all("too large for this GPU" in str(outcome) for _, outcome in rig.sink.finished)
    assert rig.batcher.stats.pages_too_large == 2


class PoisonEngine(FakeEngine):
    """Fails a whole batch whenever one of its pages is the poisoned one (a real engine's
    batch-level exception: a bad tensor shape, a processor error)."""

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        if any("poison" in page.prompt for page in pages):
            raise ValueError("shape mismatch in the batch")
        return super().predict(pages)


async def test_an_error_that_takes_a_batch_down_fails_only_the_page_at_fault() -> None:
    engine = PoisonEngine()
    async with Rig(engine, batch_size=8, policy="timeout") as rig:
        jobs = [job(seed, rig.clock, prompt="<image>\npoison" if seed == 5 else "<image>\nFree OCR.") for seed in range(8)]
        rig.put(*jobs)
        await rig.sink.wait_for(8)
    outcomes = {id(finished): outcome for finished, outcome in rig.sink.finished}
    assert len(outcomes) == 8
    for index, page_job in enumerate(jobs):
        outcome = outcomes[id(page_job)]
        if index == 5:
            assert isinstance(outcome, EngineError) and "shape mismatch" in str(outcome)
        else:
            assert isinstance(outcome, PageOutput), outcome
    assert rig.batcher.cap.value == 8  # not a memory problem: the cap stays


class GatedEngine(FakeEngine):
    """The fake engine whose model waits for the test's go, and which records each page it prepares."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.go = threading.Event()
        self.prepared: list[str] = []
        self.all_prepared = threading.Event()
        self.expected = expected
        self._lock = threading.Lock()

    def prepare_page(self, page: DecodedPage) -> None:
        with self._lock:
            self.prepared.append(page.prompt)
            if len(self.prepared) == self.expected:
                self.all_prepared.set()

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        self.go.wait(30)
        return super().predict(pages)


def keyed_job(seed: int, clock: Clock) -> PageJob:
    task = Task(OcrParams(f"<image>\npage {seed}", 0.0, 100))
    request = PageRequest(ImagePage(solid_image(seed)), f"<image>\npage {seed}", 0.0, 100, key=f"{task.id}/0")
    return PageJob(task, 0, request, arrived_at=clock())


async def test_the_next_batch_is_prepared_while_one_runs_and_stays_in_the_queue() -> None:
    engine = GatedEngine(expected=8)
    async with Rig(engine, batch_size=4, policy="adaptive") as rig:
        rig.put(*(keyed_job(seed, rig.clock) for seed in range(8)))
        await asyncio.to_thread(engine.all_prepared.wait, 10)  # batch 2 prepared while batch 1 runs
        assert len(rig.queue) == 4  # still waiting: cancellable, in its place
        engine.go.set()
        await rig.sink.wait_for(8)
    assert sorted(engine.prepared) == sorted(f"<image>\npage {seed}" for seed in range(8))  # each page once
    assert [len(batch) for batch in rig.sink.started] == [4, 4]


async def test_pages_waiting_for_companions_are_prepared_while_they_wait() -> None:
    engine = GatedEngine(expected=3)
    engine.go.set()
    async with Rig(engine, batch_size=4, policy="timeout", timeout=2.0) as rig:
        rig.put(*(keyed_job(seed, rig.clock) for seed in range(3)))
        await asyncio.to_thread(engine.all_prepared.wait, 10)  # prepared before their batch goes
        assert rig.sink.started == []
        rig.put(keyed_job(3, rig.clock))  # the fourth: the batch is full and goes
        await rig.sink.wait_for(4)
    assert sorted(engine.prepared) == sorted(f"<image>\npage {seed}" for seed in range(4))  # none twice


async def test_a_hinted_page_that_is_cancelled_is_dropped() -> None:
    engine = GatedEngine(expected=8)
    async with Rig(engine, batch_size=4, policy="adaptive") as rig:
        jobs = [keyed_job(seed, rig.clock) for seed in range(8)]
        rig.put(*jobs)
        await asyncio.to_thread(engine.all_prepared.wait, 10)
        rig.queue.discard(jobs[5].task)  # a hinted page is cancelled before its batch forms
        engine.go.set()
        await rig.sink.wait_for(7)
    assert len(engine.prepared) == 8  # its preparation is wasted, no other page is prepared twice
    finished = {id(job) for job, _ in rig.sink.finished}
    assert id(jobs[5]) not in finished and len(finished) == 7
    assert all(isinstance(outcome, PageOutput) for _, outcome in rig.sink.finished)


class BarrierEngine(FakeEngine):
    """Each page's preparation waits until `parties` pages are being prepared at once."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=5)
        self.waited_alone = False

    def prepare_page(self, page: DecodedPage) -> None:
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:  # the pages came one by one
            self.waited_alone = True


async def test_a_batch_nobody_hinted_is_prepared_on_all_the_preparing_threads() -> None:
    engine = BarrierEngine(parties=FakeEngine.prepare_threads)
    pages = [keyed_job(seed, Clock()).request for seed in range(FakeEngine.prepare_threads)]
    try:
        outcomes = [outcome async for _, outcome in engine.run(pages)]
    finally:
        engine.close()
    assert not engine.waited_alone
    assert len(outcomes) == len(pages) and all(isinstance(outcome, PageOutput) for outcome in outcomes)


class TwoInstanceEngine(GatedEngine):
    """A gated engine that counts as two instances (two workers), recording each hint."""

    instances = 2
    max_batches_in_flight = 2

    def __init__(self) -> None:
        super().__init__(expected=0)
        self.hints: list[list[list[str]]] = []

    def prefetch(self, batches: Sequence[Sequence[PageRequest]]) -> None:
        self.hints.append([[page.key for page in batch] for batch in batches])


async def test_an_engine_of_two_instances_is_hinted_one_batch_for_each() -> None:
    engine = TwoInstanceEngine()
    async with Rig(engine, batch_size=4, policy="adaptive") as rig:
        jobs = [keyed_job(seed, rig.clock) for seed in range(16)]
        rig.put(*jobs)
        await rig.settle()  # two batches run (one per instance), eight pages wait
        keys = [page_job.request.key for page_job in jobs]
        assert engine.hints[-1] == [keys[8:12], keys[12:16]]
        engine.go.set()
        await rig.sink.wait_for(16)
