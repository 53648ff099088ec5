"""Domain errors -> HTTP answers, in one place. Every error answer is `{"detail": ...}` JSON.

Routes let `QueueFull`, `DocumentError`, `FetchError`, `CancelRefused`, `PageNotFound`
and `ImageGone` rise; the handlers here give them their status codes.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ocr_service.api.state import state_of
from ocr_service.core.ledger import CancelRefused, QueueFull
from ocr_service.core.page_images import ImageGone, PageNotFound
from ocr_service.documents import DocumentError
from ocr_service.documents.fetch import FetchError


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, exc: QueueFull) -> JSONResponse:
        state_of(request.app).metrics.rejections.labels(exc.reason).inc()
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": str(exc.retry_after)})

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
