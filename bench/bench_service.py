#!/usr/bin/env python
"""The service against its engine alone, in one run: every service figure comes with its ratio.

Each scenario first runs the engine alone (loaded in this process, back-to-back batches
through `engine.run`) while no service runs, then starts a real `run_service.py` on a
free 127.0.0.1 port and drives it over HTTP. They never share the cores at the same time.
Every scenario ends by printing ONE JSON line (and writes it to --out when given).

    python bench/bench_service.py --engine fake --duration 20          # 1. saturation
    python bench/bench_service.py --scenario idle                      # 2. idle latency
    python bench/bench_service.py --scenario sweep                     # 3. latency vs load (plot)
    python bench/bench_service.py --scenario batch-sizes               #    throughput vs batch (plot)
    python bench/bench_service.py --scenario intake                    # 4. intake
    python bench/bench_service.py --scenario rapidocr                  # 5. RapidOCR vs RapidOCR
    python bench/bench_service.py --scenario memory                    # 6a. RSS per queued page
    python bench/bench_service.py --scenario soak                      # 6b. overload soak

BENCHMARKS.md has the figures these commands gave, the machine and the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

try:
    from bench import harness
except ModuleNotFoundError as missing:  # psutil and matplotlib: requirements_bench.txt
    MISSING: ModuleNotFoundError | None = missing
else:
    MISSING = None
from bench.pages import a4_text_page, encode_png, noise_png

PLOTS = ROOT / "bench" / "plots"
POLICIES = {  # name -> (OCR_BATCH_POLICY, OCR_BATCH_TIMEOUT)
    "adaptive": ("adaptive", 2.0),
    "timeout-2.0": ("timeout", 2.0),
    "timeout-0.1": ("timeout", 0.1),
}


# -- settings ------------------------------------------------------------------------


def engine_settings(args: argparse.Namespace, batch_size: int | None = None) -> dict[str, object]:
    """OCR_* settings shared by the service and the engine alone (lower-case, no prefix)."""
    settings: dict[str, object] = {"engine": args.engine, "batch_size": batch_size or args.batch_size}
    if args.engine == "fake":
        settings.update(fake_batch_latency=args.fake_batch_latency, fake_item_latency=args.fake_item_latency)
    if args.engine == "rapidocr":
        settings.update(rapidocr_threads=args.rapidocr_threads)
    return settings


def service_settings(args: argparse.Namespace, policy: str, batch_size: int | None = None,
                     **extra: object) -> dict[str, object]:
    name, timeout = POLICIES[policy]
    settings = engine_settings(args, batch_size)
    # The load generator stands for many clients from one address: the per-address cap on connections (64)
    # would close the long polls beyond it.
    settings.update(batch_policy=name, batch_timeout=args.batch_timeout if args.batch_timeout is not None else timeout,
                    max_queue_size=args.queue_size, max_connections_per_client=100_000)
    if args.engine_workers is not None:
        settings.update(engine_workers=args.engine_workers)
    settings.update(extra)
    return settings


def noise_bodies(count: int, side: int) -> tuple[list[bytes], list[bytes]]:
    """`count` distinct noise PNGs (encoded, and as multipart bodies)."""
    encoded = [noise_png(seed, side) for seed in range(count)]
    return encoded, [harness.multipart(data) for data in encoded]


def machine() -> dict[str, object]:
    import psutil

    return {
        "cpus": psutil.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def emit(args: argparse.Namespace, result: dict[str, Any]) -> None:
    """The one JSON line (also to --out): what BENCHMARKS.md quotes."""
    result = {"scenario": args.scenario, **result, "engine_workers": args.engine_workers, "machine": machine()}
    line = json.dumps(result, separators=(",", ":"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(line, flush=True)


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# -- measuring one load point ----------------------------------------------------------


async def load_point(service: harness.Service, bodies: Sequence[bytes], rate: float | None, clients: int | None,
                     duration: float, warmup: float, seed: int = 0) -> dict[str, Any]:
    """Drive the service for `duration` s (open loop at `rate`, or `clients` closed-loop
    clients); figures cover [warmup, duration): the pipeline filling is left out, and
    the mean batch size comes from /stats snapshots at the same two instants."""
    async with harness.client(service.base_url) as http:
        start = time.perf_counter()
        snapshots: dict[str, dict] = {}

        async def snapshot(name: str, at: float) -> None:
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            snapshots[name] = await harness.stats(http)

        snaps = [asyncio.create_task(snapshot("t0", warmup)), asyncio.create_task(snapshot("t1", duration))]
        if clients:
            samples = await harness.closed_loop(http, bodies, clients, duration)
            achieved = None
        else:
            assert rate is not None
            samples, achieved = await harness.open_loop(http, bodies, rate, duration, seed)
        await asyncio.gather(*snaps)
        await harness.wait_idle(http)
    figures = harness.summarize(samples, start + warmup, start + duration)
    figures.update(harness.batch_figures(snapshots["t0"], snapshots["t1"]))
    figures["offered_rate_s"] = None if achieved is None else round(achieved, 2)
    return figures


# -- 1. saturation (the default) ---------------------------------------------------------


def scenario_saturation(args: argparse.Namespace) -> None:
    """Offered load above capacity: the service should deliver what the engine can."""
    encoded, bodies = noise_bodies(args.pages, args.page_side)
    images = harness.decode_pages(encoded)
    alone = harness.engine_alone(engine_settings(args), images, args.batch_size, args.engine_batches)
    bound = float(alone["engine_bound_pages_s"])
    rate = args.rate or args.load * bound
    log(f"engine alone: {bound} pages/s; offering {rate:.1f}/s for {args.duration} s")
    with harness.service_process(service_settings(args, args.policy)) as service:
        figures = asyncio.run(load_point(service, bodies, None if args.clients else rate, args.clients,
                                         args.duration, args.warmup, args.seed))
    emit(args, {
        "throughput_pages_s": figures["throughput_pages_s"],
        **alone,
        "ratio": round(figures["throughput_pages_s"] / bound, 4),
        "p50_s": figures["p50_s"], "p95_s": figures["p95_s"], "p99_s": figures["p99_s"],
        "mean_batch_size": figures["mean_batch_size"],
        "batch_size": args.batch_size, "policy": args.policy, "engine": args.engine,
        "offered_rate_s": figures["offered_rate_s"], "load_x_capacity": round(rate / bound, 3),
        "clients": args.clients, "duration_s": args.duration, "warmup_s": args.warmup,
        "page_png_bytes": round(sum(map(len, encoded)) / len(encoded)),
        "requests": figures["requests"], "outcomes": figures["outcomes"],
    })


# -- 2. idle latency ---------------------------------------------------------------------


def scenario_idle(args: argparse.Namespace) -> None:
    """One request at a time: what the service adds to one page's engine time, per policy."""
    encoded, bodies = noise_bodies(args.pages, args.page_side)
    alone = harness.engine_alone(engine_settings(args), harness.decode_pages(encoded), 1, args.requests)
    engine_s = float(alone["engine_batch_s_mean"])
    results: dict[str, Any] = {}
    for policy in args.policies:
        with harness.service_process(service_settings(args, policy)) as service:
            samples = asyncio.run(_sequential(service, bodies, args.requests))
        added = [s.latency - engine_s for s in samples if s.outcome == "completed"]
        results[policy] = {
            "added_p50_ms": round(1000 * harness.percentile(added, 50), 2),
            "added_p99_ms": round(1000 * harness.percentile(added, 99), 2),
            "added_mean_ms": round(1000 * sum(added) / len(added), 2),
            "completed": len(added),
        }
        log(f"{policy}: {results[policy]}")
    emit(args, {"engine_one_page_s": engine_s, "requests": args.requests, "policies": results})


