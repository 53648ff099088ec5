#!/usr/bin/env python
"""What the decoder pool costs: open and decode per page through the pool against in-process.

The in-process figures call the decoding code the children run (`ImageDocument`,
`PdfDocument`) directly in this process, as the service did before the pool; the pool
figures go through `open_document` and `PooledDocument.load_page`, children already
started. Pages: an A4 text page as a PNG (1240x1754, 150 dpi), the same page as a
scanned PDF (an image at 150 dpi, drawn at 144 dpi: 1190x1684), an A4 PDF page of vector text
(matplotlib, 50 lines), and blank pages of 16 MP (the PDF raster cap) and 60 MP (the
pixel cap). The raw transfer (pipe + Pillow image, no drawing) is timed on its own.

    python bench/sandbox_overhead.py --repeat 30 --json bench/results/sandbox.json
"""

from __future__ import annotations

import argparse
import io
import json
import math
import multiprocessing
import statistics
import sys
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import pypdfium2 as pdfium
from PIL import Image

from bench.pages import a4_text_page, encode_png
from ocr_service.documents import DecoderPool, DocumentLimits, open_document
from ocr_service.documents.images import ImageDocument
from ocr_service.documents.pdf import PdfDocument

LIMITS = DocumentLimits(max_pixels=60_000_000, max_pdf_pages=500, pdf_dpi=144)
UNCAPPED = DocumentLimits(max_pixels=60_000_000, max_pdf_pages=500, pdf_dpi=144, pdf_max_pixels=60_000_000)


def text_pdf(lines: int = 50) -> bytes:
    """One A4 page of vector text (matplotlib embeds the font)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure = pyplot.figure(figsize=(8.27, 11.69))
    for number in range(lines):
        figure.text(0.08, 0.95 - number * 0.018, f"Line {number}: the quick brown fox jumps over the lazy dog, invoice 4711.")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="pdf")
    pyplot.close(figure)
    return buffer.getvalue()


def blank_pdf(width_pt: float, height_pt: float) -> bytes:
    document = pdfium.PdfDocument.new()
    document.new_page(width_pt, height_pt)
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def scanned_pdf(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PDF", resolution=150)
    return buffer.getvalue()


def timed(work: Callable[[], object], repeat: int) -> dict[str, float]:
    return paired({"": work}, repeat)[""]


def paired(works: dict[str, Callable[[], object]], repeat: int) -> dict[str, dict[str, float]]:
    """Time each of `works` `repeat` times, taking turns, so that load on a shared machine
    falls on all of them alike; median and 90th percentile in milliseconds."""
    seconds: dict[str, list[float]] = {name: [] for name in works}
    for work in works.values():
        work()  # warm up
    for _ in range(repeat):
        for name, work in works.items():
            start = time.perf_counter()
            work()
            seconds[name].append(time.perf_counter() - start)
    return {name: _summary(values) for name, values in seconds.items()}


def _summary(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    return {
        "median_ms": round(1000 * statistics.median(values), 2),
        "p90_ms": round(1000 * values[int(0.9 * (len(values) - 1))], 2),
    }


def in_process(data: bytes, limits: DocumentLimits) -> tuple[Callable[[], object], Callable[[], object]]:
    """Open and decode as the service did before the pool: the children's code, called here."""
    if data.startswith(b"%PDF"):
        document = PdfDocument.open(data, limits)
        return (lambda: PdfDocument.open(data, limits)), (lambda: document.draw(0).image())
    image_document = ImageDocument.open(data, "image/png", limits)
    return (lambda: ImageDocument.open(data, "image/png", limits)), (lambda: image_document.load_page(0))


def _sender(conn: Connection) -> None:
    while True:
        try:
            size = conn.recv()
        except EOFError:
            return
        conn.send_bytes(b"\xff" * size)


def transfer(side: tuple[int, int], repeat: int) -> dict[str, float]:
    """Raw RGB from a child: one `send_bytes`, `recv_bytes_into` a bytearray, `Image.frombytes`."""
    context = multiprocessing.get_context("forkserver")
    here, there = context.Pipe()
    child = context.Process(target=_sender, args=(there,), daemon=True)
    child.start()
    there.close()
    size = side[0] * side[1] * 3

    def receive() -> Image.Image:
        here.send(size)
        buffer = bytearray(size)
        here.recv_bytes_into(buffer)
        return Image.frombytes("RGB", side, buffer)

    try:
        return timed(receive, repeat)
    finally:
        here.close()
        child.join(5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=30, help="timed calls per figure (big pages: a third)")
    parser.add_argument("--json", type=Path, help="write the figures here too")
    args = parser.parse_args()

    page = a4_text_page(1)
    side_16 = math.sqrt(16_000_000) * 72 / 144 - 1  # points: drawn at 144 dpi, just under the cap
    side_60 = math.sqrt(60_000_000) * 72 / 144 - 1
    cases = {
        "A4 text page, PNG (1240x1754)": (encode_png(page), LIMITS, args.repeat),
        "A4 scanned page, PDF at 144 dpi (1190x1684)": (scanned_pdf(page), LIMITS, args.repeat),
        "A4 text page, PDF at 144 dpi (1190x1684)": (text_pdf(), LIMITS, args.repeat),
        "blank PDF page, 16 MP (3998x3998)": (blank_pdf(side_16, side_16), LIMITS, max(3, args.repeat // 3)),
        "blank PDF page, 60 MP (7744x7744)": (blank_pdf(side_60, side_60), UNCAPPED, max(3, args.repeat // 3)),
    }
    results: dict[str, dict[str, object]] = {}
    with DecoderPool(workers=2) as pool:
        for name, (data, limits, repeat) in cases.items():
            open_here, load_here = in_process(data, limits)
            pooled = open_document(data, limits, pool)
            size = pooled.load_page(0).size
            opens = paired({"open_in_process": open_here, "open_pool": lambda: open_document(data, limits, pool)}, repeat)
            decodes = paired({"decode_in_process": load_here, "decode_pool": lambda: pooled.load_page(0)}, repeat)
            results[name] = {"bytes": len(data), "size": size, **opens, **decodes}
            print(name, json.dumps(results[name]), flush=True)
    for label, side in (("A4 at 144 dpi", (1190, 1684)), ("16 MP", (4000, 4000)), ("60 MP", (7746, 7746))):
        figure = transfer(side, args.repeat)
        results[f"transfer {label} ({side[0] * side[1] * 3 / 1e6:.0f} MB raw RGB)"] = {"transfer": figure}
        print(label, json.dumps(figure), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
