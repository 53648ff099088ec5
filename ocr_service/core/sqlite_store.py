"""The SQLite task store: one service that keeps its tasks, and its waiting work, through a restart.

Every task is a row: its JSON record, and while it is unfinished its document's bytes.
An accepted task is committed before the service answers 202, so a `kill -9` right after
loses nothing accepted: on start, `restore` hands back the unfinished tasks with their
bytes (their pages not done yet run again) and finished tasks stay readable until their
TTL. Progress (pages done, ends) is written behind, coalesced, in a background task: a
crash can at most run a finished page again. SQLite in WAL mode, through `aiosqlite`
(its own thread), so the event loop never waits on the disk.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite

from ocr_service.core.records import batch_from_record, batch_record, task_from_record, task_record
from ocr_service.core.store import Dropped, Restored, Work
from ocr_service.core.tasks import BatchJob, Task, TaskStatus

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY,
    batch_id TEXT,
    status TEXT NOT NULL,
    client TEXT NOT NULL,
    finished_at REAL,
    record TEXT NOT NULL,
    document BLOB
);
CREATE INDEX IF NOT EXISTS tasks_by_batch ON tasks (batch_id);
CREATE INDEX IF NOT EXISTS tasks_by_end ON tasks (finished_at);
CREATE TABLE IF NOT EXISTS batches (id TEXT PRIMARY KEY, record TEXT NOT NULL);
"""


class SqliteTaskStore:
    keeps_work = True

    def __init__(self, path: str, ttl: float) -> None:
        self.path = path
        self.ttl = ttl
        self._db: aiosqlite.Connection | None = None
        self._dirty: dict[str, Task] = {}
        self._wake = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None

    async def open(self, take_over: Callable[[Work], Awaitable[None]]) -> None:
        self._db = await aiosqlite.connect(self.path)
        await self._db.execute("PRAGMA journal_mode=WAL")  # a crash of the process loses no commit
        await self._db.executescript(SCHEMA)
        await self._db.commit()
        self._writer = asyncio.create_task(self._write_behind(), name="sqlite-store-writer")

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("SqliteTaskStore.open() was not awaited")
        return self._db

    async def add(self, task: Task) -> None:
        await self.db.execute(*_insert(task))
        await self.db.commit()

    async def add_batch(self, batch: BatchJob) -> None:
        await self.db.execute("INSERT INTO batches (id, record) VALUES (?, ?)", (batch.id, json.dumps(batch_record(batch))))
        for task in batch.tasks:
            await self.db.execute(*_insert(task))
        await self.db.commit()

    async def keep_document(self, task: Task, data: bytes) -> None:
        await self.db.execute("UPDATE tasks SET document = ? WHERE id = ? AND finished_at IS NULL", (data, task.id))
        await self.db.commit()

    def save(self, task: Task) -> None:
        self._dirty[task.id] = task
        self._wake.set()

    async def get(self, task_id: str) -> Task | None:
        async with self.db.execute("SELECT record FROM tasks WHERE id = ?", (task_id,)) as rows:
            row = await rows.fetchone()
        return None if row is None else task_from_record(json.loads(row[0]))

    async def get_batch(self, batch_id: str) -> BatchJob | None:
        async with self.db.execute("SELECT record FROM batches WHERE id = ?", (batch_id,)) as rows:
            row = await rows.fetchone()
        if row is None:
            return None
        record = json.loads(row[0])
        tasks = [task for task_id in record["tasks"] if (task := await self.get(task_id)) is not None]
        return batch_from_record(record, tasks)

    async def expire(self, now: float) -> list[Dropped]:
        cutoff = now - self.ttl
        batches = await self._fetch(
            "SELECT batch_id FROM tasks WHERE batch_id IS NOT NULL GROUP BY batch_id "
            "HAVING COUNT(*) = COUNT(finished_at) AND MAX(finished_at) <= ?",
            (cutoff,),
        )
        batch_ids = [row[0] for row in batches]
        marks = ",".join("?" * len(batch_ids))
        where = "(batch_id IS NULL AND finished_at <= ?)" + (f" OR batch_id IN ({marks})" if batch_ids else "")
        rows = await self._fetch(f"SELECT id, status, client FROM tasks WHERE {where}", (cutoff, *batch_ids))
        dropped = [Dropped(task_id, TaskStatus(status), client) for task_id, status, client in rows]
        await self.db.execute(f"DELETE FROM tasks WHERE {where}", (cutoff, *batch_ids))
        if batch_ids:
            await self.db.execute(f"DELETE FROM batches WHERE id IN ({marks})", batch_ids)
        await self.db.commit()
        return dropped

    async def restore(self) -> Restored:
        unfinished = [
            (task_from_record(json.loads(record)), document)
            for record, document in await self._fetch("SELECT record, document FROM tasks WHERE finished_at IS NULL")
        ]
        finished = [
            Dropped(task_id, TaskStatus(status), client)
            for task_id, status, client in await self._fetch(
                "SELECT id, status, client FROM tasks WHERE finished_at IS NOT NULL"
            )
        ]
        if unfinished or finished:
            logger.info("restored %d unfinished and %d finished tasks from %s", len(unfinished), len(finished), self.path)
        return Restored(unfinished, finished)

    def on_cancel_request(self, cancel: Callable[[str], None]) -> None:
        pass  # one service: every unfinished task is its own

    async def request_cancel(self, task_id: str) -> None:
        raise RuntimeError("the SQLite store has no other front to ask")

    async def wait_ended(self, task_id: str) -> None:
        raise RuntimeError("the SQLite store has no other front to wait for")

    async def aclose(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._db is not None:
            await self._flush()
            await self._db.close()
            self._db = None

    async def _fetch(self, sql: str, parameters: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        async with self.db.execute(sql, parameters) as rows:
            return list(await rows.fetchall())

    async def _write_behind(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Exception:  # a full disk must not stop the service; the next change tries again
                logger.exception("could not write task changes to %s", self.path)

    async def _flush(self) -> None:
        dirty, self._dirty = self._dirty, {}
        if not dirty:
            return
        await self.db.executemany(
            "UPDATE tasks SET status = ?, finished_at = ?, record = ?, "
            "document = CASE WHEN ? THEN NULL ELSE document END WHERE id = ?",
            [
                (task.status.value, task.finished_at, json.dumps(task_record(task)), task.status.terminal, task.id)
                for task in dirty.values()
            ],
        )
        await self.db.commit()


def _insert(task: Task) -> tuple[str, tuple[Any, ...]]:
    return (
        "INSERT OR REPLACE INTO tasks (id, batch_id, status, client, finished_at, record) VALUES (?, ?, ?, ?, ?, ?)",
        (task.id, task.batch_id, task.status.value, task.client, task.finished_at, json.dumps(task_record(task))),
    )
