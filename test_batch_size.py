"""Find the largest batch that fits this GPU and recommend OCR_BATCH_SIZE (the probe's command line).

    python test_batch_size.py [--test-image PATH] [--engine NAME] [--max-batch N]
                              [--memory-limit-gb G] [--max-tokens N] [--repeats N]
                              [--waves N] [--no-confirm] [--write-env [PATH]]

The engine and model come from the same OCR_ settings (environment and .env) as the
service. The work is in ocr_service/probe/ (vLLM has a mode of its own there, because
it sizes its memory itself); this file only reads flags and prints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image
from pydantic import ValidationError

from ocr_service.config import Settings
from ocr_service.probe import (
    DEFAULT_MAX_BATCH,
    ProbeError,
    env_lines,
    format_report,
    render_test_page,
    run_probe,
    update_env_file,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--test-image", type=Path, help="a page to probe with (default: a rendered A4 text page)")
    add("--engine", help="override OCR_ENGINE (rapidocr, vllm, transformers, fake)")
    add(
        "--max-batch", type=int,
        help=f"largest batch to try (default {DEFAULT_MAX_BATCH}; on the CPU engine 4 per OCR_RAPIDOCR_THREADS)",
    )
    add("--memory-limit-gb", type=float, help="cap this process's GPU memory, to stand in for a smaller card")
    add(
        "--max-tokens", type=int,
        help="output tokens a page may generate (default OCR_DEFAULT_MAX_TOKENS; with vLLM, the sweep's pages "
        "generate exactly this many, default 512)",
    )
    add("--repeats", type=int, default=1, help="runs per batch size; the fastest counts (default 1)")
    add("--waves", type=int, default=2, help="vLLM: pages in flight measured this many times over after the first (default 2)")
    add(
        "--confirm", action=argparse.BooleanOptionalAction, default=True,
        help="vLLM: run the maximum of worst-case pages at once to confirm it (default on; long at a large context)",
    )
    add(
        "--write-env", nargs="?", const=Path(".env"), type=Path, metavar="PATH",
        help="write OCR_BATCH_SIZE and OCR_MAX_QUEUE_SIZE into a .env file (default ./.env), keeping its other lines",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = Settings(**({"engine": args.engine} if args.engine else {}))
    except ValidationError as exc:
        print(f"Invalid settings: {exc}", file=sys.stderr)
        return 2
    try:
        image = Image.open(args.test_image).convert("RGB") if args.test_image else render_test_page()
    except OSError as exc:
        print(f"Cannot read --test-image {args.test_image}: {exc}", file=sys.stderr)
        return 2
    try:
        result = run_probe(
            settings,
            image,
            max_batch=args.max_batch,
            memory_limit_gb=args.memory_limit_gb,
            max_tokens=args.max_tokens,
            repeats=args.repeats,
            waves=args.waves,
            confirm=args.confirm,
            log=lambda line: print(line, flush=True),
        )
    except ProbeError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    print()
    print(format_report(result))
    if result.recommendation is None:
        print(file=sys.stderr)
        print(result.failure or "No batch size fits.", file=sys.stderr)
        return 1
    if args.write_env is not None:
        update_env_file(args.write_env, env_lines(result.recommendation))
        print(f"\nWrote {', '.join(env_lines(result.recommendation))} to {args.write_env}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
