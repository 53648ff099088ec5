"""Admission and the page queue: bounded by waiting work, never by finished tasks.

Waiting work is pages in the queue plus documents still being fetched (each counts
as one until its page count is known). A request is refused with 503 while waiting
work is at the limit. A document or URL batch that is admitted goes in whole, even if
that pushes the queue past the limit, so its pages stay together (the seed's rule).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ocr_service.core.tasks import Task


class QueueFull(Exception):
    """The service is at capacity; `retry_after` is a whole number of seconds."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("Service is at full capacity. Please try again later.")
        self.retry_after = retry_after


@dataclass(eq=False)
class PageJob:
    """One page of one task, waiting for (or in) a batch."""

    task: Task
    index: int
    arrived_at: float = field(default_factory=time.monotonic)
    in_flight: bool = False  # holds one of the batcher's page slots


class PageQueue:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._jobs: deque[PageJob] = deque()
        self._reserved = 0  # documents admitted but not yet fetched or opened
        self._closed_retry_after: int | None = None  # set once the service stops admitting
        # Called whenever pages arrive; the batcher sets it to wake itself up.
        self.on_arrival: Callable[[], None] = lambda: None

    @property
    def waiting(self) -> int:
        """Work that counts against the limit."""
        return len(self._jobs) + self._reserved

    @property
    def pages_queued(self) -> int:
        return len(self._jobs)

    def is_full(self) -> bool:
        return self.waiting >= self.limit

    @property
    def closed(self) -> bool:
        return self._closed_retry_after is not None

    def close(self, retry_after: int) -> None:
        """Admit nothing more (shutdown, or the batcher died): every submission gets 503."""
        self._closed_retry_after = max(1, retry_after)

    def ensure_room(self, throughput: float | None) -> None:
        """Raise QueueFull, with a retry estimate from `throughput` (pages/s), when full."""
        if self._closed_retry_after is not None:
            raise QueueFull(self._closed_retry_after)
        if self.is_full():
            raise QueueFull(self.retry_after(throughput))

    def admit(self, count: int, throughput: float | None) -> None:
        """Reserve room for `count` documents, or raise QueueFull."""
        self.ensure_room(throughput)
        self._reserved += count

    def retry_after(self, throughput: float | None) -> int:
        """Seconds until a slot is likely free, from the measured pages per second."""
        excess = self.waiting - self.limit + 1
        if not throughput:
            return 1
        return max(1, math.ceil(excess / throughput))

    def release(self, count: int = 1) -> None:
        """An admitted document failed before its pages were queued."""
        self._reserved = max(0, self._reserved - count)

    def put_pages(self, task: Task, reserved: bool = True) -> None:
        """Queue every page of `task` (its document is attached) in page order."""
        if reserved:
            self.release()
        now = time.monotonic()
        self._jobs.extend(PageJob(task, index, now) for index in range(task.pages_total))
        self.on_arrival()

    def oldest_arrival(self) -> float | None:
        return self._jobs[0].arrived_at if self._jobs else None

    def take(self, count: int) -> list[PageJob]:
        return [self._jobs.popleft() for _ in range(min(count, len(self._jobs)))]

    def discard(self, task: Task) -> int:
        """Remove a task's waiting pages (it failed or was cancelled); return how many."""
        before = len(self._jobs)
        self._jobs = deque(job for job in self._jobs if job.task is not task)
        return before - len(self._jobs)

    def position(self, task: Task) -> int | None:
        """How many pages wait ahead of this task's first waiting page (0 = next)."""
        for position, job in enumerate(self._jobs):
            if job.task is task:
                return position
        return None
