"""Where task and batch records are kept, and for how long: the interface and the memory store.

A finished task is kept `ttl` seconds after it ended, so a task that ran longer than
the TTL can still be read when it finishes. Waiting and running tasks never expire.
Items of a URL batch live as long as their batch, which expires a TTL after its last
item ended.

`TaskStore` is the interface the ledger keeps records through. Three stores implement it:
`MemoryTaskStore` here (the default: nothing to install, nothing survives a restart),
`SqliteTaskStore` (one service that keeps its tasks and waiting work through restarts)
and `RedisTaskStore` (several fronts sharing tasks). Reads and additions are async so a
store may live outside the process; `save` is called on every change and must not wait
(a store outside the process writes it behind, in order, latest state first).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ocr_service.core.tasks import BatchJob, Task, TaskStatus

Work = list[tuple[Task, bytes | None]]  # unfinished tasks, with their document bytes where kept


@dataclass(frozen=True)
class Dropped:
    """A task the store dropped after its TTL (or holds finished): what the ledger's counts need."""

    task_id: str
    status: TaskStatus
    client: str


@dataclass(frozen=True)
class Restored:
    """What a store kept through a restart: unfinished work (with its document bytes where
    kept) to run again, and the finished tasks still readable, for the counts."""

    unfinished: Work = field(default_factory=list)
    finished: list[Dropped] = field(default_factory=list)


class TaskStore(Protocol):
    # Whether unfinished work outlives the process: then shutdown leaves it to be resumed.
    keeps_work: bool

    async def open(self, take_over: Callable[[Work], Awaitable[None]]) -> None:
        """Connect and start; `take_over` runs unfinished work handed over at run time
        (another front's, where fronts share the store)."""
        ...

    async def add(self, task: Task) -> None: ...

    async def add_batch(self, batch: BatchJob) -> None:
        """Keep a batch and every one of its tasks."""
        ...

    async def keep_document(self, task: Task, data: bytes) -> None:
        """Keep an unfinished task's document bytes, so its work survives a restart (until it ends)."""
        ...

    def save(self, task: Task) -> None:
        """The task changed."""
        ...

    async def get(self, task_id: str) -> Task | None: ...

    async def get_batch(self, batch_id: str) -> BatchJob | None: ...

    async def expire(self, now: float) -> list[Dropped]:
        """Drop finished work ended more than the TTL before `now`; say what went."""
        ...

    async def restore(self) -> Restored:
        """At start: what this service had when it stopped."""
        ...

    def on_cancel_request(self, cancel: Callable[[str], None]) -> None:
        """Call `cancel(task_id)` when another front asks to cancel a task of this one."""
        ...

    async def request_cancel(self, task_id: str) -> None:
        """Ask the front that runs the task to cancel it."""
        ...

    async def wait_ended(self, task_id: str) -> None:
        """Return once a task that another front runs has ended."""
        ...

    async def aclose(self) -> None:
        """Write what is still to be written, and let go of connections."""
        ...


class MemoryTaskStore:
    """Records in this process: the live task objects themselves, until their TTL."""

    keeps_work = False

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._tasks: dict[str, Task] = {}
        self._batches: dict[str, BatchJob] = {}
        # Finished work in the order it finished: expiry looks only at its oldest end.
        self._finished: deque[tuple[float, Task | BatchJob]] = deque()

    async def open(self, take_over: Callable[[Work], Awaitable[None]]) -> None:
        pass

    async def add(self, task: Task) -> None:
        self._tasks[task.id] = task
        self.save(task)

    async def add_batch(self, batch: BatchJob) -> None:
        self._batches[batch.id] = batch
        for task in batch.tasks:
            self._tasks[task.id] = task
            self.save(task)

    async def keep_document(self, task: Task, data: bytes) -> None:
        pass  # the task holds its document while it runs; nothing outlives the process

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

    async def expire(self, now: float) -> list[Dropped]:
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
        return [Dropped(task.id, task.status, task.client) for task in expired]

    async def restore(self) -> Restored:
        return Restored()  # nothing outlives the process

    def on_cancel_request(self, cancel: Callable[[str], None]) -> None:
        pass  # one process: every unfinished task is the ledger's own

    async def request_cancel(self, task_id: str) -> None:
        raise RuntimeError("the memory store has no other front to ask")

    async def wait_ended(self, task_id: str) -> None:
        task = self._tasks.get(task_id)
        if task is not None:
            await task.finished.wait()

    async def aclose(self) -> None:
        pass

    def __len__(self) -> int:
        return len(self._tasks)
