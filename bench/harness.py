"""Start a real `run_service.py` process and drive it over HTTP: open and closed loops.

Everything here talks to 127.0.0.1 only. Latency is measured client-side from just
before `POST /ocr` to the answer of the long poll (`GET /ocr/{id}?wait=N`) that shows
the task ended, so polling neither adds load nor rounds latencies up to a poll period.
Multipart bodies are built once per page and sent as raw bytes over a minimal
keep-alive HTTP/1.1 client (`LoopbackClient`, below): the client then costs little CPU,
which matters on a 2-core machine where it shares the cores with the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import httpx
import psutil
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
BOUNDARY = "benchboundary7f3a9c"
LONG_POLL_S = 30
TERMINAL = {"completed", "failed", "cancelled"}


# -- the service process -----------------------------------------------------------


def free_port() -> int:
    """A port the kernel says is free now (there is a small race; fine on a bench box)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Service:
    """A running service process and where to reach it."""

    process: subprocess.Popen[bytes]
    base_url: str
    env: dict[str, str]

    @property
    def ps(self) -> psutil.Process:
        return psutil.Process(self.process.pid)

    def rss_mb(self) -> float:
        return self.ps.memory_info().rss / 2**20

    def cpu_seconds(self) -> float:
        times = self.ps.cpu_times()
        return times.user + times.system


@contextlib.contextmanager
def service_process(
    settings: dict[str, object], start_timeout: float = 90, stop_timeout: float = 10
) -> Iterator[Service]:
    """Run `python run_service.py` with these OCR_* settings on a free loopback port.

    It runs in an empty directory so a developer's `.env` cannot change the figures,
    and with inherited OCR_* variables removed for the same reason.
    """
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("OCR_")}
    ocr = {f"OCR_{key.upper()}": str(value) for key, value in settings.items()}
    ocr.update(OCR_HOST="127.0.0.1", OCR_PORT=str(port))
    ocr.setdefault("OCR_LOG_LEVEL", "WARNING")  # no access log: it costs CPU per request
    env.update(ocr)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")]))  # keep a vendored site
    workdir = tempfile.mkdtemp(prefix="ocr-bench-")
    process = subprocess.Popen([sys.executable, str(REPO / "run_service.py")], cwd=workdir, env=env)
    service = Service(process, f"http://127.0.0.1:{port}", ocr)
    try:
        deadline = time.monotonic() + start_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode} at start (settings {ocr})")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{service.base_url}/health", timeout=1).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the service did not answer /health within {start_timeout} s")
            time.sleep(0.2)
        yield service
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(stop_timeout)
        except subprocess.TimeoutExpired:  # an engine stuck in a long (fake) batch
            process.kill()
            process.wait()


# -- requests ------------------------------------------------------------------------


