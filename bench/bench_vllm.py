#!/usr/bin/env python
"""DeepSeek-OCR on vLLM, the engine alone: pages/s and output tokens/s on your GPU.

For users with a GPU, vLLM and the real weights. It builds the service's own engine
(`build_engine`, so every OCR_* variable applies as in the service), loads
it once, and sends the pages the way the batcher does: all of them in flight at once
in batches of --batch-size (vLLM batches continuously; OCR_BATCH_SIZE is also its
max_num_seqs). Output tokens come from `PageOutput.output_tokens`. It prints the
published anchor next to its own figures, and one JSON line at the end.

    python bench/bench_vllm.py --model deepseek-ai/DeepSeek-OCR --pages 64 --batch-size 64
    python bench/bench_vllm.py --images ./scans --batch-size 32 --out vllm.json

Without vLLM (or without a GPU) it stops with a message that says so; --help always works.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The figures DeepSeek-OCR's authors published for vLLM on one A100-40G (PDF pages, Gundam mode).
ANCHOR = {"gpu": "A100-40G", "output_tokens_s": 2500, "pages_s": 2.3}
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp"}


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add = parser.add_argument
    add("--model", default="deepseek-ai/DeepSeek-OCR", help="OCR_MODEL_PATH: a Hugging Face id or a local folder")
    add("--images", type=Path, default=None,
        help="a folder of page images to read (sorted by name); default: --pages rendered A4 text pages")
    add("--pages", type=int, default=64, help="rendered pages when no --images is given (or the first N of --images)")
    add("--batch-size", type=int, default=64, help="OCR_BATCH_SIZE: pages per batch, and vLLM's max_num_seqs")
    add("--prompt", default="<image>\n<|grounding|>Convert the document to markdown.", help="the prompt of every page")
    add("--max-tokens", type=int, default=8192, help="max output tokens per page")
    add("--gpu-memory-util", type=float, default=0.8, help="OCR_GPU_MEMORY_UTIL")
    add("--max-model-len", type=int, default=8192, help="OCR_MAX_MODEL_LEN")
    add("--tensor-parallel-size", type=int, default=1, help="OCR_TENSOR_PARALLEL_SIZE")
    add("--warmup-pages", type=int, default=2, help="pages read once before timing (CUDA graphs, caches)")
    add("--out", default=None, help="also write the result to this JSON file")
    return parser.parse_args(argv)


def load_images(args: argparse.Namespace) -> list:
    from PIL import Image

    if args.images is None:
        from bench.pages import a4_text_page

        return [a4_text_page(seed) for seed in range(args.pages)]
    files = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[: args.pages]
    if not files:
        sys.exit(f"bench_vllm: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {args.images}")
    return [Image.open(path).convert("RGB") for path in files]


async def read_all(engine, requests: list, batch_size: int) -> tuple[float, list]:
    """Every batch in flight at once, as the batcher does for vLLM (max_batches_in_flight=None)."""
    outcomes: list = [None] * len(requests)

    async def one_batch(start: int) -> None:
        async for index, outcome in engine.run(requests[start:start + batch_size]):
            outcomes[start + index] = outcome

    started = time.perf_counter()
    await asyncio.gather(*(one_batch(s) for s in range(0, len(requests), batch_size)))
    return time.perf_counter() - started, outcomes


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if importlib.util.find_spec("vllm") is None:
        sys.exit("bench_vllm: vLLM is not installed. This benchmark needs an NVIDIA GPU, vLLM and the model weights: "
                 "pip install -r requirements_models.txt (see the README's GPU engines section), then run it again.")
    from ocr_service.config import Settings
    from ocr_service.engines.base import PageOutput, PageRequest
    from ocr_service.engines.registry import build_engine

    settings = Settings(_env_file=None, engine="vllm", model_path=args.model, batch_size=args.batch_size,  # type: ignore[call-arg]
                        gpu_memory_util=args.gpu_memory_util, max_model_len=args.max_model_len,
                        tensor_parallel_size=args.tensor_parallel_size)
    images = load_images(args)
    requests = [PageRequest.of_image(image, args.prompt, 0.0, args.max_tokens) for image in images]
    engine = build_engine(settings)
    print(f"loading {args.model} ...", file=sys.stderr, flush=True)
    engine.load()
    try:
        async def run() -> tuple[float, list]:
            await read_all(engine, requests[: args.warmup_pages], args.batch_size)
            return await read_all(engine, requests, args.batch_size)

        seconds, outcomes = asyncio.run(run())
    finally:
        engine.close()
    done = [o for o in outcomes if isinstance(o, PageOutput)]
    tokens = sum(o.output_tokens or 0 for o in done)
    result = {
        "model": args.model, "pages": len(requests), "pages_ok": len(done), "batch_size": args.batch_size,
        "seconds": round(seconds, 2), "pages_s": round(len(done) / seconds, 3),
        "output_tokens": tokens, "output_tokens_s": round(tokens / seconds, 1),
        "truncated_pages": sum(1 for o in done if o.finish_reason == "length"),
        "anchor": ANCHOR,
    }
    print(f"this GPU: {result['pages_s']} pages/s, {result['output_tokens_s']} output tokens/s; published anchor "
          f"({ANCHOR['gpu']}): about {ANCHOR['pages_s']} pages/s, {ANCHOR['output_tokens_s']} tokens/s",
          file=sys.stderr)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, separators=(",", ":")))


if __name__ == "__main__":
    main()
