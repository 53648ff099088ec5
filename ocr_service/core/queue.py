"""The page queue: pages waiting for a batch, in the order they arrived.

It only holds pages. Who may put pages in (admission) and what happens when a task
ends is the ledger's business; forming batches is the batcher's.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ocr_service.core.tasks import Task
from ocr_service.engines.base import PageRequest


@dataclass(eq=False)
class PageJob:
    """One page of one task, waiting for (or in) a batch."""

    task: Task
    index: int  # 0-based page of the task's document
    request: PageRequest  # what the engine is handed
    arrived_at: float = field(default_factory=time.monotonic)


class PageQueue:
    def __init__(self) -> None:
        self._jobs: deque[PageJob] = deque()
        self._listeners: list[Callable[[], None]] = []

    def __len__(self) -> int:
        return len(self._jobs)

    def on_arrival(self, listener: Callable[[], None]) -> None:
        """Call `listener` whenever pages arrive (the batcher wakes itself up so)."""
        self._listeners.append(listener)

    def put(self, jobs: Iterable[PageJob]) -> None:
        self._jobs.extend(jobs)
        for listener in self._listeners:
            listener()

    def take(self, count: int) -> list[PageJob]:
        return [self._jobs.popleft() for _ in range(min(count, len(self._jobs)))]

    def peek(self, count: int) -> list[PageJob]:
        """The next `count` pages, left in the queue."""
        return [self._jobs[i] for i in range(min(count, len(self._jobs)))]

    def oldest_arrival(self) -> float | None:
        return self._jobs[0].arrived_at if self._jobs else None

    def discard(self, task: Task) -> int:
        """Remove a task's waiting pages; return how many."""
        before = len(self._jobs)
        self._jobs = deque(job for job in self._jobs if job.task is not task)
        return before - len(self._jobs)

    def position(self, task: Task) -> int | None:
        """How many pages wait ahead of this task's first waiting page (0 = next)."""
        for position, job in enumerate(self._jobs):
            if job.task is task:
                return position
        return None

    def last_position(self, task: Task) -> int | None:
        """How many pages wait ahead of this task's last waiting page."""
        for position in range(len(self._jobs) - 1, -1, -1):
            if self._jobs[position].task is task:
                return position
        return None