async def _sequential(service: harness.Service, bodies: Sequence[bytes], count: int) -> list[harness.Sample]:
    async with harness.client(service.base_url, 4) as http:
        await harness.submit_and_wait(http, bodies[0])  # connection and imports warm
        return [await harness.submit_and_wait(http, bodies[i % len(bodies)]) for i in range(count)]


# -- 3. latency against offered load -------------------------------------------------------


def scenario_sweep(args: argparse.Namespace) -> None:
    """Open-loop load from 10 % to 120 % of the engine-alone capacity, per policy; plot."""
    encoded, bodies = noise_bodies(args.pages, args.page_side)
    alone = harness.engine_alone(engine_settings(args), harness.decode_pages(encoded), args.batch_size,
                                 args.engine_batches)
    bound = float(alone["engine_bound_pages_s"])
    series: dict[str, list[dict[str, Any]]] = {}
    for policy in args.policies:
        series[policy] = []
        with harness.service_process(service_settings(args, policy)) as service:
            for load in args.loads:
                figures = asyncio.run(load_point(service, bodies, load * bound, None, args.duration, args.warmup,
                                                 args.seed))
                point = {"load": load, **{k: figures[k] for k in (
                    "offered_rate_s", "throughput_pages_s", "p50_s", "p95_s", "p99_s", "mean_batch_size")}}
                log(f"{policy} {point}")
                series[policy].append(point)
    plot_sweep(series, bound, args)
    emit(args, {**alone, "series": series})


