"""Errors -> HTTP answers, in one place. Every error answer is JSON with a `detail`.

Routes let `QueueFull`, `DocumentError`, `FetchError`, `CancelRefused`, `PageNotFound`
and `ImageGone` rise; the handlers here give them their status codes. Malformed requests get a 422 whose body is
always valid JSON and small: JSON allows numbers such as `1e999` that Python reads as
infinity, and an echoed input may be megabytes long, so every echoed value is made
JSON-safe and cut short. An unexpected error answers 500 as JSON naming the request id,
so a user can quote it and an operator can find the log line.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ocr_service.api.state import state_of
from ocr_service.core.ledger import CancelRefused, QueueFull, TooManyTasks
from ocr_service.core.page_images import ImageGone, PageNotFound
from ocr_service.documents import DocumentError
from ocr_service.documents.fetch import FetchError

logger = logging.getLogger(__name__)

ECHO_LIMIT = 200  # characters of an offending input a 422 repeats


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        state_of(request.app).metrics.rejections.labels(exc.reason).inc()
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(TooManyTasks)
    async def too_many(request: Request, exc: TooManyTasks) -> JSONResponse:
        state_of(request.app).metrics.rejections.labels("client_quota").inc()
        return JSONResponse({"detail": str(exc)}, status_code=429, headers={"Retry-After": str(exc.retry_after)})

    @app.exception_handler(DocumentError)
    @app.exception_handler(FetchError)
    async def unprocessable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(CancelRefused)
    async def conflict(request: Request, exc: CancelRefused) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(PageNotFound)
    async def page_not_found(request: Request, exc: PageNotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(ImageGone)
    async def image_gone(request: Request, exc: ImageGone) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=410)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": [safe_error(error) for error in exc.errors()]}, status_code=422)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        request_id = getattr(request.state, "request_id", None)
        logger.error("unexpected error (request %s)", request_id, exc_info=exc)
        detail = f"internal error; quote request id {request_id} when you report it"
        # Answered outside the middleware that adds the header to every other answer.
        headers = {"X-Request-ID": request_id} if request_id else None
        return JSONResponse({"detail": detail, "request_id": request_id}, status_code=500, headers=headers)


def safe_error(error: Any) -> dict[str, Any]:
    """One pydantic error, with its echoed input and context JSON-safe and short.

    >>> safe_error({"type": "less_than_equal", "loc": ("body", "temperature"), "msg": "...", "input": float("inf")})
    {'type': 'less_than_equal', 'loc': ['body', 'temperature'], 'msg': '...', 'input': 'inf'}
    """
    safe: dict[str, Any] = {
        "type": str(error.get("type", "")),
        "loc": [part if isinstance(part, int) else str(part) for part in error.get("loc", ())],
        "msg": short(error.get("msg", "")),
    }
    if "input" in error:
        safe["input"] = short(error["input"])
    if isinstance(error.get("ctx"), dict):
        safe["ctx"] = {str(key): short(value) for key, value in error["ctx"].items()}
    return safe


def short(value: Any) -> Any:
    """A JSON-safe stand-in for `value`: finite numbers, booleans and None as they are,
    anything else as text of at most ECHO_LIMIT characters.

    >>> short(float("nan")), short(3), short("x" * 300)[-34:]
    ('nan', 3, '... (cut at 200 of 300 characters)')
    """
    if value is None or isinstance(value, bool | int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    text = value if isinstance(value, str) else repr(value)
    if len(text) > ECHO_LIMIT:
        return f"{text[:ECHO_LIMIT]}... (cut at {ECHO_LIMIT} of {len(text)} characters)"
    return text