def multipart(data: bytes, filename: str = "page.png") -> bytes:
    """The body of `POST /ocr` with one file field, built once and reused."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{BOUNDARY}--\r\n".encode()


HEADERS = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}


@dataclass
class Sample:
    """One request: when it went, when it ended, and how (202 then completed, 503, ...)."""

    sent: float
    ended: float
    outcome: str  # "completed", "failed", "rejected" (503), "error"

    @property
    def latency(self) -> float:
        return self.ended - self.sent


class Response:
    """What the load generator needs of an answer: the status and the JSON body."""

    def __init__(self, status_code: int, body: bytes) -> None:
        self.status_code = status_code
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)


class LoopbackClient:
    """A minimal keep-alive HTTP/1.1 client over asyncio streams, for 127.0.0.1 only.

    Why not httpx: its connection pool scans every pooled connection per request, so
    with hundreds of long polls open (an overloaded open loop) the client burned ~8 ms
    of CPU per request here and, on 2 shared cores, starved the service it measured
    (scenario 1 read a ratio of 0.34 with httpx). This client keeps idle connections in
    a stack: O(1) per request, a few tens of microseconds of CPU.
    """

    def __init__(self, base_url: str, connections: int = 4000) -> None:
        host_port = base_url.removeprefix("http://").rstrip("/")
        self.host, port = host_port.split(":")
        self.port = int(port)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(connections)
        self._open: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in self._open:
            writer.close()

    async def request(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                      timeout: float = LONG_POLL_S + 30) -> Response:
        async with self._slots:
            while self._idle:  # an idle connection the server closed (uvicorn: 5 s) is retried once, fresh
                reader, writer = self._idle.pop()
                try:
                    return await self._exchange(reader, writer, method, path, body, headers, timeout)
                except (asyncio.IncompleteReadError, ConnectionError) as exc:
                    if getattr(exc, "partial", b""):
                        raise
            reader, writer = await asyncio.open_connection(self.host, self.port)
            self._open.add(writer)
            return await self._exchange(reader, writer, method, path, body, headers, timeout)

    async def _exchange(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str,
                        body: bytes, headers: dict[str, str] | None, timeout: float) -> Response:
        try:
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(body)}\r\n"
            for key, value in (headers or {}).items():
                head += f"{key}: {value}\r\n"
            writer.write(head.encode() + b"\r\n" + body)
            async with asyncio.timeout(timeout):
                status_line, _, rest = (await reader.readuntil(b"\r\n\r\n")).partition(b"\r\n")
                length, close = 0, False
                for line in rest.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"connection" and value.strip().lower() == b"close":
                        close = True
                payload = await reader.readexactly(length)
        except BaseException:
            writer.close()
            self._open.discard(writer)
            raise
        if close:
            writer.close()
            self._open.discard(writer)
        else:
            self._idle.append((reader, writer))
        return Response(int(status_line.split()[1]), payload)

    async def post(self, path: str, content: bytes, headers: dict[str, str]) -> Response:
        return await self.request("POST", path, content, headers)

    async def get(self, path: str) -> Response:
        return await self.request("GET", path)


def client(base_url: str, connections: int = 4000) -> LoopbackClient:
    """One pooled client. Every request that waits holds a connection for its long poll,
    so under overload the pool must be as deep as the backlog: a shallow pool would
    silently hold arrivals back and lower the offered load."""
    return LoopbackClient(base_url, connections)


HTTP_ERRORS = (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError)


async def submit(http: LoopbackClient, body: bytes) -> tuple[int, str | None]:
    response = await http.post("/ocr", body, HEADERS)
    task_id = response.json().get("task_id") if response.status_code == 202 else None
    return response.status_code, task_id


async def submit_and_wait(http: LoopbackClient, body: bytes) -> Sample:
    """Submit one page and long-poll until it ends."""
    sent = time.perf_counter()
    try:
        code, task_id = await submit(http, body)
        if code == 503:
            return Sample(sent, time.perf_counter(), "rejected")
        if task_id is None:
            return Sample(sent, time.perf_counter(), f"http-{code}")
        while True:
            view = (await http.get(f"/ocr/{task_id}?wait={LONG_POLL_S}")).json()
            if view["status"] in TERMINAL:
                return Sample(sent, time.perf_counter(), view["status"])
    except HTTP_ERRORS as exc:
        return Sample(sent, time.perf_counter(), f"error:{type(exc).__name__}")


async def open_loop(
    http: LoopbackClient,
    bodies: Sequence[bytes],
    rate: float,
    duration: float,
    seed: int = 0,
    max_requests: int | None = None,
) -> tuple[list[Sample], float]:
    """Poisson arrivals at `rate`/s for `duration` s (or until `max_requests` were sent),
    each request on its own; returns the samples (after every request ended) and the
    arrival rate actually achieved. Open loop: arrivals do not wait for answers, so an
    overloaded service sees its backlog grow, as it would with independent users."""
    rng = random.Random(seed)
    start = time.perf_counter()
    jobs: list[asyncio.Task[Sample]] = []
    next_at = start
    while max_requests is None or len(jobs) < max_requests:
        next_at += rng.expovariate(rate)
        if next_at - start > duration:
            break
        delay = next_at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        jobs.append(asyncio.create_task(submit_and_wait(http, bodies[len(jobs) % len(bodies)])))
    achieved = len(jobs) / (time.perf_counter() - start)
    return list(await asyncio.gather(*jobs)), achieved


async def closed_loop(http: LoopbackClient, bodies: Sequence[bytes], clients: int, duration: float) -> list[Sample]:
    """`clients` clients, each sending its next page as soon as the last one ended."""
    stop = time.perf_counter() + duration
    samples: list[Sample] = []

    async def one_client(number: int) -> None:
        index = number
        while time.perf_counter() < stop:
            samples.append(await submit_and_wait(http, bodies[index % len(bodies)]))
            index += clients

    await asyncio.gather(*(one_client(n) for n in range(clients)))
    return samples


async def stats(http: LoopbackClient) -> dict:
    """The service's own figures (batches run, pages run, queue depth)."""
    return (await http.get("/stats")).json()


