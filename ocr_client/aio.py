"""AsyncOcrClient: the service's API for asyncio (carries out the flows of `core`)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Any, TypeVar

import httpx
from httpx_sse import SSEError, aconnect_sse

from ocr_client.base import STREAM_READ_TIMEOUT, ClientBase, Source, read_source
from ocr_client.core import Call, EventReader, Flow, Options, StreamItem, TaskCallback, events_path
from ocr_client.errors import OcrError, raise_for_status
from ocr_client.models import Batch, Task

T = TypeVar("T")


class AsyncOcrClient(ClientBase):
    """Asyncio client, the same calls as OcrClient. Use it with `async with`, or `await aclose()`.

    Files are read in a worker thread, so a large upload never blocks the event loop.
    """

    _http: httpx.AsyncClient

    def _open(self) -> None:
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self.timeout)

    async def __aenter__(self) -> AsyncOcrClient:
        return self

    async def __aexit__(self, kind: type[BaseException] | None, error: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def submit(self, source: Source, *, filename: str | None = None, prompt: str | None = None,
                     temperature: float | None = None, max_tokens: int | None = None) -> str:
        name, data = await asyncio.to_thread(read_source, source, filename)
        return await self._run(self._core.submit(name, data, Options(prompt, temperature, max_tokens)))

    async def submit_url(self, url: str, *, prompt: str | None = None, temperature: float | None = None,
                         max_tokens: int | None = None) -> str:
        return await self._run(self._core.submit_url(url, Options(prompt, temperature, max_tokens)))

    async def submit_urls(self, urls: list[str], *, prompt: str | None = None, temperature: float | None = None,
                          max_tokens: int | None = None) -> str:
        return await self._run(self._core.submit_urls(urls, Options(prompt, temperature, max_tokens)))

    async def get(self, task_id: str) -> Task:
        return await self._run(self._core.get(task_id))

    async def wait(self, task_id: str, timeout: float | None = None, on_update: TaskCallback | None = None) -> Task:
        return await self._run(self._core.wait(task_id, timeout, on_update))

    async def ocr(self, source: Source, *, filename: str | None = None, prompt: str | None = None,
                  temperature: float | None = None, max_tokens: int | None = None, timeout: float | None = None,
                  on_update: TaskCallback | None = None) -> Task:
        name, data = await asyncio.to_thread(read_source, source, filename)
        return await self._run(self._core.ocr(name, data, Options(prompt, temperature, max_tokens), timeout, on_update))

    async def cancel(self, task_id: str) -> Task:
        return await self._run(self._core.cancel(task_id))

    async def batch(self, batch_id: str) -> Batch:
        return await self._run(self._core.batch(batch_id))

    async def stats(self) -> dict[str, Any]:
        return await self._run(self._core.stats())

    async def stream(self, task_id: str, read_timeout: float = STREAM_READ_TIMEOUT) -> AsyncIterator[StreamItem]:
        """The task's events as they happen; see OcrClient.stream."""
        reader = EventReader()
        backoff = self._core.backoff()
        path = events_path(task_id)
        while True:
            try:
                async with aconnect_sse(self._http, "GET", path, headers=reader.headers(),
                                        timeout=self._stream_timeout(read_timeout)) as source:
                    response = source.response
                    if response.is_error:
                        await response.aread()
                    delay = backoff.after_response(response)
                    if delay is None:
                        raise_for_status(response)
                        async for event in source.aiter_sse():
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
            await asyncio.sleep(delay)

    async def _run(self, flow: Flow[T]) -> T:
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
                    reply = await self._http.request(**action.request_args())
                except httpx.TransportError as exc:
                    failure = exc
            else:
                await asyncio.sleep(action.seconds)
