#!/usr/bin/env python
"""GPU benchmark: the vLLM engine at DeepSeek-OCR's published size, alone and through the service, and its guard.

One process, one engine load (random weights at the published dimensions, built by
`ocr_service.tiny_model --full-size`; CUDA graphs on; the attention backends given),
the project's own `VllmEngine`, the rendered A4 page of `bench/pages.py`, and a fixed
output length (every page generates exactly --new-tokens, EOS ignored). Parts:

- guard: the start-up canary's result (a blank page, 3-grams), then the same check
  on the A4 page with the service's own rule (30-grams in 90 tokens) over 512
  tokens; with --guard-off-engine, last, a second engine without the n-gram
  processor, whose start must refuse;
- engine: for each batch size B, vLLM's own throughput through `engine.run`: B pages
  kept in flight (a new one as each ends) for (--waves + 1) x B pages after a
  warm-up; steady state = the pages after the first B to end; the spread comes from
  each wave of B pages;
- service: the same pages posted to the service, driven by 2 x B closed-loop clients
  that post a page and long-poll (`GET /ocr/{id}?wait=30`) until it ends; the same
  steady-state measure; the ratio service/engine. `--service-mode subprocess` (the
  default) runs `run_service.py` as in production: vLLM in an engine worker process,
  `OCR_IGNORE_EOS=true` for the same fixed-length work, started anew for each batch
  size (`OCR_BATCH_SIZE` is vLLM's max_num_seqs) after the bench's own engine is
  closed, so the client never shares an interpreter with the service. `inprocess`
  serves an app of `create_app(settings, engine)` on a real uvicorn in this process
  around the already loaded engine: no second start, but the client shares the GIL.

Results go to JSON (and a log) as they come, each part in its own try, within a
global time budget, so a run cut short keeps what it measured. A table comes last.

    PYTHONPATH=/tmp/site:. python bench/gpu_vllm.py --out $OUT \\
        --attention-backend TRITON_ATTN --mm-encoder-attention-backend TORCH_SDPA
    python bench/gpu_vllm.py --out /tmp/cpu --tiny --batch-sizes 2 --new-tokens 8 --waves 1   # CPU dry run
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import io
import json
import logging
import platform
import statistics
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import client, free_port, multipart, service_process, submit_and_wait
from bench.pages import a4_text_page
from ocr_service.deepseek import DEFAULT_PROMPT, repeated_ngrams
from ocr_service.engines.base import PageOutput, PageRequest
from ocr_service.engines.vllm import VllmEngine, VllmOptions
from ocr_service.probe.vllm_mode import keep_in_flight

log = logging.getLogger("gpu_vllm")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add = parser.add_argument
    add("--out", type=Path, required=True, help="folder for gpu_vllm.json and gpu_vllm.log")
    add("--parts", default="guard,engine,service", help="comma-separated: guard, engine, service")
    add("--batch-sizes", type=int, nargs="+", default=[16, 64])
    add("--new-tokens", type=int, default=256, help="output tokens of every page (EOS ignored)")
    add("--waves", type=int, default=11, help="measured batches of B pages after the first (11: one is under 10%%)")
    add("--budget-s", type=float, default=540, help="stop starting new measurements past this many seconds")
    add("--model-dir", type=Path, default=Path("/tmp/dsocr"), help="model folder, built here when missing")
    add("--tiny", action="store_true", help="the tiny model and a one-view page (a CPU dry run of this script)")
    add("--gpu-memory-util", type=float, default=0.8)
    add("--max-model-len", type=int, default=8192)
    add("--attention-backend", default="", help="vLLM's attention backend, e.g. TRITON_ATTN (empty: vLLM's choice)")
    add("--mm-encoder-attention-backend", default="", help="the vision encoder's, e.g. TORCH_SDPA")
    add("--guard-off-engine", action="store_true", help="last: start an engine without the n-gram processor")
    add("--service-mode", choices=["subprocess", "inprocess"], default="subprocess", help="see the module's doc")
    return parser.parse_args(argv)


class Run:
    """The results so far, saved after every step, and the clock of the global budget."""

    def __init__(self, out: Path, budget_s: float) -> None:
        self.out = out
        self.started = time.monotonic()
        self.budget_s = budget_s
        self.results: dict[str, Any] = {"errors": [], "skipped": []}

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def save(self) -> None:
        (self.out / "gpu_vllm.json").write_text(json.dumps(self.results, indent=2, default=str))

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[None]:
        """Run one step: its error is recorded and the run goes on; results are saved either way."""
        log.info("-- %s (%.0f s left)", name, self.left())
        try:
            yield
        except Exception as exc:
            log.error("%s failed: %r", name, exc)
            self.results["errors"].append({"step": name, "error": repr(exc), "trace": traceback.format_exc()[-3000:]})
        finally:
            self.save()

    def afford(self, name: str, seconds: float | None) -> bool:
        """Whether an estimated `seconds` still fit the budget; a step that does not is recorded as skipped."""
        if seconds is not None and seconds > self.left():
            log.warning("skipping %s: needs about %.0f s, %.0f s left", name, seconds, self.left())
            self.results["skipped"].append({"step": name, "estimate_s": round(seconds), "left_s": round(self.left())})
            return False
        return True


def steady_state(finished: Sequence[float], batch: int, tokens_per_page: int) -> dict[str, Any]:
    """Pages/s after the first `batch` pages ended, with the spread over waves of `batch` pages."""
    ends = sorted(finished)
    waves = [
        batch / (ends[k + batch - 1] - ends[k - 1])
        for k in range(batch, len(ends) - batch + 1, batch)
        if ends[k + batch - 1] > ends[k - 1]
    ]
    window = ends[-1] - ends[batch - 1]
    rate = (len(ends) - batch) / window if window > 0 else 0.0
    quartiles = statistics.quantiles(waves, n=4) if len(waves) >= 2 else [None, None, None]
    return {
        "pages_measured": len(ends) - batch,
        "seconds": round(window, 3),
        "pages_per_s": round(rate, 4),
        "output_tokens_per_s": round(rate * tokens_per_page, 1),
        "wave_pages_per_s": {
            "median": round(statistics.median(waves), 4) if waves else None,
            "q1": None if quartiles[0] is None else round(quartiles[0], 4),
            "q3": None if quartiles[2] is None else round(quartiles[2], 4),
            "min": round(min(waves), 4) if waves else None,
            "max": round(max(waves), 4) if waves else None,
            "count": len(waves),
        },
    }


def engine_alone(engine: VllmEngine, page: PageRequest, batch: int, waves: int) -> dict[str, Any]:
    """B pages kept in flight through `engine.run`, after a warm-up of B pages."""
    asyncio.run(keep_in_flight(engine, page, batch, batch))  # warm-up: not counted
    finished, outcomes = asyncio.run(keep_in_flight(engine, page, batch, batch * (waves + 1)))
    return {"batch": batch, **_checked(outcomes, page.max_tokens), **steady_state(finished, batch, page.max_tokens)}


def _checked(outcomes: Sequence[object], tokens: int) -> dict[str, Any]:
    done = [o for o in outcomes if isinstance(o, PageOutput)]
    failed = [o for o in outcomes if not isinstance(o, PageOutput)]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(outcomes)} pages failed, first: {failed[0]!r}")
    return {"pages": len(done), "pages_with_exactly_new_tokens": sum(1 for o in done if o.output_tokens == tokens)}


class SharedEngine:
    """The loaded engine, lent to an app: the app's lifespan must neither load nor close it."""

    def __init__(self, engine: VllmEngine) -> None:
        self._engine = engine
        self.name = engine.name
        self.max_batches_in_flight = engine.max_batches_in_flight

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def run(self, pages: Any) -> Any:
        return self._engine.run(pages)


