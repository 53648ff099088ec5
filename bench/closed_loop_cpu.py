#!/usr/bin/env python
"""The GPU benchmark's client scenarios on this CPU, over the fake engine: what the engine
workers' transport and hints cost a batch, with no GPU.

The fake engine sleeps `--latency` seconds a batch (a GPU the CPU waits on). The service
(`OCR_BATCH_SIZE=16`, `OCR_BATCH_POLICY=timeout`, 2 s) runs it in its own process and in
one worker process; the pages are the rendered A4 page of `bench/gpu_transformers.py`.
Per layout: 16 clients that each send their next page when they have the last (long
polls), then 9 batches' pages posted at once. Batch time = median gap between batches'
last pages, the first batch left out; the ideal is `--latency`.

    python bench/closed_loop_cpu.py --out bench/results/cpu_closed_loop.json
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness
from bench.gpu_transformers import burst, closed_loop
from ocr_service.engines.sample_page import render_test_page

BATCH = 16


def wait_ready(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/ready", timeout=2).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("the service was not ready in time")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=2.0, help="the fake engine's seconds a batch")
    parser.add_argument("--batches", type=int, default=6, help="measured batches per figure (the first is extra)")
    parser.add_argument("--out", type=Path, help="also write the results here")
    args = parser.parse_args()
    buffer = io.BytesIO()
    render_test_page().save(buffer, format="PNG")
    upload = buffer.getvalue()
    results: dict[str, object] = {"latency_s": args.latency, "batch": BATCH, "batches": args.batches}
    for workers in (0, 1):
        settings = {
            "engine": "fake", "engine_workers": workers, "batch_size": BATCH, "batch_policy": "timeout",
            "batch_timeout": 2.0, "fake_batch_latency": args.latency, "fake_item_latency": 0,
            "max_queue_size": 1000, "max_connections_per_client": 1000,  # the clients stand for many users
        }
        with harness.service_process(settings) as service:
            wait_ready(service.base_url)
            results[f"workers_{workers}"] = {
                "long_poll": asyncio.run(closed_loop(service.base_url, upload, BATCH, args.batches, 0)),
                "burst": asyncio.run(burst(service.base_url, upload, BATCH * (args.batches + 1), BATCH)),
            }
        print(f"workers={workers}", json.dumps(results[f"workers_{workers}"]), flush=True)
    results["machine"] = {"python": platform.python_version(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
