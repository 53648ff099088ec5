"""Tasks and batches as plain JSON records, for the stores that keep them outside the process.

A record holds everything a client can read of a task (status, timestamps, parameters,
finished pages, error, warnings) and who it belongs to; never the document itself, which
the stores keep beside it only while the task is unfinished.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from ocr_service.core.tasks import BatchJob, OcrParams, Task, TaskStatus
from ocr_service.output.pages import PageResult

_FIELDS = (
    "id", "url", "batch_id", "owner", "client", "required_kind", "page_selection", "created_at", "updated_at",
    "finished_at", "error",
)  # fmt: skip


def task_record(task: Task) -> dict[str, Any]:
    record: dict[str, Any] = {name: getattr(task, name) for name in _FIELDS}
    record.update(
        status=task.status.value,
        params=asdict(task.params),
        pages=[None if page is None else page.as_dict() for page in task.pages],
        warnings=list(task.warnings),
    )
    return record


def task_from_record(record: dict[str, Any]) -> Task:
    """The task a record describes, as a read-only copy (it is finished, or another front runs it)."""
    task = Task(OcrParams(**record["params"]), **{name: record[name] for name in _FIELDS})
    task.status = TaskStatus(record["status"])
    task.pages = [None if page is None else PageResult.from_dict(page) for page in record["pages"]]
    task.warnings = list(record["warnings"])
    task.updated_at = record["updated_at"]
    if task.status.terminal:
        task.finished.set()
    return task


def batch_record(batch: BatchJob) -> dict[str, Any]:
    return {"id": batch.id, "owner": batch.owner, "created_at": batch.created_at, "tasks": [t.id for t in batch.tasks]}


def batch_from_record(record: dict[str, Any], tasks: list[Task]) -> BatchJob:
    return BatchJob(tasks, owner=record["owner"], id=record["id"], created_at=record["created_at"])
