"""The Redis task store: several fronts (service processes) share tasks, and keep their work.

Any front answers for any task: a task submitted on one front can be polled, long-polled
and cancelled on another. Each front still runs its own queue and batcher over its own
engine: waiting work is not handed between running fronts, it belongs to the front that
accepted it. What is shared is the record, and the bytes of unfinished work:

- `ocr:task:{id}` the task's JSON record (what a poll returns); `ocr:doc:{id}` its
  document's bytes while it is unfinished; `ocr:batch:{id}` a URL batch.
- `ocr:front:{front}:tasks` the unfinished tasks a front holds, and `ocr:front:{front}`
  a heartbeat that expires `FRONT_TIMEOUT` seconds after the front stops beating.
- Channels: `ocr:ended` (a task ended: long polls on other fronts return) and
  `ocr:cancel` (another front asks the task's front to cancel it).

Finished records expire through Redis's own TTL (a batch's items with their batch). A
front that restarts with the same `front` name takes its unfinished work back; work of a
front that does not come back is taken over by another front once the dead front's
heartbeat has expired (each task claimed by exactly one front): its pages run again
there, from the kept bytes (URLs still downloading are fetched again). Progress is
written behind, coalesced: a crash can at most run a finished page again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import redis.asyncio as redis

from ocr_service.core.records import batch_from_record, batch_record, task_from_record, task_record
from ocr_service.core.store import Dropped, Restored, Work
from ocr_service.core.tasks import BatchJob, Task

logger = logging.getLogger(__name__)

FRONT_TIMEOUT = 15  # seconds without a heartbeat before a front's work may be taken over
BEAT_EVERY = 5  # seconds between a front's heartbeats (and its look for dead fronts' work)
ENDED, CANCEL, FRONTS = "ocr:ended", "ocr:cancel", "ocr:fronts"


def _text(value: bytes | str) -> str:
    """Redis answers bytes (this client does not decode: documents are binary)."""
    return value.decode() if isinstance(value, bytes) else value


def _task(task_id: str) -> str:
    return f"ocr:task:{task_id}"


def _doc(task_id: str) -> str:
    return f"ocr:doc:{task_id}"


def _batch(batch_id: str) -> str:
    return f"ocr:batch:{batch_id}"


def _holds(front: str) -> str:
    return f"ocr:front:{front}:tasks"


def _alive(front: str) -> str:
    return f"ocr:front:{front}"


class RedisTaskStore:
    keeps_work = True

    def __init__(self, url: str, ttl: float, front: str) -> None:
        self.url = url
        self.ttl = ttl
        self.front = front
        self._redis: redis.Redis = redis.Redis.from_url(url)
        self._dirty: dict[str, Task] = {}
        self._wake = asyncio.Event()
        self._batches: dict[str, BatchJob] = {}  # this front's batches with unfinished items
        self._ended: deque[tuple[float, Dropped]] = deque()  # (expiry, task) of tasks this front ended
        self._waiters: dict[str, list[asyncio.Event]] = {}
        self._cancel: Callable[[str], None] = lambda task_id: None
        self._take_over: Callable[[Work], Awaitable[None]] | None = None
        self._background: list[asyncio.Task[None]] = []

    async def open(self, take_over: Callable[[Work], Awaitable[None]]) -> None:
        """Connect, and start the writer, the listener and the heartbeat. `take_over` runs
        the work of dead fronts that this front claims."""
        await self._redis.ping()
        self._take_over = take_over
        await self._beat()
        self._background = [
            asyncio.create_task(self._write_behind(), name="redis-store-writer"),
            asyncio.create_task(self._listen(), name="redis-store-listener"),
            asyncio.create_task(self._heartbeat(), name="redis-store-heartbeat"),
        ]

    # -- writing ---------------------------------------------------------------

    async def add(self, task: Task) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_task(task.id), json.dumps(task_record(task)))
            pipe.sadd(_holds(self.front), task.id)
            await pipe.execute()

    async def add_batch(self, batch: BatchJob) -> None:
        self._batches[batch.id] = batch
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(_batch(batch.id), json.dumps(batch_record(batch)))
            for task in batch.tasks:
                pipe.set(_task(task.id), json.dumps(task_record(task)))
            pipe.sadd(_holds(self.front), *[task.id for task in batch.tasks])
            await pipe.execute()

    async def keep_document(self, task: Task, data: bytes) -> None:
        await self._redis.set(_doc(task.id), data)

    def save(self, task: Task) -> None:
        self._dirty[task.id] = task
        self._wake.set()

    async def _write_behind(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except redis.RedisError:
                logger.exception("could not write task changes to Redis; retrying with the next change")
                await asyncio.sleep(1)

    async def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        ended: list[Task] = []
        async with self._redis.pipeline(transaction=False) as pipe:
            for task in dirty.values():
                pipe.set(_task(task.id), json.dumps(task_record(task)))
                if task.status.terminal:
                    ended.append(task)
                    pipe.delete(_doc(task.id))
                    pipe.srem(_holds(self.front), task.id)
                    self._expire_later(pipe, task)
            for task in ended:
                pipe.publish(ENDED, task.id)
            await pipe.execute()

    def _expire_later(self, pipe: Any, task: Task) -> None:
        """Give an ended task (or its finished batch, items and all) its TTL, here and in Redis."""
        ttl = max(1, round(self.ttl))
        if task.batch_id is None:
            pipe.expire(_task(task.id), ttl)
            self._ended.append((time.time() + self.ttl, Dropped(task.id, task.status, task.client)))
            return
        batch = self._batches.get(task.batch_id)
        if batch is None or batch.finished_at is None:
            return  # items live as long as their batch
        del self._batches[batch.id]
        pipe.expire(_batch(batch.id), ttl)
        for item in batch.tasks:
            pipe.expire(_task(item.id), ttl)
            self._ended.append((time.time() + self.ttl, Dropped(item.id, item.status, item.client)))

    # -- reading ---------------------------------------------------------------

    async def get(self, task_id: str) -> Task | None:
        record = await self._redis.get(_task(task_id))
        return None if record is None else task_from_record(json.loads(record))

    async def get_batch(self, batch_id: str) -> BatchJob | None:
        record = await self._redis.get(_batch(batch_id))
        if record is None:
            return None
        batch = json.loads(record)
        found = await self._redis.mget([_task(task_id) for task_id in batch["tasks"]]) if batch["tasks"] else []
        return batch_from_record(batch, [task_from_record(json.loads(item)) for item in found if item is not None])

    async def expire(self, now: float) -> list[Dropped]:
        """Redis drops the records itself; this says which of this front's tasks went."""
        dropped = []
        while self._ended and self._ended[0][0] <= now:
            dropped.append(self._ended.popleft()[1])
        return dropped

    async def restore(self) -> Restored:
        return Restored(await self._load(sorted(await self._redis.smembers(_holds(self.front)))))

    async def _load(self, task_ids: Sequence[bytes | str]) -> Work:
        ids = [_text(i) for i in task_ids]
        if not ids:
            return []
        records = await self._redis.mget([_task(i) for i in ids])
        documents = await self._redis.mget([_doc(i) for i in ids])
        work = []
        for record, document in zip(records, documents, strict=True):
            if record is not None:
                task = task_from_record(json.loads(record))
                if not task.status.terminal:
                    work.append((task, document.encode() if isinstance(document, str) else document))
        return work

    # -- other fronts ----------------------------------------------------------

    def on_cancel_request(self, cancel: Callable[[str], None]) -> None:
        self._cancel = cancel

    async def request_cancel(self, task_id: str) -> None:
        await self._redis.publish(CANCEL, task_id)

    async def wait_ended(self, task_id: str) -> None:
        event = asyncio.Event()
        self._waiters.setdefault(task_id, []).append(event)
        try:
            task = await self.get(task_id)
            if task is None or task.status.terminal:  # ended before we listened
                return
            await event.wait()
        finally:
            waiting = self._waiters.get(task_id, [])
            if event in waiting:
                waiting.remove(event)
            if not waiting:
                self._waiters.pop(task_id, None)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(ENDED, CANCEL)
                    async for message in pubsub.listen():
                        if message["type"] != "message":
                            continue
                        task_id = _text(message["data"])
                        if _text(message["channel"]) == CANCEL:
                            self._cancel(task_id)
                            continue
                        for event in self._waiters.get(task_id, []):  # it ended
                            event.set()
            except redis.RedisError:
                logger.exception("lost the Redis subscription; subscribing again")
                await asyncio.sleep(1)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(BEAT_EVERY)
            try:
                await self._beat()
                await self._adopt_orphans()
            except redis.RedisError:
                logger.exception("could not reach Redis for the heartbeat")

    async def _beat(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(_alive(self.front), "1", ex=FRONT_TIMEOUT)
            pipe.sadd(FRONTS, self.front)
            await pipe.execute()

    async def _adopt_orphans(self) -> None:
        """Claim, one task at a time, the unfinished work of fronts whose heartbeat expired."""
        for raw in await self._redis.smembers(FRONTS):
            front = _text(raw)
            if front == self.front or await self._redis.exists(_alive(front)):
                continue
            claimed = [
                _text(task_id)
                for task_id in await self._redis.smembers(_holds(front))
                # SMOVE is atomic: of two fronts adopting at once, one gets each task.
                if await self._redis.smove(_holds(front), _holds(self.front), _text(task_id))
            ]
            await self._redis.srem(FRONTS, front)
            work = await self._load(claimed)
            if work and self._take_over is not None:
                logger.warning("front %s stopped beating; taking over its %d unfinished tasks", front, len(work))
                await self._take_over(work)

    async def aclose(self) -> None:
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(redis.RedisError):
            await self._flush()
            if not await self._redis.scard(_holds(self.front)):
                await self._redis.srem(FRONTS, self.front)
            # Without its heartbeat, what this front still holds is taken over by another, or
            # taken back when it starts again under the same name.
            await self._redis.delete(_alive(self.front))
        await self._redis.aclose()
