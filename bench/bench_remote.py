#!/usr/bin/env python
"""OCR_ENGINE=remote: the service over two `vllm serve` replicas, against the replicas driven directly.

Starts two replicas of a tiny random-weight DeepSeek-OCR (one CPU core each, as in
tests/models/test_remote_engine.py) and measures, on the same pages, in closed-loop
rounds (a round sends its pages at once and ends when the last one is answered):

  alone-0, alone-1  each replica driven alone at its cap (`--per-replica` requests at once,
                    straight to its /v1/chat/completions, the other replica idle);
  both-direct       both replicas driven directly at the same time (what the cores give);
  service           `run_service.py` with OCR_ENGINE=remote over both replicas, 2 x cap
                    single-page uploads at once, each long-polled until it ends.

One cycle runs one round of each, in that order; cycles repeat `--rounds` times after a
warm-up cycle that is left out, so a change in the machine's load hits every phase
alike. Pages/s per phase is the median over the rounds; the headline is
service / (alone-0 + alone-1). Needs the models virtualenv (bash .ci/models.sh):

    .venv-models/bin/python bench/bench_remote.py --out bench/results/cpu_remote.json

A CPU figure: the tiny model keeps the full-size vision towers, so a page costs seconds
of encoder time on one core, and `--max-tokens` is kept small.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx
from PIL import Image

from bench import harness
from bench.pages import a4_text_page, encode_png
from ocr_service.engines.base import PageRequest
from ocr_service.engines.remote import EncodedPage, chat_request, encode_page
from tests.helpers import free_port
from tests.models.support import VllmReplica, available_memory_gib, tiny_model

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--per-replica", type=int, default=4, help="each replica's cap: OCR_BATCH_SIZE and its --max-num-seqs")
    add("--rounds", type=int, default=4, help="measured cycles, after one warm-up cycle")
    add("--max-tokens", type=int, default=8, help="max output tokens per page")
    add("--out", type=Path, default=None, help="also write the JSON result here")
    return parser.parse_args(argv)


def page_images(count: int) -> list[Image.Image]:
    """Half-A4 text pages at most 640 px a side: one 1024 px global view each, no tiles."""
    return [a4_text_page(seed, size=(452, 640)) for seed in range(count)]


class DirectDriver:
    """Chat completions straight to one replica, built the way the remote engine builds them."""

    def __init__(self, replica: VllmReplica, pages: Sequence[EncodedPage], max_tokens: int) -> None:
        self.url = replica.url
        model = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"][0]["id"]
        ids = [
            httpx.post(f"{self.url}/tokenize", json={"prompt": token, "add_special_tokens": False}, timeout=10).json()["tokens"][0]
            for token in ("<td>", "</td>")
        ]
        self.bodies = [
            json.dumps(chat_request(model=model, prompt=PROMPT, image_uri=page.data_uri, temperature=0.0,
                                    max_tokens=max_tokens, ngram_size=30, window_size=90, table_cell_ids=ids)).encode()
            for page in pages
        ]

    async def round(self, client: httpx.AsyncClient) -> float:
        started = time.perf_counter()
        answers = await asyncio.gather(*(
            client.post(f"{self.url}/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
            for body in self.bodies
        ))
        elapsed = time.perf_counter() - started
        bad = [answer.status_code for answer in answers if answer.status_code != 200]
        if bad:
            raise RuntimeError(f"{self.url} answered {bad}")
        return elapsed


async def service_round(http: harness.LoopbackClient, uploads: Sequence[bytes]) -> float:
    started = time.perf_counter()
    samples = await asyncio.gather(*(harness.submit_and_wait(http, body) for body in uploads))
    elapsed = time.perf_counter() - started
    bad = [sample.outcome for sample in samples if sample.outcome != "completed"]
    if bad:
        raise RuntimeError(f"service pages ended {bad}")
    return elapsed


async def measure(args: argparse.Namespace, replicas: Sequence[VllmReplica]) -> dict[str, Any]:
    cap = args.per_replica
    images = page_images(2 * cap)
    encoded = [encode_page(PageRequest.of_image(image, PROMPT)) for image in images]
    pages = [page for page in encoded if isinstance(page, EncodedPage)]
    drivers = [DirectDriver(replica, pages[i * cap:(i + 1) * cap], args.max_tokens) for i, replica in enumerate(replicas)]
    uploads = [harness.multipart(encode_png(image)) for image in images]
    settings = {
        "engine": "remote",
        "remote_urls": ",".join(replica.url for replica in replicas),
        "batch_size": cap,
        "default_max_tokens": args.max_tokens,
        "default_prompt": PROMPT,
        "max_queue_size": 4 * cap,
    }
    times: dict[str, list[float]] = {"alone-0": [], "alone-1": [], "both-direct": [], "service": []}
    limits = httpx.Limits(max_connections=4 * cap)
    with harness.service_process(settings, start_timeout=300) as service:
        async with httpx.AsyncClient(timeout=900, limits=limits) as client, harness.client(service.base_url) as http:
            for cycle in range(args.rounds + 1):
                measured = {
                    "alone-0": await drivers[0].round(client),
                    "alone-1": await drivers[1].round(client),
                    "both-direct": max(await asyncio.gather(*(driver.round(client) for driver in drivers))),
                    "service": await service_round(http, uploads),
                }
                print(f"cycle {cycle}{' (warm-up, left out)' if cycle == 0 else ''}: "
                      + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in measured.items()), flush=True)
                if cycle > 0:
                    for name, seconds in measured.items():
                        times[name].append(seconds)
    pages_per_round = {"alone-0": cap, "alone-1": cap, "both-direct": 2 * cap, "service": 2 * cap}
    rates = {name: pages_per_round[name] / statistics.median(seconds) for name, seconds in times.items()}
    summed = rates["alone-0"] + rates["alone-1"]
    return {
        "round_seconds": times,
        "pages_per_round": pages_per_round,
        "pages_per_s": {name: round(rate, 4) for name, rate in rates.items()},
        "sum_alone_pages_per_s": round(summed, 4),
        "ratio_service_to_sum_alone": round(rates["service"] / summed, 3),
        "ratio_service_to_both_direct": round(rates["service"] / rates["both-direct"], 3),
    }


def machine() -> dict[str, Any]:
    import vllm

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "vllm": vllm.__version__,
        "load_average_at_start": os.getloadavg(),
    }


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if available_memory_gib() < 12:
        sys.exit(f"two replicas need ~12 GiB free; {available_memory_gib():.1f} GiB is")
    info = machine()
    started = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as work:
        model = tiny_model("deepseek-ocr", Path(work) / "tiny-ocr")
        cores = os.cpu_count() or 1
        replicas = [
            VllmReplica(model, free_port(), core=i % cores, log_path=Path(work) / f"replica-{i}.log", max_num_seqs=args.per_replica)
            for i in range(2)
        ]
        try:
            for replica in replicas:
                replica.start()
            for replica in replicas:
                replica.wait_healthy()
            info["replica_rss_gib"] = [round(replica.rss_gib(), 2) for replica in replicas]
            result = asyncio.run(measure(args, replicas))
        finally:
            for replica in replicas:
                replica.stop()
    info["load_average_at_end"] = os.getloadavg()
    report = {
        "benchmark": "remote",
        "command": "python bench/bench_remote.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started.isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"per_replica": args.per_replica, "rounds": args.rounds, "max_tokens": args.max_tokens,
                     "page": "452x640 text page (one 1024 px view)", "replica_threads": 1},
        **result,
    }
    print(json.dumps(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
