"""Diagnosis: where the service loses time around an in-process GPU engine.

The same full batches of the same page, timed several ways in one run: `predict` on the
main thread with one image object repeated (the plain engine benchmark), on the main
thread with distinct decoded images (as the service has them), through
`asyncio.to_thread` (a shared pool: each call may land on another thread), through
`engine.run` (the engine's own worker thread, as the service calls it), and through
the service with long-polling clients. `/stats`' `engine_busy_s` says how much of the
service's time the engine itself took.

    python bench/gpu_engine_threads.py --out diag.json [--batch-sizes 4 16] [--batches 2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from PIL import Image

from bench.gpu_transformers import (
    PROMPT,
    KeepLoaded,
    a4_page,
    synchronize,
    time_service,
)
from ocr_service.engines.base import DecodedPage
from ocr_service.engines.transformers import TransformersOptions
from ocr_service.tiny_model import write_model


def timed(label: str, batches: int, pages: int, call: Any) -> dict[str, Any]:
    synchronize()
    started = time.perf_counter()
    for _ in range(batches):
        call()
    synchronize()
    seconds = time.perf_counter() - started
    row = {"how": label, "pages": pages * batches, "seconds": round(seconds, 3), "pages_per_s": round(pages * batches / seconds, 4)}
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--batches", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every variant")
    parser.add_argument("--tiny", action="store_true", help="the tiny model (a CPU dry run)")
    args = parser.parse_args()

    model_dir = Path(tempfile.mkdtemp(prefix="ocr2-"))
    write_model("deepseek-ocr2", model_dir, full_size=not args.tiny, weights=False)
    engine = KeepLoaded(TransformersOptions(str(model_dir), "gundam", ngram_size=30, window_size=90, ignore_eos=True))
    engine.load()
    page = a4_page()
    buffer = io.BytesIO()
    page.save(buffer, format="PNG")
    upload = buffer.getvalue()
    engine.predict([DecodedPage(page, PROMPT, 0.0, 8)])  # warm-up

    results: list[dict[str, Any]] = []
    for batch in args.batch_sizes:
        same = [DecodedPage(page, PROMPT, 0.0, args.new_tokens)] * batch
        distinct = [DecodedPage(Image.open(io.BytesIO(upload)).convert("RGB"), PROMPT, 0.0, args.new_tokens) for _ in range(batch)]
        pages = batch * args.batches

        async def shared_pool() -> None:
            for _ in range(args.batches):
                await asyncio.to_thread(lambda: Image.open(io.BytesIO(upload)).convert("RGB"))  # as decoding does
                await asyncio.to_thread(engine.predict, distinct)

        async def own_thread() -> None:
            for _ in range(args.batches):
                async for _index, _outcome in engine.run(distinct):
                    pass

        def service(poll_interval: float) -> Any:
            return lambda: asyncio.run(time_service(engine, upload, batch, pages, args.new_tokens, poll_interval))

        variants = {
            "main thread, one image object": lambda: [engine.predict(same) for _ in range(args.batches)],
            "main thread, distinct decoded images": lambda: [engine.predict(distinct) for _ in range(args.batches)],
            "asyncio.to_thread (shared pool)": lambda: asyncio.run(shared_pool()),
            "engine.run (its own thread)": lambda: asyncio.run(own_thread()),
            "service, long-poll": service(0.0),
            "service, polling every 0.05 s": service(0.05),
        }
        # Interleaved repeats: a drift of the machine hits every variant alike.
        for repeat in range(args.repeats):
            for how, call in variants.items():
                row = {"batch": batch, "repeat": repeat, **timed(how, 1, pages, call)}
                results.append(row)
                args.out.write_text(json.dumps(results, indent=2))
    print("\nbatch  median pages/s  (min..max over repeats)  how")
    for batch in args.batch_sizes:
        for how in dict.fromkeys(r["how"] for r in results):
            rates = sorted(r["pages_per_s"] for r in results if r["batch"] == batch and r["how"] == how)
            if rates:
                median = rates[len(rates) // 2]
                print(f"{batch:>5}  {median:>14}  ({rates[0]}..{rates[-1]})  {how}")

if __name__ == "__main__":
    main()
