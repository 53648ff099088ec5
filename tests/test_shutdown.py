"""SIGTERM to a real `python run_service.py` with work in flight: it drains, answers, and exits 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from tests.helpers import encode, solid_image
from tests.test_real_service import ROOT, free_port


@contextmanager
def service(tmp_path: Path, **env_overrides: str) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """A run_service.py process on the fake engine; yields its URL, the process and its log file."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    env.update({"OCR_HOST": "127.0.0.1", "OCR_PORT": str(port), "OCR_ENGINE": "fake", "OCR_BATCH_SIZE": "1",
                "OCR_FAKE_ITEM_LATENCY": "0", "PYTHONPATH": str(ROOT), **env_overrides})
    log_path = tmp_path / "service.log"
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, str(ROOT / "run_service.py")], cwd=tmp_path, env=env,
                                   stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/ready", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)
            yield url, process, log_path
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()


def submit(url: str, seed: int) -> str:
    response = httpx.post(f"{url}/ocr", files={"file": ("p.png", encode(solid_image(seed)))})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def status(url: str, task_id: str) -> dict:
    return httpx.get(f"{url}/ocr/{task_id}", timeout=5).json()


def wait_for_status(url: str, task_id: str, wanted: set[str], timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        body = status(url, task_id)
        if body["status"] in wanted:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def test_sigterm_lets_the_running_batch_finish_fails_the_waiting_and_exits_0(tmp_path: Path) -> None:
    with service(tmp_path, OCR_FAKE_BATCH_LATENCY="2", OCR_SHUTDOWN_GRACE="20", OCR_LOG_FORMAT="json") as (url, process, log):
        running = submit(url, 0)
        wait_for_status(url, running, {"processing"})
        waiting = [submit(url, seed) for seed in (1, 2)]

        process.send_signal(signal.SIGTERM)
        # While it drains it still answers: not ready, no new work, polls work.
        deadline = time.monotonic() + 10
        while httpx.get(f"{url}/ready").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = httpx.post(f"{url}/ocr", files={"file": ("p.png", encode(solid_image(7)))})
        assert refused.status_code == 503 and int(refused.headers["Retry-After"]) >= 1
        for task_id in waiting:
            failed = status(url, task_id)
            assert failed["status"] == "failed" and "shutting down" in failed["error"]
        assert wait_for_status(url, running, {"completed", "failed"})["status"] == "completed"

        assert process.wait(timeout=40) == 0
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "ocr_service.access"]
    assert access and all(line["request_id"] for line in access)
    assert any(line.get("task_id") == running and line["status"] == 202 for line in access)


def test_sigterm_past_the_grace_fails_the_running_task_with_a_reason_and_exits_0(tmp_path: Path) -> None:
    with service(tmp_path, OCR_FAKE_BATCH_LATENCY="3", OCR_SHUTDOWN_GRACE="0.5") as (url, process, log):
        running = submit(url, 0)
        wait_for_status(url, running, {"processing"})
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        text = log.read_text()
    assert "did not finish within 0.5 s" in text and "failed 1 tasks still running at shutdown" in text
