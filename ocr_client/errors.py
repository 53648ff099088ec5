"""Typed errors: each carries the server's `detail` and the HTTP status that came with it."""

from __future__ import annotations

import email.utils
import json
import time
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from ocr_client.models import Task


class OcrError(Exception):
    """Anything the service refused or could not do; `detail` is the server's own words."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail


class BadRequest(OcrError):
    """400, 413 or 422: the input or a parameter is wrong (an empty, corrupt or too large file, say)."""


class Unauthorized(OcrError):
    """401 or 403: no valid API key."""


class NotFound(OcrError):
    """404: the task or batch is unknown, expired, or another key's."""


class Conflict(OcrError):
    """409: the task cannot be cancelled now (it is running or has ended)."""


class Overloaded(OcrError):
    """503 (queue full, shutting down) still answered after the retry budget was spent."""

    def __init__(self, message: str, *, status_code: int | None = None, detail: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message, status_code=status_code, detail=detail)
        self.retry_after = retry_after


class RateLimited(Overloaded):
    """429: over the per-client rate limit, still after the retry budget was spent."""


class ServerError(OcrError):
    """Any other 5xx answer."""


class OcrConnectionError(OcrError):
    """The service could not be reached (or the connection broke) and the call could not be retried."""


class WaitTimeout(OcrError):
    """`wait()` gave up before the task ended; `task` is its last known state."""

    def __init__(self, message: str, task: Task) -> None:
        super().__init__(message)
        self.task = task


class TaskFailed(OcrError):
    """The task ended `failed` or `cancelled`; `detail` is its `error`, `task` the whole task."""

    def __init__(self, task: Task) -> None:
        detail = task.error or task.status
        super().__init__(f"task {task.task_id} {task.status}: {detail}", detail=detail)
        self.task = task


_BY_STATUS: dict[int, type[OcrError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Unauthorized,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
    503: Overloaded,
}


def detail_of(response: httpx.Response) -> Any:
    """The `detail` of an error answer, or its text when the body is not the service's JSON."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text.strip() or response.reason_phrase
    return body.get("detail", body) if isinstance(body, dict) else body


def retry_after_of(response: httpx.Response) -> float | None:
    """Seconds from a `Retry-After` header: a number of seconds, or an HTTP date."""
    value = response.headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_for(response: httpx.Response) -> OcrError:
    """The typed error for an answer of 400 or above."""
    status = response.status_code
    detail = detail_of(response)
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else OcrError)
    message = f"{status} {response.request.method} {response.request.url.path}: {detail}"
    if issubclass(kind, Overloaded):
        return kind(message, status_code=status, detail=detail, retry_after=retry_after_of(response))
    return kind(message, status_code=status, detail=detail)


def raise_for_status(response: httpx.Response) -> None:
    if response.status_code >= 400:
        raise error_for(response)
