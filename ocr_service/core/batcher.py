"""The batcher: one background task that groups waiting pages into engine batches.

A batch goes to the engine when it holds `batch_size` pages, or when its first page
has waited `timeout` seconds (the clock starts at that page's arrival). Under the
`adaptive` policy a partial batch goes at once whenever the engine has room: waiting
for companions only pays while the engine is busy, and while it is busy the queue
grows by itself.

Each page keeps its own prompt and sampling parameters. An error on one page fails
that page's task only. An out-of-memory error splits the batch in halves and retries
them, lowers the live batch cap to what fitted (it climbs back one page after
`RECOVERY_BATCHES` clean batches), and fails a page only when it alone does not fit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from PIL import Image

from ocr_service.core.queue import PageJob, PageQueue
from ocr_service.core.tasks import Task
from ocr_service.documents import DocumentError
from ocr_service.engines.base import Engine, EngineOutOfMemory, PageOutcome, PageRequest
from ocr_service.output.pages import render_page

logger = logging.getLogger(__name__)

BatchPolicy = Literal["timeout", "adaptive"]
RECOVERY_BATCHES = 8  # clean batches at the cap before it grows by one page again
THROUGHPUT_SMOOTHING = 0.3  # weight of the newest batch in the pages/s estimate


class BatchObserver(Protocol):
    """Told about every batch (metrics); the batcher works the same without one."""

    def batch_formed(self, size: int, waited: float) -> None: ...
    def batch_ran(self, size: int, seconds: float) -> None: ...


class BatcherCrashed(Exception):
    """A batch ended with an error no page handler caught; the batcher cannot go on."""


@dataclass
class BatcherStats:
    batches_run: int = 0
    pages_run: int = 0
    oom_events: int = 0
    pages_too_large: int = 0
    last_batch_size: int = 0
    engine_seconds: float = 0.0
    throughput: float | None = None  # pages per second of engine time, smoothed

    @property
    def mean_batch_size(self) -> float:
        return self.pages_run / self.batches_run if self.batches_run else 0.0


class Batcher:
    def __init__(
        self,
        queue: PageQueue,
        engine: Engine,
        *,
        batch_size: int,
        timeout: float,
        policy: BatchPolicy,
    ) -> None:
        self.queue = queue
        self.engine = engine
        self.batch_size = batch_size
        self.timeout = timeout
        self.policy = policy
        self.cap = batch_size  # live cap: lowered by out-of-memory errors, climbs back slowly
        self.stats = BatcherStats()
        self.in_flight_pages = 0
        self._in_flight_batches: set[asyncio.Task[None]] = set()
        self._clean_batches = 0
        self._largest_fit = 0  # largest clean batch since the last out-of-memory error
        self._wakeup = asyncio.Event()
        self._crash: BaseException | None = None
        self.observer: BatchObserver | None = None
        queue.on_arrival = self._wakeup.set

    async def run(self) -> None:
        """Form and launch batches for the life of the app."""
        try:
            while True:
                self._raise_if_crashed()
                await self._wait_for_room()
                await self._wait_for_pages()
                jobs = self.queue.take(self.cap - self.in_flight_pages)
                if jobs:
                    self._launch(jobs)
        finally:
            for batch in self._in_flight_batches:
                batch.cancel()

    def _raise_if_crashed(self) -> None:
        if self._crash is not None:
            raise BatcherCrashed(f"a batch crashed: {self._crash!r}") from self._crash

    async def drain(self) -> None:
        """Wait for the batches already in the engine to finish."""
        if self._in_flight_batches:
            await asyncio.gather(*self._in_flight_batches, return_exceptions=True)

    # -- forming batches -------------------------------------------------------

    def _has_room(self) -> bool:
        return (
            self.in_flight_pages < self.cap
            and len(self._in_flight_batches) < self.engine.concurrent_batches
        )

    async def _wait_for_room(self) -> None:
        while not self._has_room():
            self._raise_if_crashed()
            await self._sleep_until_woken()

    async def _wait_for_pages(self) -> None:
        """Return when a batch should go: it is full, its first page waited long enough,
        or (adaptive) the engine has room now."""
        while True:
            room = self.cap - self.in_flight_pages
            first_arrival = self.queue.oldest_arrival()
            if first_arrival is None:
                self._raise_if_crashed()
                await self._sleep_until_woken()
                continue
            if self.queue.pages_queued >= room or self.policy == "adaptive":
                return
            remaining = first_arrival + self.timeout - time.monotonic()
            if remaining <= 0:
                return
            await self._sleep_until_woken(remaining)

    async def _sleep_until_woken(self, timeout: float | None = None) -> None:
        self._wakeup.clear()
        try:
            await asyncio.wait_for(self._wakeup.wait(), timeout)
        except TimeoutError:
            pass

    def _launch(self, jobs: list[PageJob]) -> None:
        for job in jobs:
            job.in_flight = True
        self.in_flight_pages += len(jobs)
        if self.observer is not None:
            self.observer.batch_formed(len(jobs), time.monotonic() - jobs[0].arrived_at)
        for job in jobs:
            job.task.mark_processing()
        batch = asyncio.create_task(self._run_batch(jobs), name=f"ocr-batch-{self.stats.batches_run}")
        self._in_flight_batches.add(batch)
        batch.add_done_callback(self._batch_done)

    def _batch_done(self, batch: asyncio.Task[None]) -> None:
        self._in_flight_batches.discard(batch)
        if not batch.cancelled() and batch.exception() is not None:
            # Exceptions are caught per page; what gets here (a BaseException from the
            # engine, say) leaves its tasks hanging, so the whole batcher stops.
            self._crash = batch.exception()
        self._wakeup.set()

    # -- running batches -------------------------------------------------------

    async def _run_batch(self, jobs: list[PageJob]) -> None:
        try:
            images = await asyncio.to_thread(_render_pages, jobs)
            ready: list[tuple[PageJob, Image.Image]] = []
            for job, image in zip(jobs, images, strict=True):
                if isinstance(image, Exception):
                    self._fail(job.task, f"page {job.index + 1}: {image}")
                else:
                    ready.append((job, image))
            if ready:
                await self._infer(ready)
        except Exception as exc:  # a bug here must not leave tasks hanging
            logger.exception("batch failed")
            for job in jobs:
                self._fail(job.task, f"internal error while processing the batch: {exc}")
        finally:
            for job in jobs:
                self._release(job)

    def _release(self, job: PageJob) -> None:
        """Give a finished page's slot back at once: an engine that returns pages as they
        finish (vLLM) can take new ones while a slow batch-mate still runs."""
        if job.in_flight:
            job.in_flight = False
            self.in_flight_pages -= 1
            self._wakeup.set()

    async def _infer(self, items: Sequence[tuple[PageJob, Image.Image]]) -> None:
        """Run pages through the engine, splitting the batch on out-of-memory errors."""
        requests = [
            PageRequest(image, job.task.params.prompt, job.task.params.temperature, job.task.params.max_tokens)
            for job, image in items
        ]
        done: set[int] = set()
        started = time.perf_counter()
        out_of_memory = ""
        try:
            async for index, outcome in self.engine.run(requests):
                done.add(index)
                job, image = items[index]
                self._complete(job, image, outcome)
                self._release(job)
        except EngineOutOfMemory as exc:
            out_of_memory = str(exc)
        except Exception as exc:
            logger.exception("engine failed on a batch of %d pages", len(items))
            for index, (job, _) in enumerate(items):
                if index not in done:
                    self._fail(job.task, f"engine error: {exc}")
            return
        if out_of_memory:
            # Retried outside the except block: the error's traceback can hold the failed
            # batch's device memory, and the halves need it back.
            del requests
            await self._recover_from_oom([item for i, item in enumerate(items) if i not in done], out_of_memory)
            return
        self._record_batch(len(items), time.perf_counter() - started)

    async def _recover_from_oom(self, items: list[tuple[PageJob, Image.Image]], error: str) -> None:
        self.stats.oom_events += 1
        self._clean_batches = 0
        if len(items) == 1:
            job, image = items[0]
            self.stats.pages_too_large += 1
            self._fail(
                job.task,
                f"page {job.index + 1} is too large for this GPU at this mode "
                f"({image.width}x{image.height} px alone ran out of memory: {error})",
            )
            return
        half = len(items) // 2
        # Lower the cap to what is known to fit: the largest clean batch since the last
        # out-of-memory error when it is smaller than this one (a climb that went one page
        # too far drops back one page, not to half), else half of this batch.
        fitted = self._largest_fit if self._largest_fit < len(items) else 0
        self.cap = max(1, min(self.cap, max(half, fitted)))
        self._largest_fit = 0  # evidence from before this error may not hold for these pages
        logger.warning("out of memory on a batch of %d pages; retrying halves, cap now %d", len(items), self.cap)
        await self._infer(items[:half])
        await self._infer(items[half:])

    def _record_batch(self, size: int, seconds: float) -> None:
        stats = self.stats
        stats.batches_run += 1
        stats.pages_run += size
        stats.last_batch_size = size
        stats.engine_seconds += seconds
        if self.observer is not None:
            self.observer.batch_ran(size, seconds)
        if seconds > 0:
            rate = size / seconds
            old = stats.throughput
            stats.throughput = rate if old is None else old + THROUGHPUT_SMOOTHING * (rate - old)
        self._largest_fit = max(self._largest_fit, size)
        if self.cap < self.batch_size and size >= self.cap:
            self._clean_batches += 1
            if self._clean_batches >= RECOVERY_BATCHES:
                self.cap += 1
                self._clean_batches = 0

    def _complete(self, job: PageJob, image: Image.Image, outcome: PageOutcome) -> None:
        if isinstance(outcome, Exception):
            self._fail(job.task, f"page {job.index + 1}: {outcome}")
            return
        page = render_page(outcome.text, outcome.finish_reason, image.width, image.height, job.index + 1, outcome.blocks)
        job.task.page_done(job.index, page)

    def _fail(self, task: Task, error: str) -> None:
        if not task.status.terminal:
            task.fail(error)
            self.queue.discard(task)  # its other pages need not run


def _render_pages(jobs: Sequence[PageJob]) -> list[Image.Image | Exception]:
    """Decode each page (in a worker thread); a page that cannot be read fails alone."""
    images: list[Image.Image | Exception] = []
    for job in jobs:
        document = job.task.document
        if document is None:  # the task ended (failed or cancelled) while it waited
            images.append(DocumentError("the task ended before this page ran"))
            continue
        try:
            images.append(document.render(job.index))
        except Exception as exc:
            images.append(exc)
    return images
