"""What the sync and async clients share: settings, headers, reading an upload's bytes."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

from ocr_client.core import ClientCore
from ocr_client.retry import Counters, RetryPolicy

Source = str | os.PathLike[str] | bytes

DEFAULT_TIMEOUT = 30.0  # seconds per request (long polls get their wait on top)
DEFAULT_POLL_WINDOW = 30.0  # seconds the server may hold one long poll (it allows at most 60)
STREAM_READ_TIMEOUT = 75.0  # seconds of silence before an event stream is resumed on a new connection


class ClientBase:
    """Settings common to OcrClient and AsyncOcrClient.

    `api_key` goes out as `Authorization: Bearer`. `retry` bounds how long one call
    waits out refusals (503, 429) and broken connections. `poll_window` is how long each
    long poll of `wait()` asks the server to hold its answer.
    """

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        poll_window: float = DEFAULT_POLL_WINDOW,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._core = ClientCore(retry or RetryPolicy(), poll_window)
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._open()

    def _open(self) -> None:
        """Create the HTTP client (sync or async)."""
        raise NotImplementedError

    @property
    def counters(self) -> Counters:
        """Refusals waited out and connections retried so far."""
        return self._core.counters

    def _stream_timeout(self, read_timeout: float) -> httpx.Timeout:
        return httpx.Timeout(self.timeout, read=read_timeout)


def read_source(source: Source, filename: str | None = None) -> tuple[str, bytes]:
    """An upload's file name and bytes, from a path or from bytes already in memory.

    Read whole: the server's size limit is tens of megabytes, and a retried upload
    must send the same bytes again.
    """
    if isinstance(source, bytes):
        return filename or "upload", source
    path = Path(source)
    return filename or path.name, path.read_bytes()
