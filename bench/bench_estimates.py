#!/usr/bin/env python
"""How good are the service's estimates? Each one against what then happened.

Two figures, on a real `run_service.py` process:
- `estimated_wait_s`: a burst of tasks is posted at once (after a warm-up, so the rate
  is measured); each task's estimate, read right after it was accepted, is compared
  with the time it then took to finish (long polls, so no polling load).
- `Retry-After`: the queue is filled until a 503; the header's seconds are compared with
  how long it really took until a submission was accepted again (tried every 0.2 s).
The error of one estimate is |estimated - actual| / actual; the median and the 90th
percentile are reported. `Retry-After` is whole seconds (at least 1), so on a fast engine
it is a ceiling rather than an estimate: `in_time` says how often a client that waits
exactly `Retry-After` finds room.

    python bench/bench_estimates.py --engine fake
    python bench/bench_estimates.py --engine rapidocr --tasks 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness
from bench.pages import a4_text_page, encode_png

ENGINES = {
    # name -> (service settings, pages posted per task)
    "fake": ({"engine": "fake", "fake_batch_latency": 0.1, "fake_item_latency": 0.05, "batch_size": 8}, 1),
    "rapidocr": ({"engine": "rapidocr", "batch_size": 2}, 1),
}


def errors_of(pairs: list[tuple[float, float]]) -> dict[str, object]:
    errors = sorted(abs(estimated - actual) / actual for estimated, actual in pairs if actual > 0)
    return {
        "count": len(errors),
        "median_error": round(statistics.median(errors), 3) if errors else None,
        "p90_error": round(errors[int(0.9 * (len(errors) - 1))], 3) if errors else None,
        "pairs": [(round(e, 2), round(a, 2)) for e, a in pairs],
    }


async def post_page(http: httpx.AsyncClient, page: bytes) -> httpx.Response:
    return await http.post("/ocr", files={"file": ("page.png", page, "image/png")})


async def finish(http: httpx.AsyncClient, task_id: str) -> float:
    while True:
        body = (await http.get(f"/ocr/{task_id}", params={"wait": 60})).json()
        if body["status"] in harness.TERMINAL:
            return time.monotonic()


async def waits(base_url: str, pages: list[bytes], tasks: int, warmup: int) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        warm = [(await post_page(http, pages[i % len(pages)])).json()["task_id"] for i in range(warmup)]
        await asyncio.gather(*(finish(http, task_id) for task_id in warm))
        estimates: list[tuple[float, float | None]] = []
        endings: list[asyncio.Task[float]] = []
        for i in range(tasks):
            task_id = (await post_page(http, pages[i % len(pages)])).json()["task_id"]
            asked = time.monotonic()
            estimate = (await http.get(f"/ocr/{task_id}")).json().get("estimated_wait_s")
            estimates.append((asked, estimate))
            endings.append(asyncio.create_task(finish(http, task_id)))  # watching from now on
        done = await asyncio.gather(*endings)
    pairs = [(est, end - asked) for (asked, est), end in zip(estimates, done, strict=True) if est is not None]
    return errors_of(pairs) | {"without_estimate": sum(est is None for _, est in estimates)}


async def retry_afters(base_url: str, pages: list[bytes], rounds: int) -> dict[str, object]:
    pairs: list[tuple[float, float]] = []
    accepted: list[str] = []
    async with httpx.AsyncClient(base_url=base_url, timeout=120) as http:
        for i in range(rounds):
            while True:  # fill the queue
                response = await post_page(http, pages[i % len(pages)])
                if response.status_code == 503:
                    break
                accepted.append(response.json()["task_id"])
            refused_at = time.monotonic()
            retry_after = float(response.headers["Retry-After"])
            while True:
                await asyncio.sleep(0.2)
                response = await post_page(http, pages[i % len(pages)])
                if response.status_code == 202:
                    accepted.append(response.json()["task_id"])
                    break
            pairs.append((retry_after, time.monotonic() - refused_at))
        await asyncio.gather(*(finish(http, task_id) for task_id in accepted))
    return errors_of(pairs) | {"in_time": sum(actual <= estimated for estimated, actual in pairs) / len(pairs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=sorted(ENGINES), default="fake")
    parser.add_argument("--tasks", type=int, default=60, help="tasks in the measured burst")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10, help="503s whose Retry-After is checked")
    parser.add_argument("--out", type=Path, help="write the JSON result here too")
    args = parser.parse_args()
    settings, _ = ENGINES[args.engine]
    pages = [encode_png(a4_text_page(seed)) for seed in range(4)]
    result: dict[str, object] = {"engine": args.engine, "settings": settings, "machine": harness_machine()}
    with harness.service_process({**settings, "max_queue_size": 1000}) as service:
        result["estimated_wait_s"] = asyncio.run(waits(service.base_url, pages, args.tasks, args.warmup))
    with harness.service_process({**settings, "max_queue_size": 32}) as service:
        asyncio.run(waits(service.base_url, pages, 0, args.warmup))  # warm: the rate is known
        result["retry_after"] = asyncio.run(retry_afters(service.base_url, pages, args.rounds))
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    for name in ("estimated_wait_s", "retry_after"):
        figures = result[name]
        assert isinstance(figures, dict)
        print(f"{args.engine:9} {name:17} n={figures['count']:3} median error {figures['median_error']}"
              f"  p90 {figures['p90_error']}", file=sys.stderr)


def harness_machine() -> dict[str, object]:
    import os
    import platform

    return {"cpus": os.cpu_count(), "python": platform.python_version()}


if __name__ == "__main__":
    main()
