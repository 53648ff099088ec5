"""The batcher: one background task that groups waiting pages into engine batches.

A batch goes to the engine when it holds `batch_size` pages, or when its first page
has waited `timeout` seconds (the clock starts at that page's arrival). Under the
`adaptive` policy a partial batch goes at once whenever the engine has room: waiting
for companions only pays while the engine is busy, and while it is busy the queue
grows by itself. `flush_delay` is that rule, alone.

While pages wait (the engine is full, or a batch waits for companions), the ones that
will make the next batches (one per engine instance) are hinted to an engine that can
prepare them ahead (`Prefetching`): they stay in the queue, so they can still be
cancelled and keep their place; only the engine's work on them is speculative.

Each page keeps its own request. The batcher reports every page's outcome to a
`PageSink` (the ledger) the moment the engine returns it, and frees that page's slot
at once, so an engine that returns pages as they finish (vLLM, RapidOCR) takes new
ones while a slow batch-mate still runs. It knows nothing of tasks or Markdown.

An out-of-memory error splits the batch in halves and retries them, and lowers the
live batch cap (`BatchCap`) to what fitted; a page fails only when it alone does not
fit. Any other error that takes a whole batch down is bisected the same way (without
touching the cap), so the page at fault fails alone and its batch-mates complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from ocr_service.core.queue import PageJob, PageQueue
from ocr_service.engines.base import Engine, EngineError, EngineOutOfMemory, PageOutcome, Parallel, Prefetching

logger = logging.getLogger(__name__)

BatchPolicy = Literal["timeout", "adaptive"]
RECOVERY_BATCHES = 8  # clean batches at the cap before it grows by one page again


def flush_delay(
    policy: BatchPolicy,
    *,
    queued: int,
    room: int,
    first_arrival: float | None,
    now: float,
    timeout: float,
) -> float | None:
    """Seconds to wait before sending a batch: 0 means now, None means until pages arrive.

    >>> flush_delay("timeout", queued=3, room=8, first_arrival=10.0, now=10.5, timeout=2.0)
    1.5
    >>> flush_delay("adaptive", queued=3, room=8, first_arrival=10.0, now=10.5, timeout=2.0)
    0.0
    """
    if first_arrival is None or queued == 0:
        return None
    if queued >= room or policy == "adaptive":
        return 0.0
    return max(0.0, first_arrival + timeout - now)


class BatchCap:
    """The live cap on pages in the engine: `limit` until memory says otherwise.

    An out-of-memory error on a batch of n pages lowers the cap to the largest clean
    batch since the previous error when that is smaller than n (a climb that went one
    page too far drops back one page, not to half), else to n // 2. After
    `RECOVERY_BATCHES` clean batches at the cap it grows by one page, up to `limit`.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.value = limit
        self._clean_at_cap = 0
        self._largest_fit = 0  # largest clean batch since the last out-of-memory error

    def batch_fitted(self, size: int) -> None:
        self._largest_fit = max(self._largest_fit, size)
        if self.value < self.limit and size >= self.value:
            self._clean_at_cap += 1
            if self._clean_at_cap >= RECOVERY_BATCHES:
                self.value += 1
                self._clean_at_cap = 0

    def out_of_memory(self, size: int) -> None:
        fitted = self._largest_fit if self._largest_fit < size else 0
        self.value = max(1, min(self.value, max(size // 2, fitted)))
        self._largest_fit = 0  # evidence from before this error may not hold for these pages
        self._clean_at_cap = 0


class PageSink(Protocol):
    """Where the batcher reports pages (the ledger)."""

    def pages_started(self, jobs: Sequence[PageJob]) -> None: ...

    def page_finished(self, job: PageJob, outcome: PageOutcome) -> None: ...


class BatchObserver(Protocol):
    """Told about every batch (metrics); the batcher works the same without one."""

    def batch_formed(self, size: int, waited: float) -> None: ...

    def batch_ran(self, size: int, seconds: float) -> None: ...


class BatcherCrashed(Exception):
    """A batch ended with an error no page handler caught; the batcher cannot go on."""


class PageTooLarge(Exception):
    """A page that alone ran out of memory."""


@dataclass
class BatcherStats:
    batches_run: int = 0
    pages_processed: int = 0
    oom_events: int = 0
    pages_too_large: int = 0
    last_batch_size: int = 0
    engine_seconds: float = 0.0

    @property
    def mean_batch_size(self) -> float:
        return self.pages_processed / self.batches_run if self.batches_run else 0.0


class Batcher:
    def __init__(
        self,
        queue: PageQueue,
        engine: Engine,
        sink: PageSink,
        *,
        batch_size: int,
        timeout: float,
        policy: BatchPolicy,
        observer: BatchObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.queue = queue
        self.engine = engine
        self.sink = sink
        self.timeout = timeout
        self.policy = policy
        self.observer = observer
        self.clock = clock
        self.cap = BatchCap(batch_size)
        self.stats = BatcherStats()
        self._prefetcher = engine if isinstance(engine, Prefetching) else None
        # Each instance of an engine made of several (workers, replicas) takes batches of its own.
        self._instances = engine.instances if isinstance(engine, Parallel) else 1
        self._in_flight: set[PageJob] = set()
        self._batches: set[asyncio.Task[None]] = set()
        self._wakeup = asyncio.Event()
        self._crash: BaseException | None = None
        self._paused = False
        queue.on_arrival(self.wake)

    def pause(self) -> None:
        """Start no new batch (shutdown); the ones in the engine run on."""
        self._paused = True
        self.wake()

    def wake(self) -> None:
        """Look at the queue again (pages arrived, a slot was freed, time passed)."""
        self._wakeup.set()

    async def run(self) -> None:
        """Form and launch batches for the life of the app."""
        try:
            while True:
                self._raise_if_crashed()
                if self._paused:
                    await self._sleep_until_woken(None)
                    continue
                room = self._room()
                delay = flush_delay(
                    self.policy,
                    queued=len(self.queue),
                    room=room,
                    first_arrival=self.queue.oldest_arrival(),
                    now=self.clock(),
                    timeout=self.timeout,
                )
                if room > 0 and delay == 0:
                    self._launch(self.queue.take(room))
                    await asyncio.sleep(0)  # the batch reaches its engine before the next one is hinted
                    continue
                self._hint_next_batches()
                await self._sleep_until_woken(None if room <= 0 else delay)
        finally:
            for batch in self._batches:
                batch.cancel()

    async def drain(self) -> None:
        """Wait for the batches already in the engine to finish."""
        if self._batches:
            await asyncio.gather(*self._batches, return_exceptions=True)

    # -- forming batches -------------------------------------------------------

    def _room(self) -> int:
        """Pages the next batch may take now: at most the cap, within the cap per engine
        instance in flight (0 while the engine holds as many batches as it allows)."""
        limit = self.engine.max_batches_in_flight
        if limit is not None and len(self._batches) >= limit:
            return 0
        return max(0, min(self.cap.value, self.cap.value * self._instances - len(self._in_flight)))

    def _hint_next_batches(self) -> None:
        """Let the engine prepare the pages that will make the next batches (one for each of
        its instances) while they wait."""
        if self._prefetcher is not None and len(self.queue):
            size = self.cap.value
            waiting = [job.request for job in self.queue.peek(size * self._instances)]
            self._prefetcher.prefetch([waiting[start : start + size] for start in range(0, len(waiting), size)])

    def _raise_if_crashed(self) -> None:
        if self._crash is not None:
            raise BatcherCrashed(f"a batch crashed: {self._crash!r}") from self._crash

    async def _sleep_until_woken(self, timeout: float | None) -> None:
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wakeup.wait(), timeout)

    def _launch(self, jobs: list[PageJob]) -> None:
        if not jobs:
            return
        self._in_flight.update(jobs)
        if self.observer is not None:
            self.observer.batch_formed(len(jobs), self.clock() - jobs[0].arrived_at)
        self.sink.pages_started(jobs)
        batch = asyncio.create_task(self._run_batch(jobs), name=f"ocr-batch-{self.stats.batches_run}")
        self._batches.add(batch)
        batch.add_done_callback(self._batch_done)

    def _batch_done(self, batch: asyncio.Task[None]) -> None:
        self._batches.discard(batch)
        if not batch.cancelled() and batch.exception() is not None:
            # Exceptions are caught per page; what gets here (a BaseException from the
            # engine, say) leaves its pages without an outcome, so the whole batcher stops.
            self._crash = batch.exception()
        self.wake()

    # -- running batches -------------------------------------------------------

    async def _run_batch(self, jobs: list[PageJob]) -> None:
        try:
            await self._infer(jobs)
        except Exception as exc:  # a bug here must not leave pages without an outcome
            logger.exception("batch failed")
            for job in jobs:
                if job in self._in_flight:
                    self._finish(job, EngineError(f"internal error while processing the batch: {exc}"))
        finally:
            for job in jobs:
                self._release(job)

    def _release(self, job: PageJob) -> None:
        if job in self._in_flight:
            self._in_flight.discard(job)
            self.wake()

    def _finish(self, job: PageJob, outcome: PageOutcome) -> None:
        self.sink.page_finished(job, outcome)
        self._release(job)

    async def _infer(self, jobs: Sequence[PageJob]) -> None:
        """Run pages through the engine, splitting the batch on out-of-memory errors."""
        done: set[int] = set()
        started = self.clock()
        out_of_memory = failure = ""
        try:
            async for index, outcome in self.engine.run([job.request for job in jobs]):
                done.add(index)
                self._finish(jobs[index], outcome)
        except EngineOutOfMemory as exc:
            out_of_memory = str(exc)
        except Exception as exc:  # noqa: BLE001 - bisected below: the page at fault fails with it
            logger.warning("engine failed on a batch of %d pages: %r", len(jobs), exc)
            failure = str(exc) or repr(exc)
        # Retried outside the except block: an error's traceback can hold the failed
        # batch's device memory, and the halves need it back.
        rest = [job for i, job in enumerate(jobs) if i not in done]
        if out_of_memory:
            await self._retry_out_of_memory(rest, out_of_memory)
        elif failure:
            await self._retry_failed(rest, failure)
        else:
            self._record_batch(len(jobs), self.clock() - started)

    async def _retry_out_of_memory(self, jobs: list[PageJob], error: str) -> None:
        self.stats.oom_events += 1
        if len(jobs) == 1:
            self.stats.pages_too_large += 1
            self._finish(jobs[0], PageTooLarge(f"too large for this GPU at this mode (it alone ran out of memory: {error})"))
            return
        self.cap.out_of_memory(len(jobs))
        logger.warning("out of memory on a batch of %d pages; retrying halves, cap now %d", len(jobs), self.cap.value)
        await self._infer_halves(jobs)

    async def _retry_failed(self, jobs: list[PageJob], error: str) -> None:
        if len(jobs) == 1:
            self._finish(jobs[0], EngineError(f"engine error: {error}"))
            return
        await self._infer_halves(jobs)

    async def _infer_halves(self, jobs: list[PageJob]) -> None:
        half = len(jobs) // 2
        await self._infer(jobs[:half])
        await self._infer(jobs[half:])

    def _record_batch(self, size: int, seconds: float) -> None:
        stats = self.stats
        stats.batches_run += 1
        stats.pages_processed += size
        stats.last_batch_size = size
        stats.engine_seconds += seconds
        self.cap.batch_fitted(size)
        if self.observer is not None:
            self.observer.batch_ran(size, seconds)
