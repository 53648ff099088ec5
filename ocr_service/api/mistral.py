"""`POST /v1/ocr`: Mistral's OCR API, so the `mistralai` SDK, LiteLLM's `/ocr` and LibreChat's OCR can use this service.

The shapes are those of `mistralai` 3.x (`client.ocr.process`): a `document_url` (a PDF or
image by https URL or `data:` URI) or an `image_url`, optional `pages` (0-based, a list or
"0,2-4"), and an answer of pages with Markdown, images (`img-K.png` ids, pixel corners,
PNG crops on request), dimensions and typed blocks (`output/mistral.py` maps DeepSeek's
labels onto Mistral's block types).

The document goes through the same intake, queue and batcher as every other upload, with
a grounding prompt so layout exists; the call waits like `POST /ocr_batch`, at most
OCR_SYNC_TIMEOUT, then answers 504 naming the task, which goes on and can be polled. A
`data:` URI is an upload (base64 decoded off the event loop, under the upload limit); an
https URL is fetched by the service's own safe fetcher (SSRF checks, size and time limits).
Only the selected pages are read (the task's page selection). Crops are cut, as the
page-image API cuts them, from pages drawn again by
the decoder pool (the same sandboxed decode the engine's pages came from).

Errors: a 422 carries FastAPI's `detail` list (`loc`, `msg`, `type`), which the SDK parses
into `HTTPValidationError`; every error also carries Mistral's `object`, `message`, `type`,
`param` and `code` (the SDK raises `SDKError` for the other codes, with this body).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import urllib.parse
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field

from ocr_service.api.middleware import note_task
from ocr_service.api.models import ERROR_MEANINGS, ErrorDetail
from ocr_service.api.security import Submitter
from ocr_service.api.state import ApiConfig, Config, Running, Services
from ocr_service.core.tasks import OcrParams, TaskStatus
from ocr_service.deepseek import GROUNDING_TAG, PROMPTS
from ocr_service.documents import Document, DocumentError, open_document, sniff_media_type
from ocr_service.documents.fetch import FetchError
from ocr_service.output.mistral import MistralOptions, MistralPage, PageImage, mistral_page
from ocr_service.output.page_images import crop_block
from ocr_service.output.pages import PageResult

IMAGE_DPI = 72  # an image has no rendering resolution: one pixel is one point, as in PDF


# -- the request ----------------------------------------------------------------------


class DocumentURLChunk(BaseModel):
    type: Literal["document_url"]
    document_url: str = Field(..., min_length=1, description="An https URL or a data: URI (base64) of a PDF or image")
    document_name: str | None = None


class ImageURL(BaseModel):
    url: str = Field(..., min_length=1)
    detail: str | None = None


class ImageURLChunk(BaseModel):
    type: Literal["image_url"]
    image_url: str | ImageURL = Field(..., description="An https URL or a data: URI (base64) of an image")


class FileChunk(BaseModel):
    type: Literal["file"]
    file_id: str


class OCRRequest(BaseModel):
    """Mistral's OCRRequest. Fields this service cannot honour are refused (422) when set."""

    model: str | None = Field(None, description="Accepted and ignored: the service runs its own engine")
    document: Annotated[DocumentURLChunk | ImageURLChunk | FileChunk, Field(discriminator="type")]
    pages: list[Annotated[int, Field(ge=0)]] | Annotated[str, Field(max_length=10_000)] | None = Field(
        None, description="0-based pages: a list, or a string of numbers and ranges such as '0,2-4'"
    )
    include_image_base64: bool | None = None
    image_limit: int | None = Field(None, ge=0)
    image_min_size: int | None = Field(None, ge=0)
    bbox_annotation_format: dict[str, Any] | None = Field(None, description="Not supported (422 when set)")
    document_annotation_format: dict[str, Any] | None = Field(None, description="Not supported (422 when set)")
    document_annotation_prompt: str | None = Field(None, description="Not supported (422 when set)")
    table_format: Literal["markdown", "html"] | None = Field(None, description="'html' only; 'markdown' is refused")
    extract_header: bool | None = None
    extract_footer: bool | None = None
    include_blocks: bool | None = True
    confidence_scores_granularity: Literal["word", "page", "block"] | None = Field(
        None, description="Not supported (422 when set)"
    )


# -- the answer -----------------------------------------------------------------------


class OCRImageObject(BaseModel):
    id: str
    top_left_x: int | None
    top_left_y: int | None
    bottom_right_x: int | None
    bottom_right_y: int | None
    image_base64: str | None = Field(None, description="data:image/png;base64,... when include_image_base64")


