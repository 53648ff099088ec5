"""Server-Sent Events for one task: each page the moment it finishes, progress, and the end.

`GET /ocr/{task_id}/events` sends, in this order on every change of the task:
- `progress` (no id): `task_id`, `status`, `pages_done`, `pages_total`, and
  `queue_position`/`estimated_wait_s` while it waits; one on connect, then one
  whenever any of these changes (a burst of changes gives one event);
- `page` for every page that finished since, in the order pages finished; its `id` is
  the count of pages finished so far (1, 2, ...), its data the page as in
  `GET /ocr/{task_id}` plus `page`, `width` and `height`;
- then, once the task has ended, one event named after the end: `done` (completed),
  `failed` or `cancelled`, whose data is exactly what `GET /ocr/{task_id}` returns;
  then the stream ends.

A client that reconnects with `Last-Event-ID: k` gets pages k+1 onwards, none twice.
Every event is derived from the task's state (`Task.completion_order`, its version
counter), so a connection holds nothing but how far it has got.

Bounds: a stream ends when its task ends, and after `STREAM_SECONDS` in any case (the
client reconnects with its last id; browsers' EventSource does so by itself, after the
`retry` delay sent in the first event); at most `MAX_EVENT_STREAMS` are open at once
(more answer 503 with Retry-After); a comment line every 15 s keeps proxies from
closing an idle stream and lets the server notice a client that has gone.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException
from fastapi.sse import EventSourceResponse, ServerSentEvent
from pydantic import BaseModel

from ocr_service.api.models import ERROR_MEANINGS, ErrorDetail, PageView, TaskView
from ocr_service.api.routes import TASK_NOT_FOUND
from ocr_service.api.security import Owner
from ocr_service.api.state import Running
from ocr_service.core.ledger import WorkLedger
from ocr_service.core.tasks import Task, TaskStatus


def json_errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI error responses as JSON: `errors()` would document them with the route's
    own media type, text/event-stream, which they are not."""
    schema = ErrorDetail.model_json_schema()
    return {code: {"description": ERROR_MEANINGS[code], "content": {"application/json": {"schema": schema}}} for code in codes}


router = APIRouter(responses=json_errors(401, 422, 429))

MAX_EVENT_STREAMS = 256
STREAM_SECONDS = 300.0
WAITING_RECHECK_SECONDS = 1.0  # a waiting task's queue position moves with other tasks' work
RECONNECT_MS = 1000
END_EVENTS = {TaskStatus.COMPLETED: "done", TaskStatus.FAILED: "failed", TaskStatus.CANCELLED: "cancelled"}


class ProgressEvent(BaseModel):
    task_id: str
    status: str
    pages_done: int
    pages_total: int
    queue_position: int | None = None
    estimated_wait_s: float | None = None


async def owned_task(task_id: str, service: Running, owner: Owner) -> Task:
    """The caller's task; 404 for unknown, expired and other keys' tasks alike."""
    task = await service.ledger.get_task(task_id, owner)
    if task is None:
        raise HTTPException(404, TASK_NOT_FOUND.format(task_id))
    return task


OwnedTask = Annotated[Task, Depends(owned_task)]


async def stream_slot(service: Running) -> AsyncIterator[None]:
    """Hold one of the MAX_EVENT_STREAMS slots for as long as the response streams."""
    if not service.event_streams.take():
        raise HTTPException(
            503,
            f"too many open event streams ({MAX_EVENT_STREAMS}); retry later, or long-poll GET /ocr/{{task_id}}?wait=N",
            headers={"Retry-After": "5"},
        )
    try:
        yield
    finally:
        service.event_streams.give_back()


@router.get("/ocr/{task_id}/events", response_class=EventSourceResponse, responses=json_errors(404, 503))
async def task_events(
    task: OwnedTask,
    service: Running,
    _slot: Annotated[None, Depends(stream_slot)],
    last_event_id: Annotated[
        int | None, Header(ge=0, description="Resume after this many finished pages (the last `page` id received)")
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Stream the task as Server-Sent Events: `progress`, `page` (one per finished page, `id` =
    pages finished so far), then `done`, `failed` or `cancelled` with the task as GET /ocr/{task_id}
    returns it. Reconnect with `Last-Event-ID` to resume without repeats."""
    async for event in events_of(task, service.ledger, after=last_event_id or 0):
        yield event


async def events_of(task: Task, ledger: WorkLedger, after: int) -> AsyncIterator[ServerSentEvent]:
    """The task's events from the `after`-th finished page on, until it ends or STREAM_SECONDS pass."""
    deadline = time.monotonic() + STREAM_SECONDS
    sent = after
    last_progress: ProgressEvent | None = None
    while True:
        version, ended = task.version, task.status.terminal  # read first: nothing after this is missed
        progress = progress_of(task, ledger)
        if progress != last_progress:
            retry = RECONNECT_MS if last_progress is None else None
            yield ServerSentEvent(event="progress", raw_data=progress.model_dump_json(exclude_none=True), retry=retry)
            last_progress = progress
        while sent < len(task.completion_order):
            page = task.pages[task.completion_order[sent]]
            sent += 1
            if page is not None:
                yield ServerSentEvent(event="page", id=str(sent), raw_data=PageView(**page.as_dict()).model_dump_json(exclude_none=True))
        if ended:
            view = TaskView.of(task, ledger.queue_position(task), ledger.estimated_wait(task))
            yield ServerSentEvent(event=END_EVENTS[task.status], raw_data=view.model_dump_json(exclude_none=True))
            return
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return
        waiting = task.status is TaskStatus.PENDING
        await task.changed_since(version, min(remaining, WAITING_RECHECK_SECONDS) if waiting else remaining)


def progress_of(task: Task, ledger: WorkLedger) -> ProgressEvent:
    return ProgressEvent(
        task_id=task.id,
        status=task.status.value,
        pages_done=task.pages_done,
        pages_total=task.pages_total,
        queue_position=ledger.queue_position(task),
        estimated_wait_s=ledger.estimated_wait(task),
    )