@contextlib.contextmanager
def served(app: Any) -> Iterator[str]:
    """A real uvicorn serving `app` on a free loopback port, in a thread of its own with its own loop."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 600  # the lifespan starts the batcher (the engine is already loaded)
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(120)


async def drive(base_url: str, body: bytes, clients: int, total: int) -> tuple[list[float], list[str]]:
    """`clients` clients post a page and long-poll until it ends, until `total` pages were sent; end times."""
    started = time.perf_counter()
    finished: list[float] = []
    outcomes: list[str] = []
    sent = 0
    async with client(base_url) as http:

        async def one() -> None:
            nonlocal sent
            while sent < total:
                sent += 1
                sample = await submit_and_wait(http, body)
                outcomes.append(sample.outcome)
                if sample.outcome == "completed":
                    finished.append(sample.ended - started)

        await asyncio.gather(*(one() for _ in range(clients)))
    return finished, outcomes


def measure_service(url: str, upload: bytes, batch: int, waves: int, new_tokens: int) -> dict[str, Any]:
    """A warm-up of B pages, then (waves + 1) x B pages from 2 x B long-polling clients."""
    body = multipart(upload)
    asyncio.run(drive(url, body, batch, batch))  # warm-up: not counted
    finished, outcomes = asyncio.run(drive(url, body, 2 * batch, batch * (waves + 1)))
    bad = [o for o in outcomes if o != "completed"]
    if bad:
        raise RuntimeError(f"{len(bad)} of {len(outcomes)} service pages did not complete: {sorted(set(bad))}")
    return {"batch": batch, "clients": 2 * batch, "pages": len(outcomes), **steady_state(finished, batch, new_tokens)}


def service_inprocess(engine: VllmEngine, upload: bytes, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    from ocr_service.app import create_app
    from ocr_service.config import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        engine="vllm",
        model_path=str(args.model_dir),
        batch_size=batch,
        default_max_tokens=args.new_tokens,
        max_queue_size=max(100, 4 * batch),
        log_level="WARNING",
    )
    with served(create_app(settings, engine=SharedEngine(engine))) as url:  # type: ignore[arg-type]
        row = measure_service(url, upload, batch, args.waves, args.new_tokens)
    return {"mode": "inprocess", **row}


def service_subprocess(upload: bytes, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    """`run_service.py` with vLLM in one engine worker, as on a one-GPU host."""
    settings = {
        "engine": "vllm",
        "engine_workers": 1,
        "model_path": args.model_dir,
        "batch_size": batch,
        "default_max_tokens": args.new_tokens,
        "ignore_eos": "true",
        "gpu_memory_util": args.gpu_memory_util,
        "max_model_len": args.max_model_len,
        "vllm_attention_backend": args.attention_backend,
        "vllm_mm_encoder_attention_backend": args.mm_encoder_attention_backend,
        "max_queue_size": max(100, 4 * batch),
        "shutdown_grace": 5,
    }
    started = time.perf_counter()
    with service_process(settings, start_timeout=900, stop_timeout=60) as service:
        wait_ready(service.base_url, 900)
        ready_s = time.perf_counter() - started
        row = measure_service(service.base_url, upload, batch, args.waves, args.new_tokens)
    wait_gpu_released()
    return {"mode": "subprocess", "start_to_ready_s": round(ready_s, 1), **row}


def wait_ready(base_url: str, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{base_url}/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise RuntimeError(f"the service was not ready within {timeout:.0f} s")


def gpu_used_bytes() -> int | None:
    """The GPU's used memory (NVML, all processes); None without a GPU or nvidia-ml-py."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return int(pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(0)).used)
    except Exception:  # no NVML here: nothing to wait for
        return None