class OCRPageDimensions(BaseModel):
    dpi: int
    height: int
    width: int


class OCRTableObject(BaseModel):
    id: str
    content: str
    format: Literal["markdown", "html"]


class OCRBlock(BaseModel):
    type: str = Field(description="text, title, table, image, equation, caption, header, footer, list, code, references, signature")
    top_left_x: int
    top_left_y: int
    bottom_right_x: int
    bottom_right_y: int
    content: str
    image_id: str | None = None
    table_id: str | None = None


class OCRPageObject(BaseModel):
    index: int = Field(description="0-based page of the document")
    markdown: str
    images: list[OCRImageObject]
    dimensions: OCRPageDimensions | None
    tables: list[OCRTableObject] = []
    header: str | None = None
    footer: str | None = None
    blocks: list[OCRBlock] | None = None


class OCRUsageInfo(BaseModel):
    pages_processed: int
    doc_size_bytes: int | None = None


class OCRResponse(BaseModel):
    pages: list[OCRPageObject]
    model: str
    usage_info: OCRUsageInfo


class MistralErrorBody(ErrorDetail):
    """An error: the service's `detail`, plus Mistral's fields (absent only on answers given
    before routing: the body limit, the rate limit, a full queue)."""

    object: Literal["error"] | None = None
    message: str | None = None
    type: str | None = None
    param: str | None = None
    code: str | None = None
    task_id: str | None = Field(None, description="The task, which goes on (504) or failed (500)")


# -- errors in Mistral's shape ----------------------------------------------------------

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    408: "request_timeout",
    409: "conflict",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "ocr_failed",
    503: "service_unavailable",
    504: "timeout",
}


def mistral_error(status: int, detail: str | list[dict[str, Any]], headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    """An error answer the SDK understands, keeping the service's `detail`."""
    if isinstance(detail, list):
        message = "; ".join(f"{'.'.join(str(part) for part in error.get('loc', ()))}: {error.get('msg', '')}" for error in detail)
    else:
        message = detail
    body = {
        "object": "error",
        "message": message,
        "type": _ERROR_TYPES.get(status, "error"),
        "param": None,
        "code": str(status),
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status_code=status, headers=headers)


class MistralRoute(APIRoute):
    """Errors raised while serving these routes are answered by the app's own handler (so
    status codes, Retry-After and metrics stay in one place, `api/errors.py`), then put in
    Mistral's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        serve = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await serve(request)
            except Exception as exc:
                handler = _app_handler(request.app, exc)
                if handler is None:
                    raise
                answer = await handler(request, exc)
                detail = json.loads(answer.body).get("detail", "")
                if answer.status_code == 422 and isinstance(detail, str):  # DocumentError, FetchError
                    detail = [{"type": "value_error", "loc": ["body", "document"], "msg": detail}]
                keep = {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")}
                return mistral_error(answer.status_code, detail, headers=keep)

        return handle


def _app_handler(app: FastAPI, exc: Exception) -> Any:
    """The app's handler for `exc`, short of the catch-all one for unexpected errors."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in app.exception_handlers:
            return app.exception_handlers[cls]
    return None


def invalid(loc: tuple[str | int, ...], message: str, value: Any = None) -> RequestValidationError:
    """A 422 naming the offending field, as FastAPI's own validation errors do."""
    error: dict[str, Any] = {"type": "value_error", "loc": ("body", *loc), "msg": message}
    if value is not None:
        error["input"] = value
    return RequestValidationError([error])


# -- the route ----------------------------------------------------------------------------

router = APIRouter(route_class=MistralRoute, tags=["mistral"])
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": MistralErrorBody, "description": meaning or ERROR_MEANINGS[code]}
    for code, meaning in {
        400: "The body is not JSON",
        401: "",
        408: "",
        409: "The task was cancelled (DELETE /ocr/{task_id}) before it finished",
        413: "",
        422: "",
        429: "",
        500: "The OCR of the document failed; `detail` says why and `task_id` names the task",
        503: "",
        504: "Not finished within OCR_SYNC_TIMEOUT; the task goes on: poll GET /ocr/{task_id}",
    }.items()
}


