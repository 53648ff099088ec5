"""The client's logic without I/O: which requests to send, how to read the answers, when to wait.

Every operation is a generator (a "flow") that yields a `Call` (send this request and
send me its response) or a `Sleep` (wait this long), and returns its result. The sync
and async clients only carry flows out, one with blocking I/O and one with asyncio, so
retries, long polls and parsing are written once.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
from httpx_sse import ServerSentEvent

from ocr_client.errors import OcrError, TaskFailed, WaitTimeout, raise_for_status
from ocr_client.models import Batch, Page, Task, TaskProgress
from ocr_client.retry import Backoff, Counters, RetryPolicy

T = TypeVar("T")

MAX_LONG_POLL = 60.0  # the server's cap on GET /ocr/{id}?wait=
LONG_POLL_MARGIN = 15.0  # read timeout beyond the long poll, for a slow network
MIN_POLL_INTERVAL = 0.5  # a server that ignores ?wait= is still not polled in a tight loop


@dataclass(frozen=True)
class Call:
    """One HTTP request a flow wants sent; `timeout` overrides the client's for this request."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    json: Any = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    timeout: float | None = None

    def request_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {"method": self.method, "url": self.path}
        for name in ("params", "json", "data", "files", "timeout"):
            value = getattr(self, name)
            if value is not None:
                args[name] = value
        return args


@dataclass(frozen=True)
class Sleep:
    seconds: float


Flow = Generator[Call | Sleep, Any, T]
StreamItem = TaskProgress | Page | Task
TaskCallback = Callable[[Task], None]


@dataclass(frozen=True)
class Options:
    """Per-request OCR parameters; None leaves the server's default."""

    prompt: str | None = None
    temperature: float | None = None
    max_tokens: int | None = None

    def fields(self) -> dict[str, Any]:
        return {name: value for name, value in vars(self).items() if value is not None}


def task_path(task_id: str) -> str:
    return f"/ocr/{quote(task_id, safe='')}"


def events_path(task_id: str) -> str:
    return f"{task_path(task_id)}/events"


def body_of(response: httpx.Response) -> Any:
    try:
        return response.json()
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OcrError(f"{response.request.url.path}: the server's answer is not JSON", status_code=response.status_code) from exc


def parse(response: httpx.Response, build: Callable[[Any], T]) -> T:
    """A typed result from a 2xx answer; an answer of another shape is an OcrError, not a KeyError."""
    try:
        return build(body_of(response))
    except (KeyError, TypeError, ValueError) as exc:
        raise OcrError(f"{response.request.url.path}: unexpected answer: {exc!r}", status_code=response.status_code) from exc