def wait_gpu_released(timeout: float = 90, left_gib: float = 2.0) -> None:
    """Until a stopped vLLM's memory is back (its processes exit a little after the service), so the next start fits."""
    deadline = time.monotonic() + timeout
    while (used := gpu_used_bytes()) is not None and used > left_gib * 2**30 and time.monotonic() < deadline:
        time.sleep(1)


def guard_part(engine: VllmEngine, page: Any, run: Run) -> None:
    check = engine.guard_check
    run.results["guard"] = {"canary": check.as_dict() if check else None}
    run.save()
    with run.step("guard on the A4 page, the service's rule"):
        real = engine.check_guard(page, DEFAULT_PROMPT, max_tokens=512, ngram_size=30, window_size=90)
        run.results["guard"]["a4_service_rule"] = {
            **real.as_dict(),
            # the measure of the earlier GPU run: tokens that repeat an 8-gram of the page so far
            "eight_gram_repeats_with_guard": repeated_ngrams(real.guarded_ids, 8, 512),
            "eight_gram_repeats_without": repeated_ngrams(real.unguarded_ids, 8, 512),
        }


def guard_off_engine(options: VllmOptions, run: Run) -> None:
    """A second engine without the n-gram processor: its start must refuse, naming the fix."""
    engine = VllmEngine(dataclasses.replace(options, ngram_guard=False))
    started = time.perf_counter()
    try:
        engine.load()
    except RuntimeError as exc:
        refused = {"refused": True, "message": str(exc)}
    else:
        refused = {"refused": False, "check": engine.guard_check.as_dict() if engine.guard_check else None}
        engine.close()
    run.results["guard"]["engine_without_processor"] = {**refused, "seconds": round(time.perf_counter() - started, 1)}


