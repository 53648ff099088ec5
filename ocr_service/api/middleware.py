"""Observe every request: give it an id, count it in the metrics, and log one line for it.

The id comes from the client's `X-Request-ID` when it sends a sane one (so a caller
can follow its own id through our logs), else a new one; either way it is echoed in
the response's `X-Request-ID`. The log line names the task id where there is one:
from the path (`/ocr/{task_id}`) or set by the route that created it (`note_task`).
Routes are labelled by their template, never the raw path, so ids do not explode the
metrics' label space.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ocr_service.core.metrics import Metrics

logger = logging.getLogger("ocr_service.access")

REQUEST_ID_HEADER = "x-request-id"
_SANE_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def note_task(request: Request, task_id: str) -> None:
    """Name the task a request created, for its log line."""
    request.state.task_id = task_id


class RequestObserver:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = request_id  # error handlers name it
        started = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, request_id, status, time.perf_counter() - started)

    def _record(self, scope: Scope, request_id: str, status: int, seconds: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        method = scope["method"]
        self.metrics.requests.labels(route, method, str(status)).inc()
        self.metrics.request_seconds.labels(route, method).observe(seconds)
        params = scope.get("path_params") or {}
        task_id = params.get("task_id") or params.get("batch_task_id") or scope.get("state", {}).get("task_id")
        client = scope.get("client")
        path = printable(scope["path"])
        logger.info(
            "%s %s %d %.1f ms",
            method,
            path,
            status,
            seconds * 1000,
            extra={
                "request_id": request_id,
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "client": client[0] if client else None,
                **({"task_id": task_id} if task_id else {}),
            },
        )


def printable(path: str) -> str:
    r"""The path with control characters escaped: a `%0A` in a URL must not start a new log line.

    >>> printable("/ocr/x\ninjected")
    '/ocr/x\\ninjected'
    """
    if path.isprintable():
        return path
    return path.encode("unicode_escape").decode("ascii")


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            if _SANE_ID.fullmatch(candidate):
                return candidate
    return uuid.uuid4().hex
