"""Where task and batch records are kept, and for how long.

A finished task is kept `ttl` seconds after it ended, so a task that ran longer than
the TTL can still be read when it finishes. Waiting and running tasks never expire.
Items of a URL batch live as long as their batch, which expires a TTL after its last
item ended.

`TaskStore` is the interface the ledger keeps records through. Reads and additions are
async so that a store may live outside the process; `save` is called on every change
and must not wait (a store outside the process writes it behind, in order).
`MemoryTaskStore` keeps records in this process.
"""

from __future__ import annotations

from collections import deque
from typing import Protocol

from ocr_service.core.tasks import BatchJob, Task


class TaskStore(Protocol):
    async def add(self, task: Task) -> None: ...

    async def add_batch(self, batch: BatchJob) -> None:
        """Keep a batch and every one of its tasks."""
        ...

    def save(self, task: Task) -> None:
        """The task changed."""
        ...

    async def get(self, task_id: str) -> Task | None: ...

    async def get_batch(self, batch_id: str) -> BatchJob | None: ...

    async def expire(self, now: float) -> list[Task]:
        """Drop finished work ended more than the TTL before `now`; return the tasks dropped."""
        ...


class MemoryTaskStore:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._tasks: dict[str, Task] = {}
        self._batches: dict[str, BatchJob] = {}
        # Finished work in the order it finished: expiry looks only at its oldest end.
        self._finished: deque[tuple[float, Task | BatchJob]] = deque()

    async def add(self, task: Task) -> None:
        self._tasks[task.id] = task
        self.save(task)

    async def add_batch(self, batch: BatchJob) -> None:
        self._batches[batch.id] = batch
        for task in batch.tasks:
            self._tasks[task.id] = task
            self.save(task)

    def save(self, task: Task) -> None:
        if task.finished_at is None:
            return
        if task.batch_id is None:
            self._finished.append((task.finished_at, task))
            return
        batch = self._batches.get(task.batch_id)
        if batch is not None and batch.finished_at is not None:
            self._finished.append((batch.finished_at, batch))

    async def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    async def get_batch(self, batch_id: str) -> BatchJob | None:
        return self._batches.get(batch_id)

    async def expire(self, now: float) -> list[Task]:
        cutoff = now - self.ttl
        expired: list[Task] = []
        while self._finished and self._finished[0][0] <= cutoff:
            _, record = self._finished.popleft()
            if isinstance(record, BatchJob):
                if self._batches.pop(record.id, None) is not None:
                    expired.extend(record.tasks)
            elif self._tasks.get(record.id) is record:
                expired.append(record)
        for task in expired:
            self._tasks.pop(task.id, None)
        return expired

    def __len__(self) -> int:
        return len(self._tasks)
