"""Task stores that outlive a process: SQLite through a kill -9, Redis shared by two fronts.

Real servers only: `run_service.py` processes, a real `redis-server` (the tests start one on
a free loopback port; `.ci/run` installs it), a real SQLite file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import encode, free_port, poll_task, service_process, solid_image

SLOW_FAKE = {"OCR_ENGINE": "fake", "OCR_FAKE_BATCH_LATENCY": "0.5", "OCR_BATCH_SIZE": "4", "OCR_MAX_QUEUE_SIZE": "200"}

needs_redis = pytest.mark.skipif(
    shutil.which("redis-server") is None and not os.environ.get("OCR_TESTS_NEED_REDIS"),
    reason="redis-server is not installed here (.ci/run installs Debian's redis-server)",
)


def post(url: str, seed: int, prompt: str | None = None) -> str:
    data = {"prompt": prompt} if prompt else None
    response = httpx.post(f"{url}/ocr", files={"file": ("p.png", encode(solid_image(seed)))}, data=data, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["task_id"])


def long_poll(url: str, task_id: str) -> dict:
    deadline = time.monotonic() + 120
    while True:
        response = httpx.get(f"{url}/ocr/{task_id}", params={"wait": 30}, timeout=40)
        assert response.status_code == 200, (response.status_code, response.text)
        body = response.json()
        if body["status"] in ("completed", "failed", "cancelled") or time.monotonic() > deadline:
            return dict(body)


# -- SQLite ------------------------------------------------------------------------------


def test_sqlite_keeps_accepted_work_through_a_kill_9(tmp_path: Path) -> None:
    env = {**SLOW_FAKE, "OCR_FAKE_BATCH_LATENCY": "2", "OCR_STORE": "sqlite", "OCR_STORE_PATH": str(tmp_path / "tasks.sqlite3")}
    with service_process(tmp_path, env) as first:
        ids = [post(first.url, seed) for seed in range(20)]
        done_before = poll_task(first.url, ids[0], timeout=30)["result"]
        stats = httpx.get(f"{first.url}/stats").json()
        assert stats["pending"] >= 8, stats  # half are still waiting
        first.process.kill()  # kill -9: no drain, no goodbye
        first.process.wait()
    with service_process(tmp_path, env) as second:
        tasks = [poll_task(second.url, task_id, timeout=120) for task_id in ids]
        stats = httpx.get(f"{second.url}/stats").json()
    assert [task["status"] for task in tasks] == ["completed"] * 20
    assert tasks[0]["result"] == done_before  # finished before the kill: still readable, unchanged
    assert stats["completed"] == 20


def test_sqlite_shutdown_keeps_waiting_work_for_the_next_start(tmp_path: Path) -> None:
    env = {**SLOW_FAKE, "OCR_STORE": "sqlite", "OCR_STORE_PATH": str(tmp_path / "tasks.sqlite3")}
    with service_process(tmp_path, env) as first:
        ids = [post(first.url, seed) for seed in range(8)]
        first.process.send_signal(signal.SIGTERM)
        assert first.process.wait(30) == 0
    with service_process(tmp_path, env) as second:
        tasks = [poll_task(second.url, task_id, timeout=60) for task_id in ids]
    assert all(task["status"] == "completed" for task in tasks)  # none failed as "shutting down"


# -- Redis -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, text=True).stdout.strip() != "PONG":
            assert time.monotonic() < deadline and server.poll() is None, "redis-server did not start"
            time.sleep(0.1)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        server.wait(10)


@contextlib.contextmanager
def front(tmp_path: Path, redis_url: str, name: str, **extra: str) -> Iterator[str]:
    env = {**SLOW_FAKE, "OCR_STORE": "redis", "OCR_REDIS_URL": redis_url, "OCR_FRONT_ID": name, **extra}
    workdir = tmp_path / name
    workdir.mkdir(exist_ok=True)
    with service_process(workdir, env) as service:
        yield service.url


@needs_redis
def test_two_fronts_answer_for_each_others_tasks(tmp_path: Path, redis_url: str) -> None:
    with front(tmp_path, redis_url, "a") as a, front(tmp_path, redis_url, "b") as b:
        submitted = [(a if seed % 2 else b, post(a if seed % 2 else b, seed)) for seed in range(100)]
        other = {a: b, b: a}
        tasks = [long_poll(other[where], task_id) for where, task_id in submitted]  # every poll to the other front
        batches = httpx.post(f"{a}/ocr/url/batch", json={"urls": ["http://fuzz.invalid/x.png"]}).json()["batch_task_id"]
        batch = httpx.get(f"{b}/ocr/batch/{batches}").json()
    assert [task["status"] for task in tasks] == ["completed"] * 100  # and not one 404 (long_poll asserts 200)
    assert batch["batch_task_id"] == batches and batch["total"] == 1


@needs_redis
def test_a_task_is_cancelled_through_another_front(tmp_path: Path, redis_url: str) -> None:
    with front(tmp_path, redis_url, "c", OCR_FAKE_BATCH_LATENCY="2") as c, front(tmp_path, redis_url, "d") as d:
        busy = [post(c, seed) for seed in range(8)]  # two full batches: the last waits
        waiting = post(c, 99)
        cancelled = httpx.delete(f"{d}/ocr/{waiting}", timeout=20)
        finished = [long_poll(d, task_id) for task_id in busy]
        on_its_own_front = long_poll(c, waiting)
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert on_its_own_front["status"] == "cancelled"
    assert all(task["status"] == "completed" for task in finished)


@needs_redis
def test_a_restarted_front_keeps_its_finished_tasks_readable_and_finishes_its_work(tmp_path: Path, redis_url: str) -> None:
    with front(tmp_path, redis_url, "g") as g:
        with front(tmp_path, redis_url, "e") as e:
            ids = [post(e, seed) for seed in range(12)]
            first = long_poll(g, ids[0])
            # SIGTERM: e keeps its unfinished work in Redis and stops (no drain of the queue)
        assert long_poll(g, ids[0]) == first  # e is gone: its finished task reads the same through g
        with front(tmp_path, redis_url, "e") as e_again:
            tasks = [long_poll(e_again, task_id) for task_id in ids]
    assert [task["status"] for task in tasks] == ["completed"] * 12


@needs_redis
def test_the_work_of_a_front_that_dies_is_taken_over(tmp_path: Path, redis_url: str) -> None:
    with front(tmp_path, redis_url, "h") as h:
        env = {**SLOW_FAKE, "OCR_STORE": "redis", "OCR_REDIS_URL": redis_url, "OCR_FRONT_ID": "dies"}
        workdir = tmp_path / "dies"
        workdir.mkdir()
        with service_process(workdir, env) as dying:
            ids = [post(dying.url, seed) for seed in range(12)]
            dying.process.kill()
            dying.process.wait()
        tasks = [long_poll(h, task_id) for task_id in ids]  # taken over once its heartbeat expired
        stats = httpx.get(f"{h}/stats").json()
    assert [task["status"] for task in tasks] == ["completed"] * 12
    assert stats["completed"] >= 1