@router.post("/v1/ocr", response_model=OCRResponse, response_model_exclude_none=True, responses=_ERRORS)
async def ocr(body: OCRRequest, request: Request, service: Running, config: Config, caller: Submitter) -> OCRResponse | JSONResponse:
    """Mistral's OCR: the document's pages as Markdown with images and layout blocks, when done."""
    _refuse_unsupported(body)
    ranges = parse_pages(body.pages)
    service.ledger.check_room(caller.client)
    data = await _read_document(body.document, service, config, caller.client)
    selected = None
    if ranges is not None:  # checked before the document is queued
        document = await _open(data, service)
        selected = expand_pages(ranges, document.page_count)
    task = await service.intake.submit_upload(data, _params(config), caller, pages=selected)
    note_task(request, task.id)
    if not await service.ledger.wait_for([task], config.sync_timeout):
        detail = f"not finished within {config.sync_timeout:g} s (OCR_SYNC_TIMEOUT); the work goes on: poll GET /ocr/{task.id}"
        return mistral_error(504, detail, task_id=task.id)
    if task.status is TaskStatus.CANCELLED:
        return mistral_error(409, f"task {task.id} was cancelled before it finished", task_id=task.id)
    if task.status is not TaskStatus.COMPLETED:
        return mistral_error(500, task.error or "the OCR failed", task_id=task.id)
    pages = [(index, page) for index in task.wanted if (page := task.pages[index]) is not None]
    return OCRResponse(
        pages=await _answer_pages(pages, body, data, service),
        model=service.batcher.engine.name,
        usage_info=OCRUsageInfo(pages_processed=task.pages_total, doc_size_bytes=len(data)),
    )


def _refuse_unsupported(body: OCRRequest) -> None:
    unsupported = {
        "bbox_annotation_format": "structured annotations need a language model this service does not run",
        "document_annotation_format": "structured annotations need a language model this service does not run",
        "document_annotation_prompt": "structured annotations need a language model this service does not run",
        "confidence_scores_granularity": "the engines report no confidence scores",
    }
    for field, why in unsupported.items():
        if getattr(body, field) is not None:
            raise invalid((field,), f"not supported: {why}; leave it out")
    if body.table_format == "markdown":
        raise invalid(("table_format",), "only 'html' is supported: the model writes tables as HTML", "markdown")
    if isinstance(body.document, FileChunk):
        raise invalid(("document", "file_id"), "uploaded files are not supported: send a document_url or image_url (a data: URI works)")


def _params(config: ApiConfig) -> OcrParams:
    """The service's default prompt where it asks for layout (grounding), else DeepSeek's
    grounded Markdown prompt: Mistral's answer has images and blocks, which need boxes."""
    prompt = config.defaults.prompt if GROUNDING_TAG in config.defaults.prompt else PROMPTS["markdown"]
    return config.defaults.params(prompt, None, None)


async def _read_document(
    chunk: DocumentURLChunk | ImageURLChunk | FileChunk, service: Services, config: ApiConfig, client: str
) -> bytes:
    """The document's bytes: a data: URI decoded (within the upload limit), a URL fetched."""
    if isinstance(chunk, DocumentURLChunk):
        url, loc = chunk.document_url, ("document", "document_url")
    elif isinstance(chunk, ImageURLChunk):
        url = chunk.image_url if isinstance(chunk.image_url, str) else chunk.image_url.url
        loc = ("document", "image_url")
    else:  # refused before
        raise invalid(("document",), "unsupported document type")
    if url[:5].lower() == "data:":
        try:
            return await asyncio.to_thread(decode_data_uri, url, config.max_upload_bytes)
        except ValueError as exc:
            raise invalid(loc, str(exc)) from None
    try:
        return await service.intake.fetch(url, client)
    except FetchError as exc:
        raise invalid(loc, f"{url[:200]}: {exc}") from None


_WHITESPACE = re.compile(r"\s+")


