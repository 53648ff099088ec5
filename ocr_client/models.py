"""Typed results: tasks, pages, layout blocks and batches, read from the service's JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

TERMINAL = frozenset({"completed", "failed", "cancelled"})


@dataclass(frozen=True)
class Block:
    """One labelled region of a page; `bbox` is (x1, y1, x2, y2) in the page image's pixels."""

    label: str
    bbox: tuple[float, ...]
    text: str

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Block:
        return cls(label=data.get("label", ""), bbox=tuple(data.get("bbox", ())), text=data.get("text", ""))


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
        return cls(
            page=data["page"],
            markdown=data["markdown"],
            blocks=tuple(Block.from_json(block) for block in data.get("blocks", ())),
            finish_reason=data.get("finish_reason", ""),
            truncated=bool(data.get("truncated", False)),
            width=data.get("width"),
            height=data.get("height"),
        )


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
        progress = data.get("progress") or {}
        return cls(
            task_id=data["task_id"],
            status=data["status"],
            created_at=data.get("created_at", 0.0),
            updated_at=data.get("updated_at", 0.0),
            progress=Progress(progress.get("pages_done", 0), progress.get("pages_total", 0)),
            result=data.get("result"),
            error=data.get("error"),
            url=data.get("url"),
            pages=tuple(Page.from_json(page) for page in data.get("pages") or ()),
            warnings=tuple(data.get("warnings") or ()),
            queue_position=data.get("queue_position"),
            estimated_wait_s=data.get("estimated_wait_s"),
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
        return cls(
            task_id=data["task_id"],
            status=data["status"],
            pages_done=data.get("pages_done", 0),
            pages_total=data.get("pages_total", 0),
            queue_position=data.get("queue_position"),
            estimated_wait_s=data.get("estimated_wait_s"),
        )


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
        counts = {name: data.get(name, 0) for name in ("total", "completed", "failed", "pending", "processing", "cancelled")}
        return cls(
            batch_task_id=data["batch_task_id"],
            status=data["status"],
            results=tuple(
                BatchItem(item["url"], item["task_id"], item["status"], item.get("result"), item.get("error"))
                for item in data.get("results", ())
            ),
            created_at=data.get("created_at", 0.0),
            updated_at=data.get("updated_at", 0.0),
            **counts,
        )