def plot_sweep(series: dict[str, list[dict[str, Any]]], bound: float, args: argparse.Namespace) -> None:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    for policy, points in series.items():
        loads = [100 * p["load"] for p in points]
        line = axis.plot(loads, [p["p50_s"] for p in points], marker="o", label=f"{policy} p50")[0]
        axis.plot(loads, [p["p99_s"] for p in points], marker="x", linestyle="--", color=line.get_color(),
                  label=f"{policy} p99")
    axis.set_yscale("log")
    axis.set_xlabel(f"offered load, % of engine-alone capacity ({bound:.1f} pages/s)")
    axis.set_ylabel("latency, s (log)")
    axis.set_title(f"Latency vs offered load: fake engine {args.fake_batch_latency * 1000:g} ms + "
                   f"{args.fake_item_latency * 1000:g} ms/page, batch {args.batch_size}")
    axis.grid(True, which="both", alpha=0.3)
    axis.legend(fontsize=8)
    _save(figure, "latency_vs_load.png")


# -- throughput against batch size ----------------------------------------------------------


def scenario_batch_sizes(args: argparse.Namespace) -> None:
    """At --load x capacity for each batch size: service and engine alone; plot."""
    encoded, bodies = noise_bodies(args.pages, args.page_side)
    images = harness.decode_pages(encoded)
    points = []
    for size in args.batch_sizes:
        alone = harness.engine_alone(engine_settings(args, size), images, size, max(4, 64 // size))
        bound = float(alone["engine_bound_pages_s"])
        with harness.service_process(service_settings(args, args.policy, size)) as service:
            figures = asyncio.run(load_point(service, bodies, args.load * bound, None, args.duration, args.warmup,
                                             args.seed))
        point = {"batch_size": size, "engine_bound_pages_s": bound, "throughput_pages_s": figures["throughput_pages_s"],
                 "ratio": round(figures["throughput_pages_s"] / bound, 4), "mean_batch_size": figures["mean_batch_size"],
                 "p50_s": figures["p50_s"]}
        log(str(point))
        points.append(point)
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    sizes = [p["batch_size"] for p in points]
    axis.plot(sizes, [p["engine_bound_pages_s"] for p in points], marker="o", label="engine alone")
    axis.plot(sizes, [p["throughput_pages_s"] for p in points], marker="x", linestyle="--",
              label=f"service ({args.policy}, {args.load:g}x load)")
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [str(s) for s in sizes])
    axis.set_xlabel("OCR_BATCH_SIZE")
    axis.set_ylabel("pages/s")
    axis.set_title(f"Throughput vs batch size: fake engine {args.fake_batch_latency * 1000:g} ms + "
                   f"{args.fake_item_latency * 1000:g} ms/page")
    axis.grid(True, alpha=0.3)
    axis.legend()
    _save(figure, "throughput_vs_batch_size.png")
    emit(args, {"policy": args.policy, "load_x_capacity": args.load, "points": points})


# -- 4. intake -----------------------------------------------------------------------------


def scenario_intake(args: argparse.Namespace) -> None:
    """POST only, as fast as the service answers, from --client-procs processes of
    --clients coroutines each; counts 202s per second while the batcher drains them."""
    encoded, bodies = noise_bodies(args.pages, args.page_side)
    settings = service_settings(args, args.policy)
    with harness.service_process(settings) as service:
        jobs = [(service.base_url, bodies, args.clients, args.duration) for _ in range(args.client_procs)]
        with multiprocessing.get_context("spawn").Pool(args.client_procs) as pool:
            per_process = pool.starmap(_intake_worker, jobs)
        stats = asyncio.run(_final_stats(service))
    codes: dict[str, int] = {}
    for counts in per_process:
        for code, n in counts.items():
            codes[code] = codes.get(code, 0) + n
    accepted = codes.get("202", 0)
    emit(args, {
        "accepted_per_s": round(accepted / args.duration, 1), "codes": codes,
        "upload_bytes": round(sum(map(len, encoded)) / len(encoded)), "duration_s": args.duration,
        "clients": args.clients * args.client_procs, "client_procs": args.client_procs,
        "pages_run_by_end": stats["pages_processed"], "pages_queued_at_end": stats["pages_queued"],
        "mean_batch_size": stats["mean_batch_size"],
    })


def _intake_worker(base_url: str, bodies: Sequence[bytes], clients: int, duration: float) -> dict[str, int]:
    async def run() -> dict[str, int]:
        codes: dict[str, int] = {}
        stop = time.perf_counter() + duration
        async with harness.client(base_url, clients) as http:
            async def one(number: int) -> None:
                index = number
                while time.perf_counter() < stop:
                    try:
                        response = await http.post("/ocr", bodies[index % len(bodies)], harness.HEADERS)
                        key = str(response.status_code)
                    except harness.HTTP_ERRORS as exc:  # counted, not raised: the figure is what got through
                        key = type(exc).__name__
                    codes[key] = codes.get(key, 0) + 1
                    index += clients

            await asyncio.gather(*(one(n) for n in range(clients)))
        return codes

    return asyncio.run(run())


async def _final_stats(service: harness.Service) -> dict:
    async with harness.client(service.base_url, 2) as http:
        return await harness.stats(http)


# -- 5. RapidOCR ---------------------------------------------------------------------------


def scenario_rapidocr(args: argparse.Namespace) -> None:
    """The same rendered A4 pages through RapidOcrEngine alone and through the service.
    Both sides run exactly --requests pages; the service gets them all at once (a burst),
    and its figure runs from the first POST to the last result."""
    args.engine = "rapidocr"
    encoded = [encode_png(a4_text_page(seed)) for seed in range(args.requests)]
    images = harness.decode_pages(encoded)
    batches = args.requests // args.batch_size
    alone = harness.engine_alone(engine_settings(args), images, args.batch_size, batches)
    bound = float(alone["engine_bound_pages_s"])
    log(f"engine alone: {alone}")
    results: dict[str, Any] = {}
    for policy in args.policies:
        with harness.service_process(service_settings(args, policy)) as service:
            results[policy] = asyncio.run(_burst(service, [harness.multipart(d) for d in encoded]))
        results[policy]["ratio"] = round(results[policy]["throughput_pages_s"] / bound, 4)
        log(f"{policy}: {results[policy]}")
    emit(args, {**alone, "pages": args.requests, "rapidocr_threads": args.rapidocr_threads,
                "page_png_bytes": round(sum(map(len, encoded)) / len(encoded)), "service": results})


async def _burst(service: harness.Service, bodies: Sequence[bytes]) -> dict[str, Any]:
    async with harness.client(service.base_url) as http:
        before = await harness.stats(http)
        start = time.perf_counter()
        samples = await asyncio.gather(*(harness.submit_and_wait(http, b) for b in bodies))
        end = max(s.ended for s in samples)
        after = await harness.stats(http)
    done = [s for s in samples if s.outcome == "completed"]
    return {"throughput_pages_s": round(len(done) / (end - start), 3), "wall_s": round(end - start, 2),
            "completed": len(done),
            **harness.batch_figures(before, after)}


# -- 6. memory -----------------------------------------------------------------------------


def scenario_memory(args: argparse.Namespace) -> None:
    """Resident memory per queued page: a fake engine that sleeps an hour on the first
    page holds every later page in the queue; RSS is read after --warm-pages and again
    after --requests more pages."""
    encoded, bodies = noise_bodies(args.pages, args.page_side)
    settings = service_settings(args, "adaptive", 1, fake_batch_latency=3600, shutdown_grace=0)
    with harness.service_process(settings, stop_timeout=3) as service:
        asyncio.run(_post_all(service, bodies[:1], 1))  # the page the engine holds
        asyncio.run(_post_all(service, bodies, args.warm_pages))
        time.sleep(1)
        before = service.rss_mb()
        asyncio.run(_post_all(service, bodies, args.requests))
        time.sleep(1)
        after = service.rss_mb()
        queued = asyncio.run(_final_stats(service))["pages_queued"]
    page_bytes = sum(map(len, encoded)) / len(encoded)
    per_page = (after - before) * 2**20 / args.requests
    emit(args, {"rss_before_mb": round(before, 1), "rss_after_mb": round(after, 1), "pages_added": args.requests,
                "pages_queued": queued, "upload_bytes": round(page_bytes),
                "rss_per_page_bytes": round(per_page), "rss_per_page_x_encoded": round(per_page / page_bytes, 3)})


async def _post_all(service: harness.Service, bodies: Sequence[bytes], count: int, clients: int = 8) -> None:
    async with harness.client(service.base_url, clients) as http:
        async def worker(number: int) -> None:
            for index in range(number, count, clients):
                code, _ = await harness.submit(http, bodies[index % len(bodies)])
                if code != 202:
                    raise RuntimeError(f"POST /ocr answered {code}")

        await asyncio.gather(*(worker(n) for n in range(clients)))


def scenario_soak(args: argparse.Namespace) -> None:
    """--requests requests at --load x the fake capacity with a short TTL: 503s expected;
    then RSS must come back near its baseline once cleanup removed the finished tasks."""
    encoded, bodies = noise_bodies(args.pages, args.page_side)
    alone = harness.engine_alone(engine_settings(args), harness.decode_pages(encoded), args.batch_size,
                                 args.engine_batches)
    bound = float(alone["engine_bound_pages_s"])
    rate = args.load * bound
    settings = service_settings(args, args.policy, task_ttl=args.task_ttl, cleanup_interval=args.cleanup_interval)
    settle = args.task_ttl + 3 * args.cleanup_interval + 2
    with harness.service_process(settings) as service:
        asyncio.run(_sequential(service, bodies, 20))
        time.sleep(settle)
        baseline = service.rss_mb()
        log(f"baseline {baseline:.1f} MB; {args.requests} requests at {rate:.1f}/s")
        with harness.RssSampler(service) as sampler:
            started = time.perf_counter()
            samples, achieved = asyncio.run(_soak(service, bodies, rate, args.requests, args.seed))
            load_s = time.perf_counter() - started
            time.sleep(settle)
        after = service.rss_mb()
        final = asyncio.run(_final_stats(service))
    outcomes: dict[str, int] = {}
    for sample in samples:
        outcomes[sample.outcome] = outcomes.get(sample.outcome, 0) + 1
    emit(args, {**alone, "offered_rate_s": round(achieved, 1), "load_x_capacity": round(achieved / bound, 2),
                "requests": len(samples), "outcomes": outcomes, "load_s": round(load_s, 1),
                "rss_baseline_mb": round(baseline, 1), "rss_peak_mb": round(sampler.peak_mb, 1),
                "rss_after_mb": round(after, 1), "rss_after_minus_baseline_mb": round(after - baseline, 1),
                "tasks_left": final["total"], "expired_total": final["expired_total"],
                "task_ttl_s": args.task_ttl, "cleanup_interval_s": args.cleanup_interval,
                "queue_size": args.queue_size})


async def _soak(service: harness.Service, bodies: Sequence[bytes], rate: float, count: int,
                seed: int) -> tuple[list[harness.Sample], float]:
    async with harness.client(service.base_url) as http:
        return await harness.open_loop(http, bodies, rate, float("inf"), seed, max_requests=count)


# -- plumbing ----------------------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Any, name: str) -> None:
    PLOTS.mkdir(parents=True, exist_ok=True)
    figure.tight_layout()
    figure.savefig(PLOTS / name, dpi=110)
    log(f"wrote {PLOTS / name}")


SCENARIOS = {
    "saturation": scenario_saturation,
    "idle": scenario_idle,
    "sweep": scenario_sweep,
    "batch-sizes": scenario_batch_sizes,
    "intake": scenario_intake,
    "rapidocr": scenario_rapidocr,
    "memory": scenario_memory,
    "soak": scenario_soak,
}

# Per-scenario defaults, applied where the command line left an option unset (None).
DEFAULTS: dict[str, dict[str, Any]] = {
    "saturation": {},
    "idle": {"requests": 50},
    "sweep": {"duration": 8.0, "warmup": 2.0},
    "batch-sizes": {"duration": 8.0, "warmup": 2.0},
    "intake": {"duration": 10.0, "page_side": 128, "clients": 16, "queue_size": 1_000_000, "batch_size": 64,
               "fake_batch_latency": 0.001, "fake_item_latency": 0.0002},
    "rapidocr": {"requests": 16, "batch_size": 4, "policies": ["adaptive", "timeout-2.0"]},
    "memory": {"requests": 2000, "page_side": 128, "queue_size": 1_000_000},
    "soak": {"requests": 10_000, "load": 3.0, "page_side": 128, "batch_size": 8, "queue_size": 100,
             "fake_batch_latency": 0.05, "fake_item_latency": 0.02},
}
BASE = {"duration": 20.0, "warmup": 3.0, "batch_size": 16, "load": 1.2, "page_side": 64, "queue_size": 100_000,
        "fake_batch_latency": 0.05, "fake_item_latency": 0.01, "requests": 30, "clients": 0,
        "policies": ["adaptive", "timeout-2.0", "timeout-0.1"]}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="Options left unset take the scenario's default (see BENCHMARKS.md); the engine alone always runs "
               "first, with no service running, and the service on 127.0.0.1 only.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add = parser.add_argument
    add("--scenario", choices=sorted(SCENARIOS), default="saturation",
        help="what to measure: saturation (1), idle (2), sweep (3), batch-sizes (plot), intake (4), rapidocr (5), "
             "memory (6a), soak (6b)")
    add("--engine", choices=["fake", "rapidocr"], default="fake", help="OCR_ENGINE of the service and the engine alone")
    add("--duration", type=float, help="seconds of load per point (saturation 20, sweep/batch-sizes 8, intake 10)")
    add("--warmup", type=float, help="seconds at the start of each point left out of the figures (3; sweep 2)")
    add("--batch-size", type=int, help="OCR_BATCH_SIZE, and the engine-alone batch (16; intake 64, rapidocr 4, soak 8)")
    add("--policy", choices=sorted(POLICIES), default="adaptive",
        help="batch policy for saturation, batch-sizes, intake and soak (timeout-X = OCR_BATCH_POLICY=timeout, "
             "OCR_BATCH_TIMEOUT=X)")
    add("--policies", nargs="+", choices=sorted(POLICIES), help="policies compared by idle, sweep and rapidocr")
    add("--batch-timeout", type=float, default=None, help="override OCR_BATCH_TIMEOUT for every policy")
    add("--load", type=float, help="offered load as a multiple of the engine-alone pages/s (1.2; soak 3.0)")
    add("--rate", type=float, default=None, help="saturation: offered requests/s, instead of --load")
    add("--clients", type=int, help="saturation: closed-loop clients instead of open-loop arrivals (0 = open loop); "
                                    "intake: concurrent POSTers per client process (16)")
    add("--client-procs", type=int, default=1, help="intake: client processes, each with --clients coroutines")
    add("--loads", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.7, 0.9, 1.0, 1.2],
        help="sweep: offered loads as multiples of capacity")
    add("--batch-sizes", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32], help="batch-sizes: the sizes to run")
    add("--requests", type=int, help="idle: sequential requests per policy (50); rapidocr: pages per side (16); "
                                     "memory: pages queued (2000); soak: requests sent (10000)")
    add("--warm-pages", type=int, default=200, help="memory: pages queued before the first RSS reading")
    add("--pages", type=int, default=64, help="distinct noise pages to cycle through")
    add("--page-side", type=int, help="noise PNG side in px: 64 (~12 KB) by default, 128 (~49 KB) for intake, "
                                      "memory and soak")
    add("--queue-size", type=int, help="OCR_MAX_QUEUE_SIZE (100000; intake and memory 1000000; soak 100)")
    add("--fake-batch-latency", type=float, help="OCR_FAKE_BATCH_LATENCY, s per batch (0.05)")
    add("--fake-item-latency", type=float, help="OCR_FAKE_ITEM_LATENCY, s per page (0.01; soak 0.02)")
    add("--rapidocr-threads", type=int, default=2, help="OCR_RAPIDOCR_THREADS (one onnxruntime thread each)")
    add("--engine-workers", type=int, default=None,
        help="OCR_ENGINE_WORKERS of the service (default: the service's; 0 = the engine in its process)")
    add("--engine-batches", type=int, default=20, help="back-to-back batches the engine alone runs")
    add("--task-ttl", type=float, default=2.0, help="soak: OCR_TASK_TTL, s")
    add("--cleanup-interval", type=float, default=1.0, help="soak: OCR_CLEANUP_INTERVAL, s")
    add("--seed", type=int, default=0, help="seed of the Poisson arrivals")
    add("--out", default=None, help="also write the result, indented, to this JSON file")
    args = parser.parse_args(argv)
    for key, value in {**BASE, **DEFAULTS[args.scenario]}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if MISSING is not None:
        sys.exit(f"the benchmarks need {MISSING.name}: pip install -r requirements_bench.txt")
    SCENARIOS[args.scenario](args)


if __name__ == "__main__":
    main()