def decode_data_uri(uri: str, max_bytes: int) -> bytes:
    """The bytes of a `data:` URI (base64, or percent-encoded); ValueError if malformed, 413
    past `max_bytes`, checked on the encoded length before anything is decoded. Blocking.

    >>> decode_data_uri("data:image/png;base64,aGk=", 10), decode_data_uri("data:,h%69", 10)
    (b'hi', b'hi')
    """
    header, comma, payload = uri.partition(",")
    if not comma:
        raise ValueError("a data: URI needs a comma before its data")
    limit = f"the {max_bytes / (1024 * 1024):g} MB upload limit (OCR_MAX_IMAGE_SIZE_MB)"
    if header.lower().endswith(";base64"):
        payload = _WHITESPACE.sub("", payload)
        if len(payload) > 4 * -(-max_bytes // 3):
            raise HTTPException(413, f"the document is larger than {limit}")
        try:
            data = base64.b64decode(payload + "=" * (-len(payload) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the data: URI is not valid base64") from None
    else:
        data = urllib.parse.unquote_to_bytes(payload)
    if len(data) > max_bytes:
        raise HTTPException(413, f"the document is larger than {limit}")
    if not data:
        raise ValueError("the data: URI holds no data")
    return data


_RANGE = re.compile(r"\s*(\d{1,9})\s*(?:-\s*(\d{1,9})\s*)?")


def parse_pages(pages: list[int] | str | None) -> list[tuple[int, int]] | None:
    """Page ranges (first, last), 0-based, from a list or a string like "0,2-4"; None = all.

    >>> parse_pages("0, 2-4"), parse_pages([3, 1]), parse_pages(None), parse_pages("")
    ([(0, 0), (2, 4)], [(3, 3), (1, 1)], None, None)
    """
    if pages is None or len(pages) == 0:
        return None
    if isinstance(pages, list):
        return [(page, page) for page in pages]
    ranges = []
    for part in pages.split(","):
        match = _RANGE.fullmatch(part)
        if match is None:
            raise invalid(("pages",), f"{part.strip()!r} is not a page number or range such as 2-4", pages[:200])
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise invalid(("pages",), f"the range {part.strip()} runs backwards", pages[:200])
        ranges.append((first, last))
    return ranges


def expand_pages(ranges: list[tuple[int, int]], page_count: int) -> list[int]:
    """The selected pages, sorted and once each; 422 for a page the document lacks.

    >>> expand_pages([(2, 3), (0, 0), (2, 2)], 4)
    [0, 2, 3]
    """
    beyond = max(last for _, last in ranges)
    if beyond >= page_count:
        pages = "1 page (page 0)" if page_count == 1 else f"{page_count} pages (0 to {page_count - 1})"
        raise invalid(("pages",), f"page {beyond} does not exist: the document has {pages}", beyond)
    return sorted({page for first, last in ranges for page in range(first, last + 1)})


async def _open(data: bytes, service: Services) -> Document:
    """The document opened in the decoder pool, as the intake opens it."""
    try:
        return await asyncio.to_thread(open_document, data, service.intake.limits, service.intake.decoder)
    except DocumentError as exc:
        raise invalid(("document",), str(exc)) from None


async def _answer_pages(
    pages: list[tuple[int, PageResult]], body: OCRRequest, data: bytes, service: Services
) -> list[OCRPageObject]:
    options = MistralOptions(
        image_limit=body.image_limit,
        image_min_size=body.image_min_size,
        table_format=body.table_format,
        extract_header=bool(body.extract_header),
        extract_footer=bool(body.extract_footer),
    )
    converted: list[MistralPage] = []
    images = tables = 0
    for _, page in pages:
        result = mistral_page(page, options, images, tables)
        images, tables = images + len(result.images), tables + len(result.tables)
        converted.append(result)
    crops: dict[str, str] = {}
    if body.include_image_base64 and images:
        document = await _open(data, service)
        for (index, _), result in zip(pages, converted, strict=True):
            if result.images:
                crops.update(await asyncio.to_thread(_crop_page, document, index, result.images))
    dpi = service.intake.limits.pdf_dpi if sniff_media_type(data) == "application/pdf" else IMAGE_DPI
    return [
        OCRPageObject(
            index=index,
            markdown=result.markdown,
            images=[
                OCRImageObject(id=image.id, **vars(image.corners), image_base64=crops.get(image.id))
                for image in result.images
            ],
            dimensions=OCRPageDimensions(dpi=dpi, height=page.height, width=page.width) if page.width else None,
            tables=[OCRTableObject(id=table.id, content=table.content, format="html") for table in result.tables],
            header=result.header,
            footer=result.footer,
            blocks=[
                OCRBlock(type=block.type, **vars(block.corners), content=block.content, image_id=block.image_id, table_id=block.table_id)
                for block in result.blocks
            ]
            if body.include_blocks
            else None,
        )
        for (index, page), result in zip(pages, converted, strict=True)
    ]


def _crop_page(document: Document, page_index: int, images: list[PageImage]) -> dict[str, str]:
    """Draw one page again (the image the engine read) and cut out its images as PNG `data:`
    URIs, the same crops as the page-image API's. Blocking."""
    page_image = document.load_page(page_index)
    crops = {}
    for image in images:
        c = image.corners
        png = crop_block(page_image, (c.top_left_x, c.top_left_y, c.bottom_right_x, c.bottom_right_y))
        crops[image.id] = f"data:{png.media_type};base64,{base64.b64encode(png.data).decode('ascii')}"
    return crops
