"""Intake: turns uploads and URLs into tasks whose pages wait in the queue.

This is the one object the HTTP layer talks to. It admits work (or raises
`QueueFull`), opens documents off the event loop, fetches URLs in the background,
and answers questions about tasks and the service.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from ocr_service.core.batcher import Batcher
from ocr_service.core.queue import PageQueue
from ocr_service.core.store import TaskStore
from ocr_service.core.tasks import BatchJob, OcrParams, Task, TaskStatus
from ocr_service.documents import DocumentError, DocumentLimits, open_document
from ocr_service.documents.fetch import FetchError, UrlFetcher, check_url_syntax
from ocr_service.engines.base import with_image_tag

logger = logging.getLogger(__name__)

MAX_CONCURRENT_DOWNLOADS = 16


class CancelRefused(Exception):
    """Only waiting work can be cancelled: the task is running or has ended."""


def normalize_prompt(prompt: str) -> str:
    """DeepSeek prompts start with the image placeholder; add it where a client left it out."""
    prompt = prompt.replace("\\n", "\n")  # curl -F sends a typed "\n" literally
    return with_image_tag(prompt)


@dataclass(frozen=True)
class ServiceConfig:
    """What intake needs from Settings."""

    engine: str
    batch_size: int
    batch_policy: str
    batch_timeout: float
    defaults: OcrParams  # used where a request leaves a parameter out
    max_upload_bytes: int
    max_batch_urls: int
    sync_timeout: float  # how long POST /ocr_batch waits before answering 504


class OcrService:
    def __init__(
        self,
        store: TaskStore,
        queue: PageQueue,
        batcher: Batcher,
        fetcher: UrlFetcher,
        limits: DocumentLimits,
        config: ServiceConfig,
    ) -> None:
        self.store = store
        self.queue = queue
        self.batcher = batcher
        self.fetcher = fetcher
        self.limits = limits
        self.config = config
        self.started_at = time.time()
        self._downloads: dict[str, asyncio.Task[None]] = {}  # by task id, so cancelling can stop one
        self._download_slots = asyncio.Semaphore(MAX_CONCURRENT_DOWNLOADS)

    # -- submitting work -------------------------------------------------------

    def params(self, prompt: str | None, temperature: float | None, max_tokens: int | None) -> OcrParams:
        """A request's parameters, with the service defaults where it gave none."""
        defaults = self.config.defaults
        return OcrParams(
            prompt=normalize_prompt(prompt or defaults.prompt),
            temperature=defaults.temperature if temperature is None else temperature,
            max_tokens=defaults.max_tokens if max_tokens is None else max_tokens,
        )

    def check_capacity(self) -> None:
        """Raise QueueFull now, before a client streams a large body in."""
        self.queue.ensure_room(self.batcher.stats.throughput)

    async def submit_upload(self, data: bytes, params: OcrParams, owner: str | None = None) -> Task:
        """Admit an uploaded document; DocumentError for a bad one, QueueFull when full."""
        self.check_capacity()
        document = await asyncio.to_thread(open_document, data, self.limits)
        self.queue.admit(1, self.batcher.stats.throughput)
        task = Task(params, owner=owner)
        task.attach(document)
        self.store.add(task)
        self.queue.put_pages(task)
        return task

    def submit_url(self, url: str, params: OcrParams, owner: str | None = None) -> Task:
        """Admit a URL: it is fetched in the background; a bad URL fails the task."""
        check_url_syntax(url)
        self.queue.admit(1, self.batcher.stats.throughput)
        task = Task(params, url=url, owner=owner)
        self.store.add(task)
        self._start_download(task)
        return task

    def submit_url_batch(self, urls: list[str], params: OcrParams, owner: str | None = None) -> BatchJob:
        """Admit a whole URL batch (it may push the queue past its limit); each URL stands alone."""
        self.queue.admit(len(urls), self.batcher.stats.throughput)
        batch = BatchJob([Task(params, url=url, owner=owner) for url in urls], owner=owner)
        for task in batch.tasks:
            task.batch_id = batch.id
        self.store.add_batch(batch)
        for task in batch.tasks:
            try:
                check_url_syntax(task.url or "")
            except FetchError as exc:
                self.queue.release()
                task.fail(str(exc))
                continue
            self._start_download(task)
        return batch

    def _start_download(self, task: Task) -> None:
        download = asyncio.create_task(self._download(task), name=f"download-{task.id}")
        self._downloads[task.id] = download
        download.add_done_callback(lambda _: self._downloads.pop(task.id, None))

    async def _download(self, task: Task) -> None:
        queued = False
        try:
            async with self._download_slots:
                if task.status.terminal:  # cancelled while it waited for a slot
                    return
                data = await self.fetcher.fetch(task.url or "")
            document = await asyncio.to_thread(open_document, data, self.limits)
            if not task.status.terminal:
                task.attach(document)
                self.queue.put_pages(task)  # turns the reservation into queued pages
                queued = True
        except (FetchError, DocumentError) as exc:
            task.fail(f"{task.url}: {exc}")
        except Exception as exc:
            logger.exception("download of %s failed", task.url)
            task.fail(f"{task.url}: could not fetch the document ({type(exc).__name__})")
        finally:
            if not queued:  # failed, cancelled or stopped: its slot is free again
                self.queue.release()

    async def aclose(self) -> None:
        downloads = list(self._downloads.values())
        for download in downloads:
            download.cancel()
        await asyncio.gather(*downloads, return_exceptions=True)

    # -- cancelling and ending work --------------------------------------------

    def cancel_task(self, task_id: str, owner: str | None = None) -> Task | None:
        """Cancel a waiting task and free its queue slot; None if unknown to this owner.

        Raises CancelRefused for a running task: its pages are in the engine and
        cannot be taken back. Cancelling a cancelled task again is harmless.
        """
        task = self.get_task(task_id, owner)
        if task is None or task.status is TaskStatus.CANCELLED:
            return task
        if task.status is TaskStatus.PROCESSING:
            raise CancelRefused(f"task {task_id} is running; only a waiting task can be cancelled")
        if task.status.terminal:
            raise CancelRefused(f"task {task_id} has already ended ({task.status.value})")
        self._end(task, cancel=True)
        return task

    def cancel_batch(self, batch_id: str, owner: str | None = None) -> BatchJob | None:
        """Cancel the batch's waiting items; running and finished items are left alone."""
        batch = self.get_batch(batch_id, owner)
        if batch is not None:
            for task in batch.tasks:
                if task.status is TaskStatus.PENDING:
                    self._end(task, cancel=True)
        return batch

    def stop_admitting(self, retry_after: int) -> None:
        """Refuse every new submission with 503 from now on (shutdown, or a dead batcher)."""
        self.queue.close(retry_after)

    def fail_unfinished(self, reason: str, *, waiting_only: bool = False) -> int:
        """End tasks as failed with `reason`, so no client polls forever; return how many."""
        ended = 0
        for task in self.store.unfinished():
            if waiting_only and task.status is not TaskStatus.PENDING:
                continue
            self._end(task, error=reason)
            ended += 1
        return ended

    def _end(self, task: Task, *, cancel: bool = False, error: str = "") -> None:
        if cancel:
            task.cancel()
        else:
            task.fail(error)
        self.queue.discard(task)
        download = self._downloads.get(task.id)
        if download is not None:
            download.cancel()  # its `finally` frees the reserved slot

    # -- reading state ---------------------------------------------------------

    async def wait_for(self, tasks: list[Task], timeout: float) -> bool:
        """Wait up to `timeout` seconds for every task to end; True if they all did."""
        try:
            async with asyncio.timeout(timeout):
                for task in tasks:
                    await task.finished.wait()
        except TimeoutError:
            return False
        return True

    def get_task(self, task_id: str, owner: str | None = None) -> Task | None:
        task = self.store.get(task_id)
        return task if task is not None and task.owner == owner else None

    def get_batch(self, batch_id: str, owner: str | None = None) -> BatchJob | None:
        batch = self.store.get_batch(batch_id)
        return batch if batch is not None and batch.owner == owner else None

    def queue_position(self, task: Task) -> int | None:
        return self.queue.position(task) if task.status is TaskStatus.PENDING else None

    def estimated_wait(self, task: Task) -> float | None:
        """Seconds until a waiting task is likely done, or None before anything was measured.

        The pages ahead of it, those in the engine and its own, at the batcher's
        measured pages per second.
        """
        position = self.queue_position(task)
        throughput = self.batcher.stats.throughput
        if position is None or not throughput:
            return None
        pages = position + self.batcher.in_flight_pages + task.pages_total
        return round(pages / throughput, 1)

    def stats(self) -> dict[str, object]:
        counts = self.store.status_counts()
        batcher = self.batcher.stats
        return {
            "total": len(self.store),
            **{status.value: counts.get(status, 0) for status in TaskStatus},
            "queue_limit": self.queue.limit,
            "queue_depth": self.queue.waiting,
            "pages_queued": self.queue.pages_queued,
            "pages_in_flight": self.batcher.in_flight_pages,
            "engine": self.config.engine,
            "batch_size": self.config.batch_size,
            "batch_cap": self.batcher.cap,
            "batch_policy": self.config.batch_policy,
            "batch_timeout": self.config.batch_timeout,
            "batches_run": batcher.batches_run,
            "pages_run": batcher.pages_run,
            "mean_batch_size": round(batcher.mean_batch_size, 3),
            "last_batch_size": batcher.last_batch_size,
            "throughput_pages_per_s": None if batcher.throughput is None else round(batcher.throughput, 3),
            "engine_busy_s": round(batcher.engine_seconds, 3),
            "oom_events": batcher.oom_events,
            "pages_too_large": batcher.pages_too_large,
            "expired_total": self.store.expired_total,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
