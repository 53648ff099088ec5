"""GPU benchmark: the transformers engine at DeepSeek-OCR-2's real size, alone and through the service.

Random weights at the published dimensions (`ocr_service.tiny_model --full-size`), a
fixed output length (every page generates exactly `--new-tokens`, EOS ignored), and
the same rendered A4 page everywhere, so the numbers measure the machinery, not the
text. For each batch size: pages/s of the engine alone (`engine.predict`), then of
the service (uploads over HTTP to an in-process app wrapping the same loaded engine,
from the first POST to the last completed task). Results go to JSON as they come, so
a run cut short still leaves what it measured.

    python bench/gpu_transformers.py --out results.json [--batch-sizes 1 4 16] [--new-tokens 256] [--batches 2]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image, ImageDraw, ImageFont

from ocr_service.engines.base import PageOutput, PageRequest
from ocr_service.engines.transformers import TransformersEngine, TransformersOptions
from ocr_service.tiny_model import write_model

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


def a4_page() -> Image.Image:
    """An A4 page at 150 dpi with text: Gundam mode cuts it into 6 tiles (1121 image tokens)."""
    image = Image.new("RGB", (1240, 1754), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=32)
    for line in range(30):
        draw.text((100, 100 + line * 52), f"Line {line}: the quick brown fox jumps over the lazy dog 0123", fill="black", font=font)
    return image


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


class KeepLoaded(TransformersEngine):
    """The engine, kept loaded across the apps built around it (one load for the whole run)."""

    def close(self) -> None:
        self.free_memory()


def time_engine(engine: KeepLoaded, page: Image.Image, batch: int, batches: int, new_tokens: int) -> dict[str, Any]:
    requests = [PageRequest.of_image(page, PROMPT, 0.0, new_tokens) for _ in range(batch)]
    engine.reset_peak_memory()
    synchronize()
    started = time.perf_counter()
    tokens = 0
    for _ in range(batches):
        for outcome in engine.predict(requests):
            if not isinstance(outcome, PageOutput):
                raise RuntimeError(f"page failed: {outcome!r}")
            tokens += outcome.output_tokens or 0
    synchronize()
    seconds = time.perf_counter() - started
    pages = batch * batches
    return {
        "batch": batch,
        "pages": pages,
        "seconds": round(seconds, 3),
        "pages_per_s": round(pages / seconds, 4),
        "output_tokens_per_s": round(tokens / seconds, 1),
        "output_tokens": tokens,
        "peak_gpu_memory_gib": None if (peak := engine.peak_memory_bytes()) is None else round(peak / 2**30, 2),
    }


async def finish(client: Any, task_id: str, poll_interval: float) -> str:
    """Wait for a task to end: one long-poll (`?wait=`), or polling every `poll_interval` s.

    Short polls are what many clients do; they cost the server CPU time that an engine
    running in the same process (this one) competes with for the GIL.
    """
    while True:
        params = {"wait": 60} if poll_interval == 0 else {}
        status = (await client.get(f"/ocr/{task_id}", params=params)).json()["status"]
        if status in ("completed", "failed", "cancelled"):
            return status
        if poll_interval:
            await asyncio.sleep(poll_interval)


async def time_service(
    engine: KeepLoaded, upload: bytes, batch: int, pages: int, new_tokens: int, poll_interval: float = 0.0
) -> dict[str, Any]:
    import httpx
    from asgi_lifespan import LifespanManager

    from ocr_service.app import create_app
    from ocr_service.config import Settings

    settings = Settings(
        _env_file=None,
        engine="transformers",
        batch_size=batch,
        batch_policy="timeout",  # wait for full batches: the same batches as the engine alone
        batch_timeout=1.0,
        default_max_tokens=new_tokens,
        max_queue_size=max(100, pages),
    )
    app = create_app(settings, engine=engine)
    async with LifespanManager(app, startup_timeout=600, shutdown_timeout=600) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench", timeout=600) as client:
            started = time.perf_counter()
            posted = await asyncio.gather(
                *(client.post("/ocr", files={"file": ("page.png", upload, "image/png")}) for _ in range(pages))
            )
            task_ids = [response.json()["task_id"] for response in posted]
            finals = await asyncio.gather(*(finish(client, task_id, poll_interval) for task_id in task_ids))
            statuses = dict(zip(task_ids, finals, strict=True))
            seconds = time.perf_counter() - started
            stats = (await client.get("/stats")).json()
    completed = sum(1 for s in statuses.values() if s == "completed")
    return {
        "batch": batch,
        "pages": pages,
        "poll_interval_s": poll_interval,
        "completed": completed,
        "seconds": round(seconds, 3),
        "pages_per_s": round(completed / seconds, 4),
        "stats": {k: stats.get(k) for k in ("completed", "failed", "oom_events", "last_batch_size", "engine_busy_s") if k in stats},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--batches", type=int, default=2, help="full batches per measurement")
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument(
        "--poll-intervals", type=float, nargs="+", default=[0.0],
        help="how clients wait for results: 0 = long-poll (?wait=60), N = poll every N s",
    )
    parser.add_argument("--tiny", action="store_true", help="the tiny model instead (a CPU dry run of this script)")
    args = parser.parse_args()

    import torch
    import transformers

    results: dict[str, Any] = {
        "what": "DeepSeek-OCR-2 at published dimensions, random weights, transformers engine, gundam mode",
        "new_tokens_per_page": args.new_tokens,
        "page": "A4 1240x1754 px rendered text, 6 tiles + global view (1121 image tokens)",
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU)",
        "full_size": not args.tiny,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "engine": [],
        "service": [],
        "errors": [],
    }

    def save() -> None:
        args.out.write_text(json.dumps(results, indent=2))

    model_dir = Path(tempfile.mkdtemp(prefix="ocr2-full-"))
    started = time.perf_counter()
    write_model("deepseek-ocr2", model_dir, full_size=not args.tiny, weights=False)
    engine = KeepLoaded(TransformersOptions(str(model_dir), "gundam", ngram_size=30, window_size=90, ignore_eos=True))
    engine.load()
    params = sum(p.numel() for p in engine._model.parameters())
    results["parameters"] = params
    results["load_seconds"] = round(time.perf_counter() - started, 1)
    print(f"loaded {params / 1e9:.2f}B parameters in {results['load_seconds']} s", flush=True)
    page = a4_page()
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    upload = buffer.getvalue()

    time_engine(engine, page, 1, 1, 8)  # warm-up: kernels, allocator
    save()
    # Engine and service side by side for each size, so a run cut short keeps pairs.
    for batch in args.batch_sizes:
        try:
            row = time_engine(engine, page, batch, args.batches, args.new_tokens)
            results["engine"].append(row)
            print("engine", row, flush=True)
        except Exception as exc:  # keep measuring the other sizes
            results["errors"].append(f"engine batch {batch}: {exc!r}\n{traceback.format_exc()[-2000:]}")
            print("engine", batch, "failed:", exc, flush=True)
        save()
        if args.skip_service:
            continue
        for poll_interval in args.poll_intervals:
            try:
                row = asyncio.run(
                    time_service(engine, upload, batch, batch * args.batches, args.new_tokens, poll_interval)
                )
                results["service"].append(row)
                print("service", row, flush=True)
            except Exception as exc:
                results["errors"].append(f"service batch {batch}: {exc!r}\n{traceback.format_exc()[-2000:]}")
                print("service", batch, "failed:", exc, flush=True)
            save()
    print("\nbatch  engine pages/s  service pages/s (client wait)  ratio")
    for row in results["engine"]:
        for other in (r for r in results["service"] if r["batch"] == row["batch"]):
            wait = "long-poll" if other["poll_interval_s"] == 0 else f"poll every {other['poll_interval_s']:g} s"
            ratio = other["pages_per_s"] / row["pages_per_s"]
            print(f"{row['batch']:>5}  {row['pages_per_s']:>14}  {other['pages_per_s']:>8} ({wait:>16})  {ratio:.3f}")

if __name__ == "__main__":
    main()
