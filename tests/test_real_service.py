"""The service as a user starts it: `python run_service.py`, a real port, the embedded engine."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import TERMINAL, encode, text_page

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real run_service.py process on the default engine (RapidOCR), from a clean folder."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    env.update({"OCR_HOST": "127.0.0.1", "OCR_PORT": str(port), "OCR_BATCH_TIMEOUT": "0.1", "PYTHONPATH": str(ROOT)})
    workdir = tmp_path_factory.mktemp("service")  # no .env there
    log = (workdir / "service.log").open("w")
    process = subprocess.Popen([sys.executable, str(ROOT / "run_service.py")], cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"service did not start:\n{(workdir / 'service.log').read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait(url: str, task_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/ocr/{task_id}").json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(0.2)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s")


def test_rapidocr_reads_a_rendered_page_through_a_real_process(service_url: str) -> None:
    page = text_page(["Invoice number 4711", "The quick brown fox jumps", "over the lazy dog"])
    response = httpx.post(f"{service_url}/ocr", files={"file": ("scan.png", encode(page), "image/png")})
    assert response.status_code == 202
    task = wait(service_url, response.json()["task_id"])
    assert task["status"] == "completed", task
    text = task["result"]
    for words in ("Invoice number 4711", "quick brown fox", "lazy dog"):
        assert words in text
    assert text.index("Invoice") < text.index("quick") < text.index("lazy")
    stats = httpx.get(f"{service_url}/stats").json()
    assert stats["engine"] == "rapidocr" and stats["completed"] >= 1


def test_invalid_setting_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    env.update({"OCR_BATCH_SIZE": "lots", "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, str(ROOT / "run_service.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "OCR_BATCH_SIZE" in result.stderr


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OCR_BATCH_POLICY=sometimes\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, str(ROOT / "run_service.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "OCR_BATCH_POLICY" in result.stderr
