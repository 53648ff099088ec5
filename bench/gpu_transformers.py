#!/usr/bin/env python
"""GPU benchmark: DeepSeek-OCR-2 at real size on the transformers engine, alone and through
the service (engine workers), at steady state, side by side in one run.

Random weights at the published dimensions (`ocr_service.tiny_model --full-size`), every
page generating exactly `--new-tokens` (EOS ignored), the same rendered A4 page
everywhere: the figures measure the machinery, not the text. Every figure is a steady
state: the engine is warmed up first, the first batch of each measurement is left out,
and each figure is the median (with min and max) over `--batches` batches.

1. Engine alone: `engine.run` back to back in this process, the next batch hinted
   (`prefetch`) while one runs, as the batcher does. Seconds per batch.
2. The service (`run_service.py`, one engine worker per GPU, timeout batching so the
   batches are full), over HTTP on loopback, for the client behaviours that matter:
   - `long-poll`: as many clients as a batch holds, each posting a page and waiting
     with `GET /ocr/{id}?wait=60`, again and again;
   - `poll-50ms`: the same clients polling every 50 ms;
   - `burst`: `--batches` full batches posted at once.
   Steady-state seconds per batch: the time between the first batch's last page and the
   last page, over the batches in between.
3. First batch after `/ready`: a fresh service, one full batch posted the moment it is
   ready; its time against the steady batch.
With `--gpus 2`, the burst also runs on a service with two workers (one per GPU), and
the two figures' ratio is the scaling.

    python bench/gpu_transformers.py --out /tmp/out.json [--batch 16] [--new-tokens 256] [--batches 8] [--gpus 1]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ocr_service.deepseek import DEFAULT_PROMPT
from ocr_service.engines.base import ImagePage, PageOutcome, PageOutput, PageRequest
from ocr_service.engines.sample_page import render_test_page
from ocr_service.engines.transformers import TransformersEngine, TransformersOptions
from ocr_service.tiny_model import write_model


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


# -- 1. the engine alone --------------------------------------------------------------


async def collect(run: AsyncIterator[tuple[int, PageOutcome]]) -> list[PageOutcome]:
    return [outcome async for _, outcome in run]


async def engine_alone(model_dir: Path, batch: int, batches: int, new_tokens: int, warmup: int) -> dict[str, Any]:
    options = TransformersOptions(
        str(model_dir), "gundam", 30, 90, ignore_eos=True, warmup_batch=batch, warmup_tokens=warmup
    )
    engine = TransformersEngine(options)
    started = time.perf_counter()
    await asyncio.to_thread(engine.load)
    load_s = time.perf_counter() - started
    page = render_test_page()

    def requests(number: int) -> list[PageRequest]:
        return [
            PageRequest(ImagePage(page), DEFAULT_PROMPT, 0.0, new_tokens, key=f"{number}/{i}") for i in range(batch)
        ]

    seconds: list[float] = []
    tokens = 0
    upcoming = requests(0)
    for number in range(batches + 1):
        current, upcoming = upcoming, requests(number + 1)
        began = time.perf_counter()
        running = asyncio.create_task(collect(engine.run(current)))
        await asyncio.sleep(0)  # the batch takes its hinted pages; a hint drops the pages it does not name
        engine.prefetch([upcoming])  # as the batcher does: the next batch is hinted while this one runs
        outcomes = await running
        if number:  # the first batch is left out
            seconds.append(time.perf_counter() - began)
        for outcome in outcomes:
            if not isinstance(outcome, PageOutput):
                raise RuntimeError(f"page failed: {outcome!r}")
            tokens += (outcome.output_tokens or 0) if number else 0
    peak = engine.peak_memory_bytes()
    engine.close()
    batch_s = spread(seconds)
    return {
        "load_s": round(load_s, 1),
        "batch_s": batch_s,
        "pages_per_s": round(batch / batch_s["median"], 3),
        "output_tokens_per_s": round(tokens / sum(seconds), 1),
        "peak_gpu_gib": None if peak is None else round(peak / 2**30, 2),
    }


# -- 2. the service -------------------------------------------------------------------


class Service:
    """`run_service.py` on the transformers engine in worker processes, on a loopback port."""

    def __init__(self, model_dir: Path, batch: int, new_tokens: int, warmup: int, devices: str, log: Path) -> None:
        self.port = 18000 + os.getpid() % 1000
        self.url = f"http://127.0.0.1:{self.port}"
        env = {key: value for key, value in os.environ.items() if not key.startswith("OCR_")}
        env.update(
            OCR_ENGINE="transformers",
            OCR_MODEL_PATH=str(model_dir),
            OCR_DEVICES=devices,
            OCR_BATCH_SIZE=str(batch),
            OCR_BATCH_POLICY="timeout",
            OCR_BATCH_TIMEOUT="2.0",
            OCR_DEFAULT_MAX_TOKENS=str(new_tokens),
            OCR_WARMUP_TOKENS=str(warmup),
            OCR_IGNORE_EOS="true",
            OCR_MAX_QUEUE_SIZE="1000",
            # The clients stand for up to 300 users but share one address, over the default 64 connections each.
            OCR_MAX_CONNECTIONS_PER_CLIENT="1000",
            OCR_HOST="127.0.0.1",
            OCR_PORT=str(self.port),
            OCR_LOG_LEVEL="WARNING",
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
        )
        self.log = log.open("a")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "run_service.py")],
            env=env,
            cwd=tempfile.mkdtemp(),
            stdout=self.log,
            stderr=self.log,
        )

    def wait_ready(self, timeout: float = 900) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}; see the log")
            try:
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the service was not ready in time")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


async def post(http: httpx.AsyncClient, upload: bytes) -> str:
    response = await http.post("/ocr", files={"file": ("page.png", upload, "image/png")})
    response.raise_for_status()
    return str(response.json()["task_id"])


async def wait(http: httpx.AsyncClient, task_id: str, poll_every: float) -> float:
    while True:
        params = {"wait": 60} if poll_every == 0 else None
        body = (await http.get(f"/ocr/{task_id}", params=params)).json()
        if body["status"] in ("completed", "failed", "cancelled"):
            if body["status"] != "completed":
                raise RuntimeError(f"task {task_id} {body['status']}: {body.get('error')}")
            return time.monotonic()
        if poll_every:
            await asyncio.sleep(poll_every)


def steady(finishes: list[float], batch: int) -> dict[str, Any]:
    """Seconds per batch from pages' finish times: after the first batch, to the last page."""
    finishes = sorted(finishes)
    first, last = finishes[batch - 1], finishes[-1]
    batches = (len(finishes) - batch) / batch
    return {"batch_s": round((last - first) / batches, 3), "pages": len(finishes) - batch, "batches": batches}


