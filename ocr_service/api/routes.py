"""The task API: submit uploads and URLs, poll and cancel tasks and batches, read stats.

Routes translate HTTP to calls on the intake and the ledger and back; domain errors
rise to the handlers in `api/errors.py`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import (
    APIRouter,
    File,
    Form,
    HTTPException,
    Query,
    Request,
    UploadFile,
    status,
)
from fastapi.responses import JSONResponse

from ocr_service.api.middleware import note_task
from ocr_service.api.models import (
    BatchAccepted,
    BatchView,
    SyncBatchFailure,
    SyncBatchRequest,
    SyncBatchResponse,
    TaskAccepted,
    TaskView,
    UrlBatchRequest,
    UrlRequest,
    errors,
)
from ocr_service.api.security import Owner, Submitter
from ocr_service.api.state import ApiConfig, Config, Running
from ocr_service.core.status import ServiceStatus
from ocr_service.core.tasks import BatchJob

router = APIRouter(responses=errors(401, 422, 429))
SUBMIT_ERRORS = errors(400, 408, 413, 503)

TASK_NOT_FOUND = "task {} not found (unknown, or expired after OCR_TASK_TTL)"
BATCH_NOT_FOUND = "batch task {} not found (unknown, or expired after OCR_TASK_TTL)"

# Room for the multipart framing and form fields around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
MAX_LONG_POLL_SECONDS = 60



@router.post("/ocr", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted, responses=SUBMIT_ERRORS)
async def submit_upload(
    request: Request,
    service: Running,
    config: Config,
    caller: Submitter,
    file: Annotated[UploadFile, File(description="An image (PNG, JPEG, WebP, TIFF, BMP, GIF) or a PDF")],
    prompt: Annotated[str | None, Form(max_length=4000)] = None,
    temperature: Annotated[float | None, Form(ge=0, le=2)] = None,
    max_tokens: Annotated[int | None, Form(ge=1, le=131072)] = None,
) -> TaskAccepted:
    limit = config.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise HTTPException(413, f"file is larger than the {limit // (1024 * 1024)} MB upload limit")
    data = await file.read()
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    task = await service.intake.submit_upload(data, config.defaults.params(prompt, temperature, max_tokens), caller)
    note_task(request, task.id)
    return TaskAccepted(task_id=task.id, status=task.status.value)


@router.post("/ocr/url", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted, responses=SUBMIT_ERRORS)
async def submit_url(
    body: UrlRequest, request: Request, service: Running, config: Config, caller: Submitter
) -> TaskAccepted:
    params = config.defaults.params(body.prompt, body.temperature, body.max_tokens)
    task = await service.intake.submit_url(body.url, params, caller)
    note_task(request, task.id)
    return TaskAccepted(task_id=task.id, status=task.status.value)


@router.post("/ocr/url/batch", status_code=status.HTTP_202_ACCEPTED, response_model=BatchAccepted, responses=SUBMIT_ERRORS)
async def submit_url_batch(
    body: UrlBatchRequest, request: Request, service: Running, config: Config, caller: Submitter
) -> BatchAccepted:
    check_batch_length(len(body.urls), config)
    params = config.defaults.params(body.prompt, body.temperature, body.max_tokens)
    batch = await service.intake.submit_url_batch(body.urls, params, caller)
    note_task(request, batch.id)
    return BatchAccepted(batch_task_id=batch.id, status=batch.status.value)


@router.post(
    "/ocr_batch",
    response_model=SyncBatchResponse,
    responses={
        400: {"model": SyncBatchFailure, "description": "No input, or an input failed (the others' results are in its tasks)"},
        504: {"model": SyncBatchFailure, "description": "Not finished within OCR_SYNC_TIMEOUT; the work goes on"},
        **errors(408, 413, 503),
    },
)
async def ocr_batch(
    body: SyncBatchRequest, request: Request, service: Running, config: Config, caller: Submitter
) -> SyncBatchResponse | JSONResponse:
    """The synchronous batch API of earlier DeepSeek-OCR deployments, served through the same queue and batcher.

    As there: one string per input (a PDF's pages joined), 200 only when every input was
    read, and 400 naming the first input that was not (a URL that could not be fetched, a
    file under `pdfs` that is not a PDF). Added: every answer names its tasks, and past
    OCR_SYNC_TIMEOUT it answers 504: the work goes on and the results can be polled.
    """
    images, pdfs = body.input.images or [], body.input.pdfs or []
    if not images and not pdfs:
        raise HTTPException(400, "Either 'images' or 'pdfs' (or both) must be provided as lists.")
    check_batch_length(len(images) + len(pdfs), config)
    params = config.defaults.params(body.prompt, None, None)
    kinds = [None] * len(images) + ["pdf"] * len(pdfs)
    batch = await service.intake.submit_url_batch([*images, *pdfs], params, caller, required_kinds=kinds)
    note_task(request, batch.id)
    task_ids = [task.id for task in batch.tasks]
    if not await service.ledger.wait_for(batch.tasks, config.sync_timeout):
        detail = (
            f"not finished within {config.sync_timeout:g} s (OCR_SYNC_TIMEOUT); "
            "the work goes on: poll GET /ocr/batch/{batch_task_id} or each task"
        )
        return _sync_failure(504, detail, batch)
    failed = [task for task in batch.tasks if task.error is not None]
    if failed:
        return _sync_failure(400, failed[0].error or "", batch)
    return SyncBatchResponse(
        output=[task.result or "" for task in batch.tasks],
        errors=[task.error for task in batch.tasks],
        task_ids=task_ids,
        batch_task_id=batch.id,
    )


def _sync_failure(status_code: int, detail: str, batch: BatchJob) -> JSONResponse:
    body = SyncBatchFailure(
        detail=detail,
        errors=[task.error for task in batch.tasks],
        task_ids=[task.id for task in batch.tasks],
        batch_task_id=batch.id,
    )
    return JSONResponse(body.model_dump(), status_code=status_code)


@router.get("/ocr/batch/{batch_task_id}", response_model=BatchView, response_model_exclude_none=True, responses=errors(404))
async def get_batch(batch_task_id: str, service: Running, owner: Owner) -> BatchView:
    batch = await service.ledger.get_batch(batch_task_id, owner)
    if batch is None:
        raise HTTPException(404, BATCH_NOT_FOUND.format(batch_task_id))
    return BatchView.of(batch)


@router.delete("/ocr/batch/{batch_task_id}", response_model=BatchView, response_model_exclude_none=True, responses=errors(404))
async def cancel_batch(batch_task_id: str, service: Running, owner: Owner) -> BatchView:
    """Cancel the batch's unfinished items (running ones keep their finished pages); finished items stay."""
    batch = await service.ledger.get_batch(batch_task_id, owner)
    if batch is None:
        raise HTTPException(404, BATCH_NOT_FOUND.format(batch_task_id))
    await service.ledger.cancel_batch(batch)
    return BatchView.of(batch)


@router.get("/ocr/{task_id}", response_model=TaskView, response_model_exclude_none=True, responses=errors(404))
async def get_task(
    task_id: str,
    service: Running,
    owner: Owner,
    wait: Annotated[float, Query(ge=0, le=MAX_LONG_POLL_SECONDS, description="Seconds to wait for the task to end")] = 0,
) -> TaskView:
    ledger = service.ledger
    task = await ledger.get_task(task_id, owner)
    if task is None:
        raise HTTPException(404, TASK_NOT_FOUND.format(task_id))
    if wait and not task.status.terminal:
        await ledger.wait_for([task], wait)
        task = await ledger.get_task(task_id, owner) or task  # another front's task: read it again
    return TaskView.of(task, ledger.queue_position(task), ledger.estimated_wait(task))


@router.delete(
    "/ocr/{task_id}",
    response_model=TaskView,
    response_model_exclude_none=True,
    responses=errors(404, 409),
)
async def cancel_task(task_id: str, service: Running, owner: Owner) -> TaskView:
    """Cancel a waiting or running task: waiting pages never run, finished pages are kept
    (see `pages` and `warnings`); a task that has ended answers 409."""
    task = await service.ledger.get_task(task_id, owner)
    if task is None:
        raise HTTPException(404, TASK_NOT_FOUND.format(task_id))
    return TaskView.of(await service.ledger.cancel_anywhere(task))


@router.get("/stats", response_model=ServiceStatus)
async def get_stats(service: Running, _owner: Owner) -> ServiceStatus:
    """Task counts, the queue, batches, throughput and the engine's state."""
    return service.status()


def check_batch_length(count: int, config: ApiConfig) -> None:
    if count > config.max_batch_urls:
        raise HTTPException(
            422, f"a batch may hold at most {config.max_batch_urls} URLs (OCR_MAX_BATCH_URLS); got {count}"
        )
