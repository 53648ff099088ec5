"""Task and batch records: what a client submitted, where it stands, what came out.

A task is one document (an image, a multi-frame TIFF or a PDF); each of its pages is a
unit of work for the batcher. While the task waits it holds only the encoded document;
pages are decoded when their batch runs, and the document is dropped as soon as the
task ends (the ledger may hand it to the `DocumentKeeper`, for page images).

These are records. Their state changes only through `WorkLedger` (core/ledger.py),
which calls the `set_...` methods here and keeps the side effects of each change
(queue, counts, downloads) in one place.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

from ocr_service.documents import Document
from ocr_service.output.pages import PageResult, join_pages


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)


@dataclass(frozen=True)
class OcrParams:
    """What the engine is asked for one document; every page keeps its task's own."""

    prompt: str
    temperature: float
    max_tokens: int


@dataclass(frozen=True)
class Caller:
    """Who submits: the API key's fingerprint (a task is visible to its key alone; None
    when keys are off) and the name quotas and fair shares count under (the key, else
    the client's address)."""

    owner: str | None
    client: str

    @classmethod
    def anonymous(cls) -> Caller:
        return cls(None, "local")


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass(eq=False)
class Task:
    params: OcrParams
    url: str | None = None  # None for uploads
    batch_id: str | None = None
    owner: str | None = None  # the API key's fingerprint where keys are on
    client: str = "local"  # whose quota it counts against (see Caller)
    required_kind: str | None = None  # "pdf" where the client said the URL is a PDF
    page_selection: list[int] | None = None  # 0-based pages to read; None = every page
    id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)
    updated_at: float = 0.0
    finished_at: float | None = None
    status: TaskStatus = TaskStatus.PENDING
    document: Document | None = None
    pages: list[PageResult | None] = field(default_factory=list)
    error: str | None = None
    warnings: list[str] = field(default_factory=list)
    finished: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set when terminal
    # -- change notification (event streams): see `changed_since` ----------------
    version: int = 0  # bumped by every change
    completion_order: list[int] = field(default_factory=list)  # page indexes, in the order they finished
    _changed: asyncio.Event = field(default_factory=asyncio.Event, repr=False)  # set (and replaced) on a change

    def __post_init__(self) -> None:
        self.updated_at = self.created_at

    @property
    def wanted(self) -> list[int]:
        """The 0-based pages this task reads."""
        return list(range(len(self.pages))) if self.page_selection is None else self.page_selection

    @property
    def pages_total(self) -> int:
        return len(self.wanted)

    @property
    def pages_done(self) -> int:
        return sum(page is not None for page in self.pages)

    @property
    def pages_left(self) -> list[int]:
        """The 0-based pages wanted and not done yet."""
        return [index for index in self.wanted if self.pages[index] is None]

    @property
    def result(self) -> str | None:
        if self.status is not TaskStatus.COMPLETED:
            return None
        return join_pages([page.markdown for page in self.pages if page is not None])

    # -- changes, made by the ledger only ----------------------------------------

    def set_document(self, document: Document) -> None:
        self.document = document
        self.pages = [None] * document.page_count
        self._touch()

    def set_processing(self) -> None:
        self.status = TaskStatus.PROCESSING
        self._touch()

    def set_page(self, index: int, page: PageResult) -> None:
        self.pages[index] = page
        self.completion_order.append(index)
        self._touch()

    def add_warning(self, warning: str) -> None:
        if warning not in self.warnings:
            self.warnings.append(warning)
        self._touch()

    def set_ended(self, status: TaskStatus, error: str | None = None) -> None:
        self.status = status
        self.error = error
        self.finished_at = time.time()
        self.document = None  # the encoded bytes are no longer needed
        self._touch()
        self.finished.set()

    def _touch(self) -> None:
        self.updated_at = time.time()
        self.version += 1
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed_since(self, version: int, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a change after `version`; True if there was one.

        A reader notes `version`, reads the record, then waits here: a change made
        between the read and the wait is not missed, since the version has moved.
        """
        if self.version != version:
            return True
        try:
            async with asyncio.timeout(timeout):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True


@dataclass(eq=False)
class BatchJob:
    """A URL batch: its items are ordinary tasks; its status is derived from theirs."""

    tasks: list[Task]
    owner: str | None = None
    id: str = field(default_factory=new_id)
    created_at: float = field(default_factory=time.time)

    def count(self, status: TaskStatus) -> int:
        return sum(task.status is status for task in self.tasks)

    @property
    def status(self) -> TaskStatus:
        """Pending/processing while any item is; then failed if all failed, else completed."""
        if any(not task.status.terminal for task in self.tasks):
            if any(task.status is not TaskStatus.PENDING for task in self.tasks):
                return TaskStatus.PROCESSING
            return TaskStatus.PENDING
        if all(task.status is TaskStatus.FAILED for task in self.tasks):
            return TaskStatus.FAILED
        if all(task.status is TaskStatus.CANCELLED for task in self.tasks):
            return TaskStatus.CANCELLED
        return TaskStatus.COMPLETED

    @property
    def updated_at(self) -> float:
        return max([self.created_at, *(task.updated_at for task in self.tasks)])

    @property
    def finished_at(self) -> float | None:
        """When the last item ended, or None while any is still running."""
        if any(not task.status.terminal for task in self.tasks):
            return None
        return max([self.created_at, *(task.finished_at or 0.0 for task in self.tasks)])
