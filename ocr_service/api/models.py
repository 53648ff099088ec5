"""Request and response bodies: the original service's shapes, plus fields added beside them (never renamed)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from ocr_service.core.tasks import BatchJob, Task, TaskStatus


class ErrorDetail(BaseModel):
    """Every error answer: a message, or (for a malformed request) FastAPI's list of field errors."""

    detail: str | list[dict[str, Any]]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` for these error status codes, so clients (and the fuzzer) know them."""
    return {code: {"model": ErrorDetail, "description": ERROR_MEANINGS[code]} for code in codes}


ERROR_MEANINGS = {
    400: "Bad request: an empty file, or a body that cannot be parsed",
    408: "The request body paused for longer than OCR_BODY_TIMEOUT",
    401: "No valid API key (when OCR_API_KEYS is set)",
    404: "Unknown, expired, or another key's",
    409: "The task has already ended",
    410: "Gone: the task's document is no longer kept (OCR_KEEP_DOCUMENTS_MB)",
    413: "Larger than the upload limit",
    422: "Invalid input",
    429: "Over the per-client rate limit (OCR_RATE_LIMIT) or task quota (OCR_MAX_STORED_TASKS_PER_CLIENT); see Retry-After",
    503: "At capacity or shutting down; see Retry-After",
}


class OcrOptions(BaseModel):
    prompt: str | None = Field(None, max_length=4000, description="Defaults to OCR_DEFAULT_PROMPT")
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=131072)


class UrlRequest(OcrOptions):
    url: str = Field(..., min_length=1, max_length=8192, examples=["https://example.com/page.png"])


class UrlBatchRequest(OcrOptions):
    urls: list[str] = Field(..., min_length=1, description="Capped by OCR_MAX_BATCH_URLS")


class SyncBatchInput(BaseModel):
    images: list[str] | None = None
    pdfs: list[str] | None = None


class SyncBatchRequest(BaseModel):
    """The synchronous `/ocr_batch` request: image and PDF URLs, one prompt."""

    input: SyncBatchInput
    prompt: str = Field("<image>\nFree OCR.", max_length=4000)


class SyncBatchResponse(BaseModel):
    """The synchronous `/ocr_batch` answer: one string per input (a PDF's pages joined), plus task ids and errors."""

    output: list[str]
    errors: list[str | None]
    task_ids: list[str]
    batch_task_id: str


class SyncBatchFailure(BaseModel):
    """`/ocr_batch` when not every input was read (400) or in time (504): the tasks go on.
    A request with no inputs at all (400) makes no tasks: only `detail` then."""

    detail: str
    errors: list[str | None] | None = None
    task_ids: list[str] | None = None
    batch_task_id: str | None = None


class TaskAccepted(BaseModel):
    task_id: str
    status: str


class BatchAccepted(BaseModel):
    batch_task_id: str
    status: str


class Progress(BaseModel):
    pages_done: int
    pages_total: int


class PageView(BaseModel):
    page: int
    markdown: str
    blocks: list[dict]
    finish_reason: str
    truncated: bool
    warnings: list[str] | None = None
    width: int = Field(description="Pixel width of the page image the engine read (the blocks' space)")
    height: int = Field(description="Pixel height of that image")


class TaskView(BaseModel):
    task_id: str
    status: str
    created_at: float
    updated_at: float
    result: str | None = None
    error: str | None = None
    url: str | None = None
    progress: Progress
    pages: list[PageView] | None = None
    warnings: list[str] | None = None
    queue_position: int | None = Field(None, description="Pages waiting ahead of this task (0 = next)")
    estimated_wait_s: float | None = Field(
        None, description="Seconds until this waiting task is likely done, from the measured throughput"
    )

    @classmethod
    def of(cls, task: Task, queue_position: int | None = None, estimated_wait_s: float | None = None) -> TaskView:
        finished = [page for page in task.pages if page is not None]
        return cls(
            task_id=task.id,
            status=task.status.value,
            created_at=task.created_at,
            updated_at=task.updated_at,
            result=task.result,
            error=task.error,
            url=task.url,
            progress=Progress(pages_done=task.pages_done, pages_total=task.pages_total),
            pages=[PageView(**page.as_dict()) for page in finished] if task.status.terminal and finished else None,
            warnings=task.warnings or None,
            queue_position=queue_position,
            estimated_wait_s=estimated_wait_s,
        )


class BatchItemView(BaseModel):
    url: str
    task_id: str
    status: str
    result: str | None = None
    error: str | None = None


class BatchView(BaseModel):
    batch_task_id: str
    status: str
    total: int
    completed: int
    failed: int
    pending: int
    processing: int
    cancelled: int
    results: list[BatchItemView]
    created_at: float
    updated_at: float

    @classmethod
    def of(cls, batch: BatchJob) -> BatchView:
        return cls(
            batch_task_id=batch.id,
            status=batch.status.value,
            total=len(batch.tasks),
            completed=batch.count(TaskStatus.COMPLETED),
            failed=batch.count(TaskStatus.FAILED),
            pending=batch.count(TaskStatus.PENDING),
            processing=batch.count(TaskStatus.PROCESSING),
            cancelled=batch.count(TaskStatus.CANCELLED),
            results=[
                BatchItemView(
                    url=task.url or "",
                    task_id=task.id,
                    status=task.status.value,
                    result=task.result,
                    error=task.error,
                )
                for task in batch.tasks
            ],
            created_at=batch.created_at,
            updated_at=batch.updated_at,
        )