async def wait_idle(http: LoopbackClient, timeout: float = 120) -> None:
    """Wait until nothing is queued or running (between load points)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        current = await stats(http)
        if current["pages_queued"] == 0 and current["pages_in_flight"] == 0:
            return
        await asyncio.sleep(0.1)


# -- figures -------------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def summarize(samples: Sequence[Sample], t0: float, t1: float) -> dict[str, object]:
    """Figures for requests sent in [t0, t1): throughput counts pages that completed in that window."""
    window = [s for s in samples if t0 <= s.sent < t1]
    done = [s for s in window if s.outcome == "completed"]
    completed_in_window = sum(1 for s in samples if s.outcome == "completed" and t0 <= s.ended < t1)
    latencies = [s.latency for s in done]
    outcomes: dict[str, int] = {}
    for s in window:
        outcomes[s.outcome] = outcomes.get(s.outcome, 0) + 1
    return {
        "requests": len(window),
        "outcomes": outcomes,
        "throughput_pages_s": round(completed_in_window / (t1 - t0), 3) if t1 > t0 else None,
        "p50_s": _round(percentile(latencies, 50)),
        "p95_s": _round(percentile(latencies, 95)),
        "p99_s": _round(percentile(latencies, 99)),
        "mean_s": _round(sum(latencies) / len(latencies)) if latencies else None,
        "rejected_share": round(outcomes.get("rejected", 0) / len(window), 4) if window else None,
    }


def batch_figures(before: dict, after: dict) -> dict[str, object]:
    """Batches the service formed between two /stats snapshots."""
    batches = after["batches_run"] - before["batches_run"]
    pages = after["pages_processed"] - before["pages_processed"]
    return {
        "batches_run": batches,
        "pages_run": pages,
        "mean_batch_size": round(pages / batches, 3) if batches else None,
        "mean_batch_size_since_start": after["mean_batch_size"],
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


# -- the engine alone --------------------------------------------------------------


def decode_pages(encoded: Sequence[bytes]) -> list[Image.Image]:
    """Decode once, up front: the engine alone gets RGB pages, as the batcher hands them."""
    return [Image.open(io.BytesIO(data)).convert("RGB") for data in encoded]


def engine_alone(
    settings: dict[str, object], images: Sequence[Image.Image], batch_size: int, batches: int, warmup_batches: int = 1
) -> dict[str, object]:
    """Load the engine the service would build from these settings, in this process, and
    run `batches` back-to-back batches of `batch_size` pages through `engine.run`: the
    ceiling the service is measured against. Run it while no service is running, so
    the two never share the cores."""
    from ocr_service.config import Settings
    from ocr_service.engines.base import PageRequest
    from ocr_service.engines.registry import build_engine

    config = Settings(_env_file=None, **settings)  # type: ignore[call-arg]
    engine = build_engine(config)
    engine.load()

    def batch(number: int) -> list[PageRequest]:
        start = number * batch_size
        return [
            PageRequest.of_image(images[(start + i) % len(images)], config.default_prompt, config.default_temperature,
                        config.default_max_tokens)
            for i in range(batch_size)
        ]

    async def drive() -> list[float]:
        for number in range(warmup_batches):
            async for _ in engine.run(batch(number)):
                pass
        seconds = []
        for number in range(batches):
            started = time.perf_counter()
            async for _ in engine.run(batch(warmup_batches + number)):
                pass
            seconds.append(time.perf_counter() - started)
        return seconds

    try:
        seconds = asyncio.run(drive())
    finally:
        engine.close()
    total = sum(seconds)
    return {
        "engine_bound_pages_s": round(batch_size * batches / total, 3),
        "engine_batch_s_mean": round(total / batches, 4),
        "engine_batches": batches,
        "engine_batch_size": batch_size,
    }


# -- memory --------------------------------------------------------------------------


class RssSampler:
    """Samples a process's resident memory every `period` s in a thread: its peak."""

    def __init__(self, service: Service, period: float = 0.2) -> None:
        self.service = service
        self.period = period
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.service.rss_mb())
            self._stop.wait(self.period)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
