"""The work ledger: the one owner of a task's life, from admission to its end.

Only the ledger admits work, starts and completes pages, fails, cancels and counts. So
whoever ends a task (a page outcome, a client's cancel, a failed download, shutdown),
the same things happen, in `_end`: the record ends, its waiting pages leave the queue,
its place in the queue is given back, whatever still works for it (a download) is
stopped, and the counts move.

Admission counts waiting work, never finished tasks: pages in the queue plus documents
still downloading (each counts as one until its pages are known). A submission is
refused with `QueueFull` (503) while waiting work is at `limit`. A document or URL batch
that is admitted goes in whole, even past the limit, so its pages stay together.

Finished tasks are kept for the store's TTL, so the tasks held are bounded too: at most
`max_stored` in all (`QueueFull`, 503) and `max_stored_per_client` per client
(`TooManyTasks`, 429), so one client cannot fill memory with tasks that fail at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace

from ocr_service.core.batcher import PageSink
from ocr_service.core.estimates import ThroughputMeter
from ocr_service.core.keeper import DocumentKeeper
from ocr_service.core.queue import PageJob, PageQueue
from ocr_service.core.store import Dropped, TaskStore
from ocr_service.core.tasks import BatchJob, Task, TaskStatus
from ocr_service.documents import Document, PageRef
from ocr_service.engines.base import PageOutcome, PageRequest
from ocr_service.output.pages import build_page

logger = logging.getLogger(__name__)


FULL = "Service is at full capacity. Please try again later."


class QueueFull(Exception):
    """The service takes no more work now; `retry_after` is a whole number of seconds."""

    def __init__(self, retry_after: int, reason: str = "queue_full", detail: str = FULL) -> None:
        super().__init__(detail)
        self.retry_after = retry_after
        self.reason = reason  # queue_full, shutting_down or batcher_failed


class TooManyTasks(Exception):
    """One client holds as many tasks as it may; `retry_after` is a whole number of seconds."""

    def __init__(self, retry_after: int, detail: str) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class CancelRefused(Exception):
    """The task cannot be cancelled in its state (the message says which)."""


class WorkLedger(PageSink):
    def __init__(
        self,
        store: TaskStore,
        queue: PageQueue,
        *,
        limit: int,
        max_stored: int = 100_000,
        max_stored_per_client: int = 10_000,
        expiry_interval: float = 300,
        clock: Callable[[], float] = time.monotonic,
        keeper: DocumentKeeper | None = None,
    ) -> None:
        self.store = store
        self.queue = queue
        self.limit = limit
        self.max_stored = max_stored
        self.max_stored_per_client = max_stored_per_client
        self.expiry_interval = expiry_interval  # how often finished tasks are dropped
        self.clock = clock
        self.keeper = keeper if keeper is not None else DocumentKeeper(0)  # ended tasks' documents (page images)
        self.throughput = ThroughputMeter()
        self.counts: Counter[TaskStatus] = Counter()  # tasks held now, by status
        self.ended: Counter[TaskStatus] = Counter()  # tasks that ever ended, by outcome
        self.expired = 0
        self.pages_in_flight = 0  # pages handed to the engine and not yet finished
        self._held_by_client: Counter[str] = Counter()
        self._reserved: set[str] = set()  # tasks admitted whose pages are not known yet
        self._on_end: dict[str, Callable[[], None]] = {}  # what to stop when a task ends
        self._live: dict[str, Task] = {}  # unfinished tasks
        self._refusal: QueueFull | None = None  # set once the service stops admitting
        store.on_cancel_request(self._cancel_requested)

    # -- admission ---------------------------------------------------------------

    @property
    def waiting(self) -> int:
        """Work that counts against the limit."""
        return len(self.queue) + len(self._reserved)

    def check_room(self, client: str | None = None, tasks: int = 1) -> None:
        """Raise QueueFull (or TooManyTasks for `client`), with a retry estimate, when `tasks`
        more may not come in now."""
        if self._refusal is not None:
            raise self._refusal
        if self.waiting >= self.limit:
            raise QueueFull(self.throughput.retry_after(self.waiting - self.limit + 1))
        retry_after = max(1, round(self.expiry_interval))
        if self.total + tasks > self.max_stored:
            raise QueueFull(
                retry_after,
                "store_full",
                f"The service holds {self.total} tasks, its limit (OCR_MAX_STORED_TASKS={self.max_stored}); "
                "finished ones are dropped after OCR_TASK_TTL. Please try again later.",
            )
        if client is not None and self._held_by_client[client] + tasks > self.max_stored_per_client:
            raise TooManyTasks(
                retry_after,
                f"you hold {self._held_by_client[client]} tasks, the limit per client "
                f"(OCR_MAX_STORED_TASKS_PER_CLIENT={self.max_stored_per_client}); finished ones are dropped "
                "after OCR_TASK_TTL",
            )

    async def admit_document(self, task: Task, document: Document, data: bytes) -> None:
        """Admit a task whose document is open: its pages join the queue."""
        await self.admit_pending([task])
        await self.document_arrived(task, document, data)

    async def admit_pending(self, tasks: Sequence[Task], batch: BatchJob | None = None) -> None:
        """Admit tasks whose documents are still to come (URLs); each holds one place."""
        if tasks:
            self.check_room(tasks[0].client, len(tasks))
        self._reserved.update(task.id for task in tasks)
        for task in tasks:
            self._live[task.id] = task
            self.counts[task.status] += 1
            self._held_by_client[task.client] += 1
        if batch is not None:
            await self.store.add_batch(batch)
        else:
            for task in tasks:
                await self.store.add(task)

    async def document_arrived(self, task: Task, document: Document, data: bytes) -> None:
        """A pending task's document is open: its place becomes its pages (its bytes are kept
        first, where the store can keep them, so the work survives a restart)."""
        if task.status.terminal:
            return
        await self.store.keep_document(task, data)
        if task.status.terminal:  # cancelled meanwhile
            return
        self._reserved.discard(task.id)
        task.set_document(document)
        self._queue_pages(task, document)

    def count_kept(self, finished: Sequence[Dropped]) -> None:
        """Count the finished tasks a store kept through a restart (they expire as usual)."""
        for task in finished:
            self.counts[task.status] += 1
            self._held_by_client[task.client] += 1

    def resume(self, task: Task, document: Document | None) -> None:
        """Take back a task the service had not finished when it stopped: its pages not done
        are queued again (or, without a document, it waits for one like a new URL task)."""
        self._live[task.id] = task
        self.counts[task.status] += 1
        self._held_by_client[task.client] += 1
        if document is None:
            self._reserved.add(task.id)
            return
        task.document = document
        self._queue_pages(task, document)

    def on_end(self, task: Task, stop: Callable[[], None]) -> None:
        """Call `stop` when `task` ends, whoever ends it (a download to cancel)."""
        self._on_end[task.id] = stop

    def stop_admitting(self, retry_after: int, reason: str, detail: str) -> None:
        """Refuse every new submission from now on (shutdown, or a dead batcher), saying why."""
        self._refusal = QueueFull(max(1, retry_after), reason, detail)

    def _queue_pages(self, task: Task, document: Document) -> None:
        """Queue the task's pages that are not done yet."""
        self.store.save(task)
        now = self.clock()
        self.queue.put(
            PageJob(
                task,
                index,
                PageRequest(
                    PageRef(document, index),
                    task.params.prompt,
                    task.params.temperature,
                    task.params.max_tokens,
                    key=f"{task.id}/{index}",
                ),
                now,
            )
            for index in task.pages_left
        )
        self._note_busy()

    # -- pages (the batcher reports here) ----------------------------------------

    def pages_started(self, jobs: Sequence[PageJob]) -> None:
        self.pages_in_flight += len(jobs)
        for job in jobs:
            if job.task.status is TaskStatus.PENDING:
                self._move(job.task, TaskStatus.PROCESSING, job.task.set_processing)
        self._note_busy()

    def page_finished(self, job: PageJob, outcome: PageOutcome) -> None:
        self.pages_in_flight -= 1
        self.throughput.pages_finished(1, self.clock())
        self._record(job, outcome)
        self._note_busy()

    def _record(self, job: PageJob, outcome: PageOutcome) -> None:
        task = job.task
        if task.status.terminal:
            return  # it failed or was cancelled while this page ran
        if isinstance(outcome, Exception):
            self.fail(task, f"page {job.index + 1}: {outcome}")
            return
        warnings = [outcome.warning] if outcome.warning else []
        if outcome.finish_reason == "length":
            warnings.append(
                f"stopped at max_tokens ({task.params.max_tokens}): its text is incomplete, "
                "usually because the model repeated itself; raise max_tokens or check the page"
            )
        page = build_page(outcome.text, outcome.finish_reason, outcome.width, outcome.height, job.index + 1, outcome.blocks)
        task.set_page(job.index, replace(page, warnings=tuple(warnings)))
        for warning in warnings:
            task.add_warning(f"page {job.index + 1}: {warning}")
        if task.pages_done == task.pages_total:
            self._end(task, TaskStatus.COMPLETED)
        else:
            self.store.save(task)

    def _note_busy(self) -> None:
        """Tell the meter whether pages wait or run: its clock runs only then."""
        self.throughput.busy_changed(len(self.queue) + self.pages_in_flight > 0, self.clock())

    # -- ending ------------------------------------------------------------------

    def fail(self, task: Task, error: str) -> None:
        self._end(task, TaskStatus.FAILED, error)

    def cancel(self, task: Task) -> None:
        """Cancel a waiting or running task. Its waiting pages never run; pages already in
        the engine finish there, but their results are dropped; finished pages are kept.
        Raises CancelRefused for a task that has ended (cancelling twice is harmless)."""
        if task.status is TaskStatus.CANCELLED:
            return
        if task.status.terminal:
            raise CancelRefused(f"task {task.id} has already ended ({task.status.value})")
        if task.pages_done:
            left = [str(index + 1) for index in task.pages_left]
            task.add_warning(
                f"cancelled after {task.pages_done} of {task.pages_total} pages; not done: pages {', '.join(left)}"
            )
        self._end(task, TaskStatus.CANCELLED)

    async def cancel_anywhere(self, task: Task, timeout: float = 10) -> Task:
        """Cancel a task wherever it runs: here, or (a shared store) on the front that holds
        it, asked through the store; returns the task as it is then."""
        live = self._live.get(task.id)
        if live is not None or task.status.terminal:
            self.cancel(live or task)
            return live or task
        await self.store.request_cancel(task.id)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self.store.wait_ended(task.id)
        return await self.store.get(task.id) or task

    async def cancel_batch(self, batch: BatchJob) -> None:
        """Cancel every unfinished item of a batch; finished ones are left as they are."""
        for task in batch.tasks:
            if not task.status.terminal:
                await self.cancel_anywhere(task)

    def _cancel_requested(self, task_id: str) -> None:
        task = self._live.get(task_id)
        if task is not None:
            self.cancel(task)

    def fail_unfinished(self, reason: str, *, waiting_only: bool = False) -> int:
        """Fail every unfinished task (or only the waiting ones) with `reason`; return how many."""
        ended = 0
        for task in list(self._live.values()):
            if waiting_only and task.status is not TaskStatus.PENDING:
                continue
            self.fail(task, reason)
            ended += 1
        return ended

    def _end(self, task: Task, status: TaskStatus, error: str | None = None) -> None:
        if task.status.terminal:
            return
        if task.document is not None:  # page images: the record drops its document, the keeper may keep it
            self.keeper.keep(task.id, task.document)
        self._move(task, status, lambda: task.set_ended(status, error))
        self.ended[status] += 1
        self._live.pop(task.id, None)
        self._reserved.discard(task.id)
        self.queue.discard(task)
        stop = self._on_end.pop(task.id, None)
        if stop is not None:
            stop()
        self._note_busy()

    def _move(self, task: Task, status: TaskStatus, change: Callable[[], None]) -> None:
        self.counts[task.status] -= 1
        change()
        self.counts[status] += 1
        self.store.save(task)

    # -- reading -----------------------------------------------------------------

    async def get_task(self, task_id: str, owner: str | None = None) -> Task | None:
        """The task, if it exists and belongs to `owner` (others see nothing): the live one
        while it runs here, else the store's record."""
        task = self._live.get(task_id) or await self.store.get(task_id)
        return task if task is not None and task.owner == owner else None

    async def get_batch(self, batch_id: str, owner: str | None = None) -> BatchJob | None:
        batch = await self.store.get_batch(batch_id)
        if batch is None or batch.owner != owner:
            return None
        batch.tasks = [self._live.get(task.id, task) for task in batch.tasks]
        return batch

    async def wait_for(self, tasks: Sequence[Task], timeout: float) -> bool:
        """Wait up to `timeout` seconds for every task to end; True if they all did."""
        try:
            async with asyncio.timeout(timeout):
                for task in tasks:
                    live = self._live.get(task.id)
                    if live is not None:
                        await live.finished.wait()
                    elif not task.status.terminal:  # another front runs it
                        await self.store.wait_ended(task.id)
        except TimeoutError:
            return False
        return True

    def queue_position(self, task: Task) -> int | None:
        return self.queue.position(task) if task.status is TaskStatus.PENDING else None

    def estimated_wait(self, task: Task) -> float | None:
        """Seconds until an unfinished task is likely done, or None before anything was
        measured: the pages that must finish first (those in the engine, and in the queue up
        to and with its last waiting page), at the measured pages per second."""
        if task.status.terminal:
            return None
        last = self.queue.last_position(task)
        if last is None and task.id in self._reserved:
            return None  # still downloading: its pages are not known
        pages = self.pages_in_flight + (0 if last is None else last + 1)
        seconds = self.throughput.seconds_for(pages)
        return None if seconds is None else round(seconds, 1)

    @property
    def unfinished_count(self) -> int:
        return len(self._live)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def expire(self, now: float | None = None) -> int:
        """Drop finished work older than the TTL from the store; return how many tasks went."""
        expired = await self.store.expire(time.time() if now is None else now)
        for dropped in expired:
            self.counts[dropped.status] -= 1
            self._held_by_client[dropped.client] -= 1
            if self._held_by_client[dropped.client] <= 0:
                del self._held_by_client[dropped.client]
            self.keeper.drop(dropped.task_id)  # page images go with the task
        self.expired += len(expired)
        return len(expired)

    async def run_cleanup(self) -> None:
        """Expire old work every `expiry_interval` seconds, for the life of the app."""
        while True:
            await asyncio.sleep(self.expiry_interval)
            removed = await self.expire()
            if removed:
                logger.info("expired %d finished tasks", removed)
