"""The seed's HTTP API: submit uploads and URLs, poll tasks and batches, read stats."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, HTTPException, Request, UploadFile, status
from fastapi.responses import JSONResponse

from ocr_service.api.models import (
    BatchAccepted,
    BatchView,
    TaskAccepted,
    TaskView,
    UrlBatchRequest,
    UrlRequest,
)
from ocr_service.core.service import OcrService
from ocr_service.documents import DocumentError
from ocr_service.documents.fetch import FetchError

router = APIRouter()

# Room for the multipart framing and form fields around the file itself.
MULTIPART_OVERHEAD = 64 * 1024


def get_service(request: Request) -> OcrService:
    return request.app.state.service


Service = Annotated[OcrService, Depends(get_service)]


@router.post("/ocr", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted)
async def submit_upload(
    service: Service,
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
        task = await service.submit_upload(data, service.params(prompt, temperature, max_tokens))
    except DocumentError as exc:
        raise HTTPException(422, str(exc)) from exc
    return TaskAccepted(task_id=task.id, status=task.status.value)


@router.post("/ocr/url", status_code=status.HTTP_202_ACCEPTED, response_model=TaskAccepted)
async def submit_url(body: UrlRequest, service: Service) -> TaskAccepted:
    try:
        task = service.submit_url(body.url, service.params(body.prompt, body.temperature, body.max_tokens))
    except FetchError as exc:
        raise HTTPException(422, str(exc)) from exc
    return TaskAccepted(task_id=task.id, status=task.status.value)


@router.post("/ocr/url/batch", status_code=status.HTTP_202_ACCEPTED, response_model=BatchAccepted)
async def submit_url_batch(body: UrlBatchRequest, service: Service) -> BatchAccepted:
    limit = service.config.max_batch_urls
    if len(body.urls) > limit:
        raise HTTPException(422, f"a batch may hold at most {limit} URLs (OCR_MAX_BATCH_URLS); got {len(body.urls)}")
    batch = service.submit_url_batch(body.urls, service.params(body.prompt, body.temperature, body.max_tokens))
    return BatchAccepted(batch_task_id=batch.id, status=batch.status.value)


@router.get("/ocr/batch/{batch_task_id}", response_model=BatchView, response_model_exclude_none=True)
async def get_batch(batch_task_id: str, service: Service) -> BatchView:
    batch = service.get_batch(batch_task_id)
    if batch is None:
        raise HTTPException(404, f"batch task {batch_task_id} not found (unknown, or expired after OCR_TASK_TTL)")
    return BatchView.of(batch)


@router.get("/ocr/{task_id}", response_model=TaskView, response_model_exclude_none=True)
async def get_task(task_id: str, service: Service) -> TaskView:
    task = service.get_task(task_id)
    if task is None:
        raise HTTPException(404, f"task {task_id} not found (unknown, or expired after OCR_TASK_TTL)")
    return TaskView.of(task, service.queue_position(task))


@router.get("/stats")
async def get_stats(service: Service) -> dict[str, object]:
    return service.stats()


@router.get("/health")
async def health() -> JSONResponse:
    return JSONResponse({"status": "ok"})
