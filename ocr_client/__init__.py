"""Python client for the OCR service: OcrClient (blocking) and AsyncOcrClient, typed results and errors.

Needs only httpx (and httpx-sse for `stream()`); `python -m ocr_client` is the command line.
"""

from ocr_client.aio import AsyncOcrClient
from ocr_client.errors import (
    BadRequest,
    Conflict,
    NotFound,
    OcrConnectionError,
    OcrError,
    Overloaded,
    RateLimited,
    ServerError,
    TaskFailed,
    Unauthorized,
    WaitTimeout,
)
from ocr_client.models import Batch, BatchItem, Block, Page, Progress, Task, TaskProgress
from ocr_client.retry import RetryPolicy
from ocr_client.sync import OcrClient

__all__ = [
    "AsyncOcrClient",
    "BadRequest",
    "Batch",
    "BatchItem",
    "Block",
    "Conflict",
    "NotFound",
    "OcrClient",
    "OcrConnectionError",
    "OcrError",
    "Overloaded",
    "Page",
    "Progress",
    "RateLimited",
    "RetryPolicy",
    "ServerError",
    "Task",
    "TaskFailed",
    "TaskProgress",
    "Unauthorized",
    "WaitTimeout",
]
