"""SIGTERM to a real `python run_service.py` with work in flight: it drains, answers, and exits 0."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import httpx

from tests.helpers import encode, poll_task, service_process, solid_image

FAKE_ENGINE = {"OCR_ENGINE": "fake", "OCR_BATCH_SIZE": "1", "OCR_FAKE_ITEM_LATENCY": "0"}


def submit(url: str, seed: int) -> str:
    response = httpx.post(f"{url}/ocr", files={"file": ("p.png", encode(solid_image(seed)))})
    assert response.status_code == 202, response.text
    return response.json()["task_id"]


def status(url: str, task_id: str) -> dict:
    return httpx.get(f"{url}/ocr/{task_id}", timeout=5).json()


def test_sigterm_lets_the_running_batch_finish_fails_the_waiting_and_exits_0(tmp_path: Path) -> None:
    env = {**FAKE_ENGINE, "OCR_FAKE_BATCH_LATENCY": "4", "OCR_SHUTDOWN_GRACE": "20", "OCR_LOG_FORMAT": "json"}
    with service_process(tmp_path, env) as service:
        url, process, log = service.url, service.process, service.log_path
        running = submit(url, 0)
        poll_task(url, running, 30, {"processing"})
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
        # A long poll open while the batch ends gets its answer: the server closes only after it.
        finished = httpx.get(f"{url}/ocr/{running}", params={"wait": 30}, timeout=40).json()
        assert finished["status"] == "completed"

        assert process.wait(timeout=40) == 0
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "ocr_service.access"]
    assert access and all(line["request_id"] for line in access)
    assert any(line.get("task_id") == running and line["status"] == 202 for line in access)


def test_sigterm_past_the_grace_fails_the_running_task_with_a_reason_and_exits_0(tmp_path: Path) -> None:
    env = {**FAKE_ENGINE, "OCR_FAKE_BATCH_LATENCY": "3", "OCR_SHUTDOWN_GRACE": "0.5"}
    with service_process(tmp_path, env) as service:
        url, process, log = service.url, service.process, service.log_path
        running = submit(url, 0)
        poll_task(url, running, 30, {"processing"})
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=40) == 0
        text = log.read_text()
    assert "did not finish within 0.5 s" in text and "failed 1 tasks still running at shutdown" in text
