#!/usr/bin/env python
"""OCR_ENGINE=remote: the service over two `vllm serve` replicas, against the replicas driven directly.

Starts two replicas of a tiny random-weight DeepSeek-OCR (one CPU core each, as in
tests/models/test_remote_engine.py), or uses two running ones (`--urls`, e.g. one per
GPU), and measures, on the same pages, in closed-loop rounds (a round sends its pages
at once and ends when the last one is answered):

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
    python bench/bench_remote.py --urls http://127.0.0.1:8001,http://127.0.0.1:8002 \
        --per-replica 64 --page-size 1240x1754 --max-tokens 2048      # replicas on two GPUs

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
    add("--page-size", default="452x640", help="WxH of the rendered text pages (A4 at 150 dpi: 1240x1754)")
    add("--urls", default="", help="two running `vllm serve` base URLs, comma-separated; default: start two tiny "
        "CPU replicas here (needs the models virtualenv)")
    add("--out", type=Path, default=None, help="also write the JSON result here")
    return parser.parse_args(argv)


def page_images(count: int, size: str) -> list[Image.Image]:
    """Text pages; at most 640 px a side (the default) a page is one 1024 px view, no tiles."""
    width, height = (int(side) for side in size.split("x"))
    return [a4_text_page(seed, size=(width, height)) for seed in range(count)]


class DirectDriver:
    """Chat completions straight to one replica, built the way the remote engine builds them."""

    def __init__(self, url: str, pages: Sequence[EncodedPage], max_tokens: int) -> None:
        self.url = url
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


async def measure(args: argparse.Namespace, urls: Sequence[str]) -> dict[str, Any]:
    cap = args.per_replica
    images = page_images(2 * cap, args.page_size)
    encoded = [encode_page(PageRequest.of_image(image, PROMPT)) for image in images]
    pages = [page for page in encoded if isinstance(page, EncodedPage)]
    drivers = [DirectDriver(url, pages[i * cap:(i + 1) * cap], args.max_tokens) for i, url in enumerate(urls)]
    uploads = [harness.multipart(encode_png(image)) for image in images]
    settings = {
        "engine": "remote",
        "remote_urls": ",".join(urls),
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
    try:
        import vllm

        version = vllm.__version__
    except ImportError:  # --urls: the replicas run elsewhere
        version = None
    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "vllm_here": version,
        "load_average_at_start": os.getloadavg(),
    }


def tiny_replicas_measured(args: argparse.Namespace, info: dict[str, Any]) -> dict[str, Any]:
    """Start two tiny CPU replicas, measure, stop them."""
    if available_memory_gib() < 12:
        sys.exit(f"two replicas need ~12 GiB free; {available_memory_gib():.1f} GiB is")
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
            return asyncio.run(measure(args, [replica.url for replica in replicas]))
        finally:
            for replica in replicas:
                replica.stop()


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    info = machine()
    started = datetime.now(UTC)
    urls = [url.strip().rstrip("/") for url in args.urls.split(",") if url.strip()]
    if urls and len(urls) != 2:
        sys.exit("--urls takes two replica URLs")
    result = asyncio.run(measure(args, urls)) if urls else tiny_replicas_measured(args, info)
    info["load_average_at_end"] = os.getloadavg()
    report = {
        "benchmark": "remote",
        "command": "python bench/bench_remote.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": started.isoformat(timespec="seconds"),
        "machine": info,
        "settings": {"per_replica": args.per_replica, "rounds": args.rounds, "max_tokens": args.max_tokens,
                     "page": f"{args.page_size} text page", "replicas": urls or "two tiny CPU replicas, 1 thread each"},
        **result,
    }
    print(json.dumps(report))
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
