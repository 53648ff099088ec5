"""The engine in worker processes (fake engine): routing, crashes and restarts, readiness, drain."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from ocr_service.engines.base import DecodedPage, PageRequest
from ocr_service.engines.fake import CRASH_MARKER
from tests.helpers import (
    encode,
    poll_task,
    running_app,
    service_process,
    settings,
    solid_image,
    upload,
    wait_for_task,
)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def workers_of(client: httpx.AsyncClient) -> list[dict]:
    return (await client.get("/stats")).json()["workers"]


async def test_pages_run_in_worker_processes_each_with_its_own_result() -> None:
    async with running_app(settings(engine_workers=2, batch_size=4, fake_batch_latency=0.2)) as client:
        workers = await workers_of(client)
        assert [w["state"] for w in workers] == ["ready", "ready"]
        assert len({w["pid"] for w in workers} | {os.getpid()}) == 3  # two processes of their own
        responses = await asyncio.gather(*(upload(client, encode(solid_image(seed))) for seed in range(16)))
        tasks = await asyncio.gather(*(wait_for_task(client, r.json()["task_id"]) for r in responses))
        stats = (await client.get("/stats")).json()
    for seed, task in enumerate(tasks):
        assert task["status"] == "completed"
        assert hashlib.sha256(solid_image(seed).tobytes()).hexdigest() in task["result"]
    assert stats["batches_run"] >= 4 and stats["mean_batch_size"] <= 4  # batches of up to 4, on both workers


async def test_a_worker_killed_mid_batch_is_restarted_and_nothing_is_lost() -> None:
    async with running_app(settings(engine_workers=2, batch_size=4, fake_batch_latency=1.0)) as client:
        responses = [await upload(client, encode(solid_image(seed))) for seed in range(8)]
        await asyncio.sleep(0.3)  # both workers hold a batch now
        busy = [w for w in await workers_of(client) if w["pages_in_flight"]]
        assert busy, "no worker was busy"
        os.kill(busy[0]["pid"], signal.SIGKILL)
        tasks = await asyncio.gather(*(wait_for_task(client, r.json()["task_id"], timeout=60) for r in responses))
        assert all(task["status"] == "completed" for task in tasks)  # retried on a live worker
        deadline = time.monotonic() + 60
        while (restarted := await workers_of(client))[busy[0]["id"]]["state"] != "ready":
            assert time.monotonic() < deadline, restarted
            await asyncio.sleep(0.2)
        assert restarted[busy[0]["id"]]["restarts"] == 1 and restarted[busy[0]["id"]]["pid"] != busy[0]["pid"]
        fresh = await upload(client, encode(solid_image(50)))
        assert (await wait_for_task(client, fresh.json()["task_id"], timeout=30))["status"] == "completed"
        metrics = (await client.get("/metrics")).text
    assert f'ocr_worker_restarts_total{{device="",worker="{busy[0]["id"]}"}} 1.0' in metrics


async def test_a_page_that_crashes_its_worker_twice_fails_alone() -> None:
    async with running_app(settings(engine_workers=2, batch_size=4, fake_batch_latency=0.3)) as client:
        poison = await upload(client, encode(solid_image(1)), prompt=CRASH_MARKER)
        others = [await upload(client, encode(solid_image(seed))) for seed in range(2, 7)]
        failed = await wait_for_task(client, poison.json()["task_id"], timeout=90)
        tasks = [await wait_for_task(client, r.json()["task_id"], timeout=90) for r in others]
    assert failed["status"] == "failed" and "the engine crashed on this page twice" in failed["error"]
    assert all(task["status"] == "completed" for task in tasks)


async def test_readiness_is_red_only_while_no_worker_is_alive() -> None:
    async with running_app(settings(engine_workers=1)) as client:
        (worker,) = await workers_of(client)
        os.kill(worker["pid"], signal.SIGKILL)
        seen: list[int] = []
        deadline = time.monotonic() + 60
        while not (seen and seen[-1] == 200 and 503 in seen):
            assert time.monotonic() < deadline, seen
            seen.append((await client.get("/ready")).status_code)
            await asyncio.sleep(0.02)
        (restarted,) = await workers_of(client)
    assert restarted["state"] == "ready" and restarted["restarts"] == 1


def test_sigterm_drains_the_workers_and_exits_zero(tmp_path: Path) -> None:
    env = {"OCR_ENGINE": "fake", "OCR_ENGINE_WORKERS": "2", "OCR_FAKE_BATCH_LATENCY": "2.0", "OCR_SHUTDOWN_GRACE": "10"}
    with service_process(tmp_path, env) as service:
        pids = [w["pid"] for w in httpx.get(f"{service.url}/stats").json()["workers"]]
        running = httpx.post(f"{service.url}/ocr", files={"file": ("p.png", encode(solid_image(1)))}).json()["task_id"]
        poll_task(service.url, running, 30, {"processing"})
        service.process.send_signal(signal.SIGTERM)
        # A long poll open while the batch ends in its worker gets its answer before the server closes.
        task = httpx.get(f"{service.url}/ocr/{running}", params={"wait": 30}, timeout=40).json()
        assert service.process.wait(timeout=30) == 0
    assert task["status"] == "completed"  # its batch finished within the grace
    deadline = time.monotonic() + 10
    while any(pid_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, "a worker outlived the service"
        time.sleep(0.1)


async def test_pages_hinted_to_a_worker_cross_once_and_read_right(monkeypatch: pytest.MonkeyPatch) -> None:
    from ocr_service.engines import workers as workers_module

    decoded: list[str] = []
    real_decode = workers_module.decode

    def counting_decode(page: PageRequest) -> DecodedPage | Exception:
        decoded.append(page.key)
        return real_decode(page)

    monkeypatch.setattr(workers_module, "decode", counting_decode)
    async with running_app(settings(engine_workers=1, batch_size=4, fake_batch_latency=1.0)) as client:
        responses = await asyncio.gather(*(upload(client, encode(solid_image(seed))) for seed in range(12)))
        tasks = await asyncio.gather(*(wait_for_task(client, r.json()["task_id"]) for r in responses))
    for seed, task in enumerate(tasks):  # the fake engine's text carries a digest of the pixels it got
        assert task["status"] == "completed"
        assert hashlib.sha256(solid_image(seed).tobytes()).hexdigest() in task["result"]
    # Batches two and three waited while the one before ran: their pages went to the worker
    # with the hint, and the batch itself named them by key.
    assert sorted(decoded) == sorted(set(decoded)) and len(decoded) == 12
