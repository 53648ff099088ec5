"""The in-memory task store, with a time-to-live that counts from when work finished.

Waiting and running tasks never expire. A finished task is kept `ttl` seconds after
it ended, so a task that ran longer than the TTL can still be read when it finishes.
Items of a URL batch live as long as their batch, which expires a TTL after its last
item ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

from ocr_service.core.tasks import BatchJob, Task, TaskStatus

logger = logging.getLogger(__name__)


class TaskStore:
    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._tasks: dict[str, Task] = {}
        self._batches: dict[str, BatchJob] = {}
        self.expired_total = 0
        self.expired_by_status: Counter[TaskStatus] = Counter()  # keeps outcome counts monotonic for /metrics

    def add(self, task: Task) -> None:
        self._tasks[task.id] = task

    def add_batch(self, batch: BatchJob) -> None:
        self._batches[batch.id] = batch
        for task in batch.tasks:
            self.add(task)

    def get(self, task_id: str) -> Task | None:
        return self._tasks.get(task_id)

    def get_batch(self, batch_id: str) -> BatchJob | None:
        return self._batches.get(batch_id)

    def status_counts(self) -> Counter[TaskStatus]:
        return Counter(task.status for task in self._tasks.values())

    def unfinished(self) -> list[Task]:
        return [task for task in self._tasks.values() if not task.status.terminal]

    def __len__(self) -> int:
        return len(self._tasks)

    def expire(self, now: float | None = None) -> int:
        """Drop finished work older than the TTL; return how many tasks went."""
        cutoff = (time.time() if now is None else now) - self.ttl
        removed = 0
        for batch_id, batch in list(self._batches.items()):
            finished = batch.finished_at
            if finished is not None and finished <= cutoff:
                del self._batches[batch_id]
                for task in batch.tasks:
                    self._tasks.pop(task.id, None)
                self.expired_total += len(batch.tasks)
                self.expired_by_status.update(task.status for task in batch.tasks)
                removed += len(batch.tasks)
        expired = [
            task_id
            for task_id, task in self._tasks.items()
            if task.batch_id is None and task.finished_at is not None and task.finished_at <= cutoff
        ]
        for task_id in expired:
            self.expired_by_status[self._tasks.pop(task_id).status] += 1
        self.expired_total += len(expired)
        return removed + len(expired)

    async def run_cleanup(self, interval: float) -> None:
        """Expire old work every `interval` seconds, for the life of the app."""
        while True:
            await asyncio.sleep(interval)
            removed = self.expire()
            if removed:
                logger.info("expired %d finished tasks", removed)