def environment() -> dict[str, Any]:
    import torch
    import transformers
    import vllm

    return {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "vllm": vllm.__version__,
        "python": platform.python_version(),
    }


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    started = time.perf_counter()
    value = call()
    return value, time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        handlers=[logging.StreamHandler(sys.stdout), logging.FileHandler(args.out / "gpu_vllm.log")],
    )
    run = Run(args.out, args.budget_s)
    parts = set(args.parts.split(","))
    results = run.results
    results.update(
        what="DeepSeek-OCR through the service's VllmEngine, random weights, "
        + ("tiny model" if args.tiny else "published dimensions"),
        new_tokens_per_page=args.new_tokens,
        waves=args.waves,
        page="A4 1240x1754 px rendered text (bench/pages.py a4_text_page(0)), Gundam: 2x3 tiles + global view",
        engine_rows=[],
        service_rows=[],
    )
    with run.step("environment"):
        results["environment"] = environment()
    options = VllmOptions(
        model_path=str(args.model_dir),
        gpu_memory_util=args.gpu_memory_util,
        max_model_len=args.max_model_len,
        tensor_parallel_size=1,
        max_num_seqs=max(args.batch_sizes),
        ngram_size=30,
        window_size=90,
        resolution_mode="gundam",
        attention_backend=args.attention_backend,
        mm_encoder_attention_backend=args.mm_encoder_attention_backend,
        ignore_eos=True,
    )
    with run.step("model folder"):
        from ocr_service.tiny_model import write_model

        if not (args.model_dir / "config.json").exists():
            write_model("deepseek-ocr", args.model_dir, full_size=not args.tiny)
    image = a4_text_page(0)
    if args.tiny:
        image = image.resize((452, 640))  # one view: a CPU dry run stays minutes long
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    upload = buffer.getvalue()
    page = PageRequest.of_image(image, DEFAULT_PROMPT, 0.0, args.new_tokens)
    engine: VllmEngine | None = None
    if parts & {"guard", "engine"} or ("service" in parts and args.service_mode == "inprocess"):
        with run.step("engine load"):
            candidate = VllmEngine(options)
            _, seconds = timed(candidate.load)
            engine = candidate
            results["load_seconds"] = round(seconds, 1)
            capacity = engine.capacity()
            results["capacity"] = {**dataclasses.asdict(capacity), "kv_tokens": capacity.kv_tokens}
            log.info("loaded in %.1f s: %s", seconds, results["capacity"])
    estimate: dict[int, float] = {}  # seconds one measurement of a batch size takes, once known
    if engine is not None:
        try:
            if "guard" in parts:
                guard_part(engine, image, run)
            for batch in args.batch_sizes:
                if "engine" in parts and run.afford(f"engine batch {batch}", estimate.get(batch)):
                    with run.step(f"engine batch {batch}"):
                        row, seconds = timed(lambda: engine_alone(engine, page, batch, args.waves))
                        results["engine_rows"].append(row)
                        estimate[batch] = seconds
                        log.info("engine %s", row)
                inprocess = "service" in parts and args.service_mode == "inprocess"
                if inprocess and run.afford(f"service batch {batch}", estimate.get(batch)):
                    with run.step(f"service batch {batch} (in this process)"):
                        row = service_inprocess(engine, upload, batch, args)
                        results["service_rows"].append(row)
                        log.info("service %s", row)
        finally:
            engine.close()
    if "service" in parts and args.service_mode == "subprocess":
        wait_gpu_released()
        for batch in args.batch_sizes:
            needed = None if batch not in estimate else estimate[batch] + results.get("load_seconds", 0)
            if run.afford(f"service batch {batch}", needed):
                with run.step(f"service batch {batch} (run_service.py)"):
                    row = service_subprocess(upload, batch, args)
                    results["service_rows"].append(row)
                    log.info("service %s", row)
    if args.guard_off_engine and run.afford("engine without the processor", results.get("load_seconds")):
        with run.step("engine without the n-gram processor"):
            guard_off_engine(options, run)
    finish(run)


def finish(run: Run) -> None:
    results = run.results
    results["total_seconds"] = round(time.monotonic() - run.started, 1)
    run.save()
    lines = ["", f"{'batch':>5} {'engine pages/s':>15} {'tokens/s':>9} {'service pages/s':>16} {'tokens/s':>9} {'ratio':>6}"]
    for row in results.get("engine_rows", []):
        other = next((r for r in results.get("service_rows", []) if r["batch"] == row["batch"]), None)
        ratio = f"{other['pages_per_s'] / row['pages_per_s']:.3f}" if other and row["pages_per_s"] else "-"
        lines.append(
            f"{row['batch']:>5} {row['pages_per_s']:>15} {row['output_tokens_per_s']:>9} "
            f"{other['pages_per_s'] if other else '-':>16} {other['output_tokens_per_s'] if other else '-':>9} {ratio:>6}"
        )
    guard = results.get("guard", {})
    for name, check in (("canary", guard.get("canary")), ("A4, 30-gram rule", guard.get("a4_service_rule"))):
        if check:
            lines.append(
                f"guard {name}: {check['guarded_repeats']} repeated {check['ngram_size']}-grams with the rule, "
                f"{check['unguarded_repeats']} without, in {check['tokens']} tokens (runner {check['model_runner']})"
            )
    if "engine_without_processor" in guard:
        lines.append(f"engine without the processor: refused={guard['engine_without_processor']['refused']}")
    lines.append(f"errors: {len(results['errors'])}, skipped: {len(results['skipped'])}, total {results['total_seconds']} s")
    text = "\n".join(lines)
    (run.out / "gpu_vllm_table.txt").write_text(text + "\n")
    print(text, flush=True)


if __name__ == "__main__":
    main()
