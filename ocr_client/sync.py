"""OcrClient: the service's API with blocking calls (carries out the flows of `core`)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import SSEError, connect_sse

from ocr_client.base import STREAM_READ_TIMEOUT, ClientBase, Source, read_source
from ocr_client.core import Call, EventReader, Flow, Options, StreamItem, TaskCallback, events_path
from ocr_client.errors import OcrError, raise_for_status
from ocr_client.models import Batch, Task

T = TypeVar("T")


class OcrClient(ClientBase):
    """Blocking client. Use it as a context manager, or call `close()`:

        with OcrClient("http://localhost:8000") as client:
            print(client.ocr("scan.pdf").result)
    """

    _http: httpx.Client

    def _open(self) -> None:
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self.timeout)

    def __enter__(self) -> OcrClient:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def submit(self, source: Source, *, filename: str | None = None, prompt: str | None = None,
               temperature: float | None = None, max_tokens: int | None = None) -> str:
        """Upload an image or PDF (a path, or bytes); returns the task id."""
        name, data = read_source(source, filename)
        return self._run(self._core.submit(name, data, Options(prompt, temperature, max_tokens)))

    def submit_url(self, url: str, *, prompt: str | None = None, temperature: float | None = None,
                   max_tokens: int | None = None) -> str:
        """Have the service fetch and read a URL; returns the task id."""
        return self._run(self._core.submit_url(url, Options(prompt, temperature, max_tokens)))

    def submit_urls(self, urls: list[str], *, prompt: str | None = None, temperature: float | None = None,
                    max_tokens: int | None = None) -> str:
        """Submit several URLs as one batch; returns the batch id (see `batch()`)."""
        return self._run(self._core.submit_urls(urls, Options(prompt, temperature, max_tokens)))

    def get(self, task_id: str) -> Task:
        """The task as it is now."""
        return self._run(self._core.get(task_id))

    def wait(self, task_id: str, timeout: float | None = None, on_update: TaskCallback | None = None) -> Task:
        """Long-poll until the task ends; returns it whether completed, failed or cancelled."""
        return self._run(self._core.wait(task_id, timeout, on_update))

    def ocr(self, source: Source, *, filename: str | None = None, prompt: str | None = None,
            temperature: float | None = None, max_tokens: int | None = None, timeout: float | None = None,
            on_update: TaskCallback | None = None) -> Task:
        """Submit and wait: the completed task, or TaskFailed."""
        name, data = read_source(source, filename)
        return self._run(self._core.ocr(name, data, Options(prompt, temperature, max_tokens), timeout, on_update))

    def cancel(self, task_id: str) -> Task:
        """Cancel a waiting task (Conflict if it is running or has ended)."""
        return self._run(self._core.cancel(task_id))

    def batch(self, batch_id: str) -> Batch:
        return self._run(self._core.batch(batch_id))

    def stats(self) -> dict[str, Any]:
        return self._run(self._core.stats())

    def stream(self, task_id: str, read_timeout: float = STREAM_READ_TIMEOUT) -> Iterator[StreamItem]:
        """The task's events as they happen: TaskProgress, each Page, and last the ended Task.

        A dropped connection is resumed with `Last-Event-ID`, within the retry budget.
        """
        reader = EventReader()
        backoff = self._core.backoff()
        path = events_path(task_id)
        while True:
            try:
                with connect_sse(self._http, "GET", path, headers=reader.headers(),
                                 timeout=self._stream_timeout(read_timeout)) as source:
                    response = source.response
                    if response.is_error:
                        response.read()
                    delay = backoff.after_response(response)
                    if delay is None:
                        raise_for_status(response)
                        for event in source.iter_sse():
                            backoff.reset()
                            item = reader.read(event)
                            if item is not None:
                                yield item
                            if reader.final is not None:
                                return
                        delay = backoff.after_early_end(path)
            except httpx.TransportError as exc:
                delay = backoff.after_transport_error(exc, "GET", path)
            except SSEError as exc:
                raise OcrError(f"GET {path}: not an event stream: {exc}") from exc
            time.sleep(delay)

    def _run(self, flow: Flow[T]) -> T:
        """Carry out a flow: send its calls, sleep its sleeps, hand transport errors back to it."""
        reply: httpx.Response | None = None
        failure: httpx.TransportError | None = None
        while True:
            try:
                action = flow.send(reply) if failure is None else flow.throw(failure)
            except StopIteration as stop:
                return stop.value
            reply, failure = None, None
            if isinstance(action, Call):
                try:
                    reply = self._http.request(**action.request_args())
                except httpx.TransportError as exc:
                    failure = exc
            else:
                time.sleep(action.seconds)