class ClientCore:
    """The flows of every operation, sharing one retry policy and one set of counters."""

    def __init__(self, retry: RetryPolicy, poll_window: float) -> None:
        self.retry = retry
        self.poll_window = min(max(poll_window, MIN_POLL_INTERVAL), MAX_LONG_POLL)
        self.rng = random.Random()
        self.counters = Counters()

    def backoff(self) -> Backoff:
        return Backoff(self.retry, self.rng, self.counters)

    def send(self, call: Call) -> Flow[httpx.Response]:
        """Send `call` until it gets an answer that is not a refusal; raise the typed error for a 4xx/5xx."""
        backoff = self.backoff()
        while True:
            try:
                response: httpx.Response = yield call
            except httpx.TransportError as exc:
                delay = backoff.after_transport_error(exc, call.method, call.path)
            else:
                refused = backoff.after_response(response)
                if refused is None:
                    raise_for_status(response)
                    return response
                delay = refused
            yield Sleep(delay)

    def submit(self, filename: str, data: bytes, options: Options) -> Flow[str]:
        """Upload a document; returns its task id."""
        files = {"file": (filename, data, "application/octet-stream")}
        fields = {name: str(value) for name, value in options.fields().items()}
        response = yield from self.send(Call("POST", "/ocr", data=fields, files=files))
        return parse(response, lambda body: str(body["task_id"]))

    def submit_url(self, url: str, options: Options) -> Flow[str]:
        response = yield from self.send(Call("POST", "/ocr/url", json={"url": url, **options.fields()}))
        return parse(response, lambda body: str(body["task_id"]))

    def submit_urls(self, urls: list[str], options: Options) -> Flow[str]:
        """Submit a URL batch; returns its batch id."""
        response = yield from self.send(Call("POST", "/ocr/url/batch", json={"urls": list(urls), **options.fields()}))
        return parse(response, lambda body: str(body["batch_task_id"]))

    def get(self, task_id: str, wait: float = 0.0) -> Flow[Task]:
        call = Call("GET", task_path(task_id))
        if wait > 0:
            call = Call("GET", task_path(task_id), params={"wait": round(wait, 3)}, timeout=wait + LONG_POLL_MARGIN)
        response = yield from self.send(call)
        return parse(response, Task.from_json)

    def wait(self, task_id: str, timeout: float | None = None, on_update: TaskCallback | None = None) -> Flow[Task]:
        """Long-poll until the task ends (`timeout` None: however long that takes); returns it in any end state.

        Each poll asks the server to hold the answer up to `poll_window` seconds, so the
        client learns of the end as soon as it happens without a tight loop. `on_update`
        sees every answer (progress, queue position). Raises WaitTimeout past `timeout`.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            window = self.poll_window if deadline is None else min(self.poll_window, deadline - time.monotonic())
            started = time.monotonic()
            task = yield from self.get(task_id, wait=max(window, 0.0))
            if on_update is not None:
                on_update(task)
            if task.done:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"task {task_id} still {task.status} after {timeout:g} s", task)
            elapsed = time.monotonic() - started
            if elapsed < MIN_POLL_INTERVAL:
                yield Sleep(MIN_POLL_INTERVAL - elapsed)

    def ocr(self, filename: str, data: bytes, options: Options, timeout: float | None = None,
            on_update: TaskCallback | None = None) -> Flow[Task]:
        """Submit and wait; returns the completed task, or raises TaskFailed."""
        task_id = yield from self.submit(filename, data, options)
        task = yield from self.wait(task_id, timeout, on_update)
        if not task.ok:
            raise TaskFailed(task)
        return task

    def cancel(self, task_id: str) -> Flow[Task]:
        """Cancel a waiting task; Conflict if it runs or has ended."""
        response = yield from self.send(Call("DELETE", task_path(task_id)))
        return parse(response, Task.from_json)

    def batch(self, batch_id: str) -> Flow[Batch]:
        response = yield from self.send(Call("GET", f"/ocr/batch/{quote(batch_id, safe='')}"))
        return parse(response, Batch.from_json)

    def stats(self) -> Flow[dict[str, Any]]:
        response = yield from self.send(Call("GET", "/stats"))
        return parse(response, dict)


TERMINAL_EVENTS = frozenset({"done", "failed", "cancelled"})


class EventReader:
    """Turns a task's server-sent events into typed items, and remembers where to resume.

    `progress` -> TaskProgress, `page` -> Page, and a final `done`, `failed` or
    `cancelled` -> the Task, after which the stream is over. Unknown events are skipped
    (the server may add kinds). A page seen before a reconnect is not yielded twice.
    """

    def __init__(self) -> None:
        self.last_event_id = ""
        self.final: Task | None = None
        self.pages_seen: set[int] = set()

    def headers(self) -> dict[str, str]:
        return {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}

    def read(self, event: ServerSentEvent) -> StreamItem | None:
        if event.id:
            self.last_event_id = event.id
        try:
            if event.event == "progress":
                return TaskProgress.from_json(event.json())
            if event.event == "page":
                page = Page.from_json(event.json())
                if page.page in self.pages_seen:
                    return None
                self.pages_seen.add(page.page)
                return page
            if event.event in TERMINAL_EVENTS:
                self.final = Task.from_json(event.json())
                return self.final
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise OcrError(f"malformed {event.event!r} event: {exc!r}") from exc
        return None

