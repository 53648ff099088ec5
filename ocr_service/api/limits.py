"""The request-body limit, enforced while the body streams in.

A client that declares too large a body is answered 413 before anything is read; one
that streams more than it declared (or declares nothing) is cut off as soon as the
count passes the limit, so a huge upload never lands in memory or on disk.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int, limit_text: str) -> None:
        self.app = app
        self.max_bytes = max_bytes
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

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing: the client gets a JSON 413.
                    raise HTTPException(413, self.detail)
            return message

        await self.app(scope, counting_receive, send)
