"""Things tests make and do the way a client would: render pages, start apps, poll tasks."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from asgi_lifespan import LifespanManager
from PIL import Image, ImageDraw, ImageFont

from ocr_service.api.state import Services, state_of
from ocr_service.app import create_app
from ocr_service.config import Settings
from ocr_service.engines.base import Engine

TERMINAL = {"completed", "failed", "cancelled"}
ROOT = Path(__file__).resolve().parent.parent


def settings(**overrides: object) -> Settings:
    """Settings for tests: the fake engine, no `.env`, fast batching."""
    values: dict[str, object] = {
        "engine": "fake",
        "batch_timeout": 0.05,
        "fake_batch_latency": 0.0,
        "fake_item_latency": 0.0,
        "allow_private_urls": True,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


def text_page(lines: list[str], size: tuple[int, int] = (1240, 1754), font_size: int = 40) -> Image.Image:
    """An A4-like white page (150 dpi) with black text lines."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=font_size)
    for number, line in enumerate(lines):
        draw.text((100, 120 + number * int(font_size * 2)), line, fill="black", font=font)
    return image


def solid_image(seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A small image whose pixels differ for every seed."""
    image = Image.new("RGB", size, ((seed * 37) % 256, (seed * 91) % 256, (seed * 53) % 256))
    image.putpixel((seed % size[0], (seed // size[0]) % size[1]), (255 - seed % 256, 0, 0))
    return image


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@contextlib.asynccontextmanager
async def running_app(app_settings: Settings, engine: Engine | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its lifespan running, and an HTTP client talking to it in-process."""
    app = create_app(app_settings, engine)
    async with LifespanManager(app, startup_timeout=60):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ocr.test", timeout=30) as client:
            client.app = app  # type: ignore[attr-defined]  # for running_services
            yield client


def running_services(client: httpx.AsyncClient) -> Services:
    """The services of the app behind a `running_app` client (for tests that look inside)."""
    services = state_of(client.app).services  # type: ignore[attr-defined]
    assert services is not None, "the app has not started"
    return services


async def upload(client: httpx.AsyncClient, data: bytes, filename: str = "page.png", **form: object) -> httpx.Response:
    fields = {key: str(value) for key, value in form.items()}
    return await client.post("/ocr", files={"file": (filename, data, "application/octet-stream")}, data=fields)


async def wait_for_task(client: httpx.AsyncClient, task_id: str, timeout: float = 30) -> dict:
    return await _poll_until_ended(client, f"/ocr/{task_id}", timeout)


async def wait_for_batch(client: httpx.AsyncClient, batch_id: str, timeout: float = 30) -> dict:
    return await _poll_until_ended(client, f"/ocr/batch/{batch_id}", timeout)


async def _poll_until_ended(client: httpx.AsyncClient, path: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = (await client.get(path)).json()
        if body["status"] in TERMINAL:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} still {body['status']} after {timeout} s")
        await asyncio.sleep(0.02)


@contextlib.contextmanager
def stalling_server(seconds: float) -> Iterator[str]:
    """A server on 127.0.0.1 that waits `seconds` before answering each request (404)."""

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            time.sleep(seconds)
            with contextlib.suppress(OSError):  # the client may have gone (a cancelled download)
                self.send_error(404)

    with _serve(Handler) as base:
        yield base


@contextlib.contextmanager
def file_server(files: dict[str, bytes]) -> Iterator[str]:
    """Serve `files` on 127.0.0.1 (as application/octet-stream); yields the base URL."""

    class Handler(_QuietHandler):
        def do_GET(self) -> None:
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with _serve(Handler) as base:
        yield base


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    """Run `handler` on a free 127.0.0.1 port in a background thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class ServiceProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path


@contextlib.contextmanager
def service_process(workdir: Path, env: dict[str, str], start_timeout: float = 90) -> Iterator[ServiceProcess]:
    """`python run_service.py` as a user starts it: OCR_* settings from `env` (none inherited),
    a free loopback port, run from `workdir` (no `.env` there); ready once `/ready` says so."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    full_env.update({"OCR_HOST": "127.0.0.1", "OCR_PORT": str(port), "PYTHONPATH": str(ROOT), **env})
    log_path = workdir / "service.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "run_service.py")], cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"service did not start:\n{log_path.read_text()[-6000:]}")
                time.sleep(0.2)
            yield ServiceProcess(url, process, log_path)
        finally:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def poll_task(url: str, task_id: str, timeout: float = 120, wanted: set[str] = TERMINAL) -> dict:
    """Poll a service process until the task reaches a status in `wanted`."""
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(f"{url}/ocr/{task_id}", timeout=10).json()
        if body["status"] in wanted:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} still {body['status']} after {timeout} s")
        time.sleep(0.1)
