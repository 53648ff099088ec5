"""Bounds applied while a request body streams in, before any route reads it.

- `BodyLimitMiddleware`: a client that declares too large a body is answered 413 before
  anything is read; one that streams more than it declared (or declares nothing) is cut
  off as soon as the count passes the limit, so a huge upload never lands in memory or
  on disk. A body that pauses longer than `timeout` seconds between chunks, or that after
  its first `timeout` seconds arrives slower than `MIN_BODY_RATE` on average (a byte now
  and then), is answered 408: a slow upload cannot hold a connection and a parser open.
- `AdmissionGate`: a submission that the service would refuse anyway (queue full,
  shutting down) is answered 503 before its body is read, so an overloaded service does
  not read every refused 20 MB upload.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ocr_service.api.state import AppState
from ocr_service.core.ledger import QueueFull

SUBMISSION_PATHS = frozenset({"/ocr", "/ocr/url", "/ocr/url/batch", "/ocr_batch", "/v1/ocr"})
MIN_BODY_RATE = 1024  # bytes per second a body must average once it has had `timeout` seconds


@dataclass(frozen=True)
class _Route:
    """What the access log and request metrics read of a route (`scope["route"].path`),
    for an answer given before routing."""

    path: str


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, limit_text: str, timeout: float) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.detail = f"request body is larger than the upload limit ({limit_text})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await JSONResponse({"detail": self.detail}, status_code=413)(scope, receive, send)
            return
        received = 0
        body_done = False
        started = time.monotonic()

        async def counting_receive() -> Message:
            nonlocal received, body_done
            if body_done:  # later receives wait for the client to leave (streaming answers): no timeout
                return await receive()
            try:
                async with asyncio.timeout(self.timeout):
                    message = await receive()
            except TimeoutError:
                raise HTTPException(
                    408, f"the request body paused for more than {self.timeout:g} s (OCR_BODY_TIMEOUT)"
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                body_done = not message.get("more_body", False)
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing: the client gets a JSON 413.
                    raise HTTPException(413, self.detail)
                elapsed = time.monotonic() - started
                if not body_done and elapsed > self.timeout and received < MIN_BODY_RATE * elapsed:
                    raise HTTPException(
                        408, f"the request body arrives slower than {MIN_BODY_RATE} bytes/s (OCR_BODY_TIMEOUT)"
                    )
            return message

        await self.app(scope, counting_receive, send)


class AdmissionGate:
    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = self.state.services
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"] in SUBMISSION_PATHS and services:
            try:
                services.ledger.check_room()
            except QueueFull as refused:
                self.state.metrics.rejections.labels(refused.reason).inc()
                scope["route"] = _Route(scope["path"])  # the submission paths are route templates too
                response = JSONResponse(
                    {"detail": str(refused)}, status_code=503, headers={"Retry-After": str(refused.retry_after)}
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