async def closed_loop(url: str, upload: bytes, clients: int, batches: int, poll_every: float) -> dict[str, Any]:
    finishes: list[float] = []
    target = clients * (batches + 1)
    # Idle connections expire before the server's 5 s keep-alive, so none is reused as the server closes it.
    async with httpx.AsyncClient(
        base_url=url, timeout=300, limits=httpx.Limits(max_connections=clients * 2, keepalive_expiry=2)
    ) as http:

        async def client() -> None:
            while len(finishes) < target:
                finishes.append(await wait(http, await post(http, upload), poll_every))

        await asyncio.gather(*(client() for _ in range(clients)))
    return steady(finishes[:target], clients)


async def burst(url: str, upload: bytes, pages: int, batch: int) -> dict[str, Any]:
    async with httpx.AsyncClient(
        base_url=url, timeout=600, limits=httpx.Limits(max_connections=pages + 4, keepalive_expiry=2)
    ) as http:
        ids = await asyncio.gather(*(post(http, upload) for _ in range(pages)))
        finishes = await asyncio.gather(*(wait(http, task_id, 0) for task_id in ids))
    return steady(list(finishes), batch)


async def first_batch(url: str, upload: bytes, batch: int) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=600) as http:
        started = time.monotonic()
        ids = await asyncio.gather(*(post(http, upload) for _ in range(batch)))
        finishes = await asyncio.gather(*(wait(http, task_id, 0) for task_id in ids))
    return max(finishes) - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, default=8, help="measured batches per figure (the first is extra)")
    parser.add_argument("--gpus", type=int, default=1, help="2: also a service with a worker on each of two GPUs")
    parser.add_argument(
        "--warmup-tokens", type=int, help="OCR_WARMUP_TOKENS of the engine and the service (default: --new-tokens)"
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny model (a CPU dry run of this script)")
    parser.add_argument(
        "--parts",
        default="engine,service1,service2",
        help="engine, service1, service2 (service2 needs --gpus 2); figures already in --out are kept, so the parts "
        "can run in separate calls on one machine",
    )
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    if args.warmup_tokens is None:
        args.warmup_tokens = args.new_tokens

    import torch
    import transformers

    earlier: dict[str, Any] = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: dict[str, Any] = {
        **earlier,
        "what": "DeepSeek-OCR-2 published dimensions, random weights, transformers engine, gundam mode, A4 page",
        "batch": args.batch,
        "new_tokens": args.new_tokens,
        "warmup_tokens": args.warmup_tokens,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
        "gpus_visible": torch.cuda.device_count(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "errors": earlier.get("errors", []),
    }

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=1))

    def attempt(name: str, work: Callable[[], Any]) -> None:
        try:
            results[name] = work()
            print(name, json.dumps(results[name]), flush=True)
        except Exception as exc:  # one figure failing must not lose the others
            results["errors"].append(f"{name}: {exc!r}\n{traceback.format_exc()[-3000:]}")
            print(name, "FAILED", exc, flush=True)
        save()

    model_dir = Path(tempfile.mkdtemp(prefix="ocr2-"))
    write_model("deepseek-ocr2", model_dir, full_size=not args.tiny, weights=False)
    buffer = io.BytesIO()
    render_test_page().save(buffer, format="PNG")
    upload = buffer.getvalue()
    log = args.out.with_suffix(".service.log")

    if "engine" in parts:
        attempt(
            "engine_alone",
            lambda: asyncio.run(engine_alone(model_dir, args.batch, args.batches, args.new_tokens, args.warmup_tokens)),
        )
        torch.cuda.empty_cache() if torch.cuda.is_available() else None

    def on_service(devices: str, measure: Callable[[str], Any]) -> Any:
        service = Service(model_dir, args.batch, args.new_tokens, args.warmup_tokens, devices, log)
        try:
            ready_s = service.wait_ready()
            return {"ready_s": round(ready_s, 1), **measure(service.url)}
        finally:
            service.stop()

    def one_gpu(url: str) -> dict[str, Any]:
        return {
            "first_batch_s": round(asyncio.run(first_batch(url, upload, args.batch)), 3),
            "long_poll": asyncio.run(closed_loop(url, upload, args.batch, args.batches, 0)),
            "poll_50ms": asyncio.run(closed_loop(url, upload, args.batch, args.batches, 0.05)),
            "burst": asyncio.run(burst(url, upload, args.batch * (args.batches + 1), args.batch)),
        }

    if "service1" in parts:
        attempt("service_1gpu", lambda: on_service("0", one_gpu))
    if args.gpus >= 2 and "service2" in parts:
        pages = 2 * args.batch * (args.batches + 1)
        attempt(
            "service_2gpu",
            lambda: on_service("0,1", lambda url: {"burst": asyncio.run(burst(url, upload, pages, 2 * args.batch))}),
        )

    engine = results.get("engine_alone", {}).get("batch_s", {}).get("median")
    service = results.get("service_1gpu", {})
    if engine and service:
        results["ratios"] = {
            name: round(engine / service[name]["batch_s"], 3)
            for name in ("long_poll", "poll_50ms", "burst")
            if name in service
        }
        results["first_batch_vs_steady"] = round(service["first_batch_s"] / engine, 3)
    two = results.get("service_2gpu", {}).get("burst", {}).get("batch_s")
    if two and service.get("burst"):
        # the 2-GPU run's batch_s is per pair of batches (one on each GPU): 2 batches in that time
        results["two_gpu_scaling"] = round(2 * service["burst"]["batch_s"] / two, 3)
    save()
    print(
        json.dumps(
            {k: results.get(k) for k in ("ratios", "first_batch_vs_steady", "two_gpu_scaling", "errors")}, indent=1
        )
    )


if __name__ == "__main__":
    main()
