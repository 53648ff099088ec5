"""Typed results: tasks, pages, layout blocks and batches, read from the service's JSON."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, TypeVar

TERMINAL = frozenset({"completed", "failed", "cancelled"})

D = TypeVar("D")


def build(cls: type[D], data: dict[str, Any], **converted: Any) -> D:
    """The dataclass `cls` from the JSON object's fields of the same names, `converted` ones replaced.

    Fields the client does not know are ignored, so the server may add some; a missing
    required field is a TypeError (the clients turn it into an OcrError).
    """
    names = {field.name for field in fields(cls)}  # type: ignore[arg-type]
    values = {name: value for name, value in data.items() if name in names and value is not None}
    values.update(converted)
    return cls(**values)


@dataclass(frozen=True)
class Block:
    """One labelled region of a page; `bbox` is (x1, y1, x2, y2) in the page image's pixels."""

    label: str
    bbox: tuple[float, ...]
    text: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Block:
        return build(cls, data, bbox=tuple(data["bbox"]))


@dataclass(frozen=True)
class Page:
    """One page's result. `truncated` means it stopped at max_tokens (often a repetition loop)."""

    page: int
    markdown: str
    blocks: tuple[Block, ...]
    finish_reason: str
    truncated: bool
    width: int | None = None
    height: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Page:
        return build(cls, data, blocks=tuple(Block.from_json(block) for block in data["blocks"]))


@dataclass(frozen=True)
class Progress:
    pages_done: int
    pages_total: int


@dataclass(frozen=True)
class Task:
    """A task as `GET /ocr/{id}` shows it. `pages` is filled once the task has ended."""

    task_id: str
    status: str
    created_at: float
    updated_at: float
    progress: Progress
    result: str | None = None
    error: str | None = None
    url: str | None = None
    pages: tuple[Page, ...] = ()
    warnings: tuple[str, ...] = ()
    queue_position: int | None = None
    estimated_wait_s: float | None = None

    @property
    def done(self) -> bool:
        """Ended: completed, failed or cancelled."""
        return self.status in TERMINAL

    @property
    def ok(self) -> bool:
        return self.status == "completed"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Task:
        return build(
            cls,
            data,
            progress=build(Progress, data["progress"]),
            pages=tuple(Page.from_json(page) for page in data.get("pages") or ()),
            warnings=tuple(data.get("warnings") or ()),
        )


@dataclass(frozen=True)
class TaskProgress:
    """A `progress` event of `stream()`: where a running or waiting task stands."""

    task_id: str
    status: str
    pages_done: int
    pages_total: int
    queue_position: int | None = None
    estimated_wait_s: float | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskProgress:
        return build(cls, data)


@dataclass(frozen=True)
class BatchItem:
    url: str
    task_id: str
    status: str
    result: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Batch:
    """A URL batch as `GET /ocr/batch/{id}` shows it: counts, and one item per URL."""

    batch_task_id: str
    status: str
    total: int
    completed: int
    failed: int
    pending: int
    processing: int
    cancelled: int
    results: tuple[BatchItem, ...]
    created_at: float
    updated_at: float

    @property
    def done(self) -> bool:
        return self.status in TERMINAL

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Batch:
        return build(cls, data, results=tuple(build(BatchItem, item) for item in data["results"]))
