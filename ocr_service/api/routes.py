"""The seed's HTTP API: submit uploads and URLs, poll and cancel tasks and batches, read stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import (
    APIRouter,
    Depends,
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
    SyncBatchRequest,
    SyncBatchResponse,
    TaskAccepted,
    TaskView,
    UrlBatchRequest,
    UrlRequest,
    errors,
)
from ocr_service.api.security import Owner
from ocr_service.core.service import CancelRefused, OcrService
from ocr_service.documents import DocumentError
from ocr_service.documents.fetch import FetchError

router = APIRouter(responses=errors(401, 422, 429))
SUBMIT_ERRORS = errors(400, 413, 503)

TASK_NOT_FOUND = "task {} not found (unknown, or expired after OCR_TASK_TTL)"
BATCH_NOT_FOUND = "batch task {} not found (unknown, or expired after OCR_TASK_TTL)"

# Room for the multipart framing and form fields around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
MAX_LONG_POLL_SECONDS = 60


def get_service(request: Request) -> OcrService:
    return request.app.state.service


Service = Annotated[OcrService, Depends(get_service)]


@router.post("/ocr", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted, responses=SUBMIT_ERRORS)
async def submit_upload(
    request: Request,
    service: Service,
    owner: Owner,
    file: Annotated[UploadFile, File(description="An image (PNG, JPEG, WebP, TIFF, BMP, GIF) or a PDF")],
    prompt: Annotated[str | None, Form(max_length=4000)] = None,
    temperature: Annotated[float | None, Form(ge=0, le=2)] = None,
    max_tokens: Annotated[int | None, Form(ge=1, le=131072)] = None,
) -> TaskAccepted:
    limit = service.config.max_upload_bytes
    if file.size is not None and file.size > limit:
        raise HTTPException(413, f"file is larger than the {limit // (1024 * 1024)} MB upload limit")
    data = await file.read()
    if not data:
        raise HTTPException(400, "the uploaded file is empty")
    try:
        task = await service.submit_upload(data, service.params(prompt, temperature, max_tokens), owner)
    except DocumentError as exc:
        raise HTTPException(422, str(exc)) from exc
    note_task(request, task.id)
    return TaskAccepted(task_id=task.id, status=task.status.value)


@router.post("/ocr/url", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted, responses=SUBMIT_ERRORS)
async def submit_url(body: UrlRequest, request: Request, service: Service, owner: Owner) -> TaskAccepted:
    try:
        task = service.submit_url(body.url, service.params(body.prompt, body.temperature, body.max_tokens), owner)
    except FetchError as exc:
        raise HTTPException(422, str(exc)) from exc
    note_task(request, task.id)
    return TaskAccepted(task_id=task.id, status=task.status.value)


@router.post("/ocr/url/batch", status_code=status.HTTP_202_ACCEPTED, response_model=BatchAccepted, responses=SUBMIT_ERRORS)
async def submit_url_batch(body: UrlBatchRequest, request: Request, service: Service, owner: Owner) -> BatchAccepted:
    limit = service.config.max_batch_urls
    if len(body.urls) > limit:
        raise HTTPException(422, f"a batch may hold at most {limit} URLs (OCR_MAX_BATCH_URLS); got {len(body.urls)}")
    batch = service.submit_url_batch(body.urls, service.params(body.prompt, body.temperature, body.max_tokens), owner)
    note_task(request, batch.id)
    return BatchAccepted(batch_task_id=batch.id, status=batch.status.value)


@router.post("/ocr_batch", response_model=SyncBatchResponse, responses={504: {"description": "Not finished in time"}, **SUBMIT_ERRORS})
async def ocr_batch(body: SyncBatchRequest, request: Request, service: Service, owner: Owner) -> SyncBatchResponse | JSONResponse:
    """Seed 000's synchronous API, served through the same queue and batcher.

    Past OCR_SYNC_TIMEOUT it answers 504 with the task ids: the work goes on and the
    results can be polled, so nothing is lost.
    """
    urls = [*(body.input.images or []), *(body.input.pdfs or [])]
    if not urls:
        raise HTTPException(422, "input.images or input.pdfs must list at least one URL")
    limit = service.config.max_batch_urls
    if len(urls) > limit:
        raise HTTPException(422, f"a batch may hold at most {limit} URLs (OCR_MAX_BATCH_URLS); got {len(urls)}")
    batch = service.submit_url_batch(urls, service.params(body.prompt, None, None), owner)
    note_task(request, batch.id)
    task_ids = [task.id for task in batch.tasks]
    if not await service.wait_for(batch.tasks, service.config.sync_timeout):
        return JSONResponse(
            {
                "detail": f"not finished within {service.config.sync_timeout:g} s (OCR_SYNC_TIMEOUT); "
                "the work goes on: poll GET /ocr/batch/{batch_task_id} or each task",
                "batch_task_id": batch.id,
                "task_ids": task_ids,
            },
            status_code=504,
        )
    return SyncBatchResponse(
        output=[task.result or "" for task in batch.tasks],
        errors=[task.error for task in batch.tasks],
        task_ids=task_ids,
        batch_task_id=batch.id,
    )


@router.get("/ocr/batch/{batch_task_id}", response_model=BatchView, response_model_exclude_none=True, responses=errors(404))
async def get_batch(batch_task_id: str, service: Service, owner: Owner) -> BatchView:
    batch = service.get_batch(batch_task_id, owner)
    if batch is None:
        raise HTTPException(404, BATCH_NOT_FOUND.format(batch_task_id))
    return BatchView.of(batch)


@router.delete("/ocr/batch/{batch_task_id}", response_model=BatchView, response_model_exclude_none=True, responses=errors(404))
async def cancel_batch(batch_task_id: str, service: Service, owner: Owner) -> BatchView:
    """Cancel the batch's waiting items; running and finished ones are left as they are."""
    batch = service.cancel_batch(batch_task_id, owner)
    if batch is None:
        raise HTTPException(404, BATCH_NOT_FOUND.format(batch_task_id))
    return BatchView.of(batch)


@router.get("/ocr/{task_id}", response_model=TaskView, response_model_exclude_none=True, responses=errors(404))
async def get_task(
    task_id: str,
    service: Service,
    owner: Owner,
    wait: Annotated[float, Query(ge=0, le=MAX_LONG_POLL_SECONDS, description="Seconds to wait for the task to end")] = 0,
) -> TaskView:
    task = service.get_task(task_id, owner)
    if task is None:
        raise HTTPException(404, TASK_NOT_FOUND.format(task_id))
    if wait:
        await service.wait_for([task], wait)
    return TaskView.of(task, service.queue_position(task), service.estimated_wait(task))


@router.delete(
    "/ocr/{task_id}",
    response_model=TaskView,
    response_model_exclude_none=True,
    responses=errors(404, 409),
)
async def cancel_task(task_id: str, service: Service, owner: Owner) -> TaskView:
    """Cancel a waiting task and free its place in the queue; a running one answers 409."""
    try:
        task = service.cancel_task(task_id, owner)
    except CancelRefused as exc:
        raise HTTPException(409, str(exc)) from exc
    if task is None:
        raise HTTPException(404, TASK_NOT_FOUND.format(task_id))
    return TaskView.of(task)


@router.get("/stats")
async def get_stats(service: Service, _owner: Owner) -> dict[str, object]:
    return service.stats()
