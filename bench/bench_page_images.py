#!/usr/bin/env python
"""What page images cost: resident memory of a real service holding finished PDFs' documents.

Starts `run_service.py` on the fake engine (grounded output: one image region per page),
sends --documents distinct --pages-page PDFs (A4 text pages with a photo, as Pillow
writes PDFs: each page a JPEG), waits until all have finished, reads RSS, then fetches
every page image and every figure crop, and reads RSS again. Prints ONE JSON line.

    python bench/bench_page_images.py                       # 200 three-page PDFs, OCR_KEEP_DOCUMENTS_MB=256
    python bench/bench_page_images.py --keep-mb 0           # the same, keeping no documents
    python bench/bench_page_images.py --keep-mb 64          # a budget smaller than the documents: oldest evicted

glibc keeps much of the heap that decoded pages freed, so RSS also grows when nothing is kept;
run with MALLOC_MMAP_THRESHOLD_=131072 (the service inherits it) to see what is held.
bench/results/cpu_page_images_keep*_{mmap,glibc_default}.json hold the runs docs/ui.md reports.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import harness
from bench.pages import a4_text_page

MB = 2**20


def photo(seed: int, size: tuple[int, int] = (700, 450)) -> Image.Image:
    """A noisy gradient: a photo's worth of colours."""
    rng = np.random.default_rng(seed)
    x, y = np.linspace(0, 255, size[0]), np.linspace(0, 255, size[1])
    base = np.stack([np.add.outer(y, x) / 2, np.add.outer(y * 0.3, x * 0.7), np.add.outer(y, -x) % 255], -1)
    return Image.fromarray((base + rng.normal(0, 10, base.shape)).clip(0, 255).astype("uint8"))


def make_pdfs(count: int, pages: int) -> list[bytes]:
    """`count` PDFs of `pages` pages each; every document differs (its number is on each page)."""
    base = []
    for number in range(pages):
        page = a4_text_page(number)
        page.paste(photo(number), (270, 1000))
        base.append(page)
    pdfs = []
    for document in range(count):
        stamped = []
        for page in base:
            copy = page.copy()
            ImageDraw.Draw(copy).text((110, 60), f"document {document}", fill="black")
            stamped.append(copy)
        buffer = io.BytesIO()
        stamped[0].save(buffer, format="PDF", save_all=True, append_images=stamped[1:], resolution=150)
        pdfs.append(buffer.getvalue())
    return pdfs


def submit_all(client: httpx.Client, pdfs: list[bytes]) -> list[str]:
    ids = []
    for number, pdf in enumerate(pdfs):
        response = client.post("/ocr", files={"file": (f"doc{number}.pdf", pdf, "application/pdf")})
        response.raise_for_status()
        ids.append(response.json()["task_id"])
    for task_id in ids:
        while client.get(f"/ocr/{task_id}", params={"wait": 30}).json()["status"] not in harness.TERMINAL:
            pass
    return ids


def fetch(base_url: str, paths: list[str]) -> tuple[list[float], dict[int, int], int]:
    """GET every path (4 at a time); return latencies (s), counts by status, bytes received."""

    def one(path: str) -> tuple[float, int, int]:
        with httpx.Client(base_url=base_url, timeout=60) as client:
            started = time.perf_counter()
            response = client.get(path)
            return time.perf_counter() - started, response.status_code, len(response.content)

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, paths))
    statuses: dict[int, int] = {}
    for _, status, _ in results:
        statuses[status] = statuses.get(status, 0) + 1
    return [seconds for seconds, status, _ in results if status == 200], statuses, sum(size for _, _, size in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=200)
    parser.add_argument("--pages", type=int, default=3)
    parser.add_argument("--keep-mb", type=float, default=256)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    pdfs = make_pdfs(args.documents + 1, args.pages)
    settings = {"engine": "fake", "fake_batch_latency": 0, "fake_item_latency": 0, "batch_size": 8,
                "max_queue_size": 10 * args.documents * args.pages, "keep_documents_mb": args.keep_mb}
    with harness.service_process(settings) as service, httpx.Client(base_url=service.base_url, timeout=60) as client:
        warm = submit_all(client, pdfs[:1])  # imports, pdfium and the first allocations out of the way
        fetch(service.base_url, [f"/ocr/{warm[0]}/pages/1/image", f"/ocr/{warm[0]}/images/page-1-1.png"])
        time.sleep(1)
        rss_before = service.rss_mb()
        started = time.perf_counter()
        ids = submit_all(client, pdfs[1:])
        ocr_s = time.perf_counter() - started
        time.sleep(1)
        rss_finished = service.rss_mb()
        pages = [f"/ocr/{task_id}/pages/{n}/image" for task_id in ids for n in range(1, args.pages + 1)]
        crops = [f"/ocr/{task_id}/images/page-{n}-1.png" for task_id in ids for n in range(1, args.pages + 1)]
        page_s, page_status, page_bytes = fetch(service.base_url, pages)
        crop_s, crop_status, crop_bytes = fetch(service.base_url, crops)
        time.sleep(1)
        rss_images = service.rss_mb()
        cached_s, _, _ = fetch(service.base_url, crops[-20:])  # the newest: still in the image cache

    pdf_bytes = sum(map(len, pdfs[1:]))
    result = {
        "documents": args.documents,
        "pages_per_document": args.pages,
        "keep_documents_mb": args.keep_mb,
        "pdf_mb_total": round(pdf_bytes / MB, 1),
        "pdf_kb_each": round(pdf_bytes / args.documents / 1024),
        "ocr_s": round(ocr_s, 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_after_tasks_mb": round(rss_finished, 1),
        "rss_after_images_mb": round(rss_images, 1),
        "rss_tasks_minus_before_mb": round(rss_finished - rss_before, 1),
        "rss_images_minus_before_mb": round(rss_images - rss_before, 1),
        "page_images": {str(k): v for k, v in sorted(page_status.items())},
        "crops": {str(k): v for k, v in sorted(crop_status.items())},
        "page_image_kb_mean": round(page_bytes / max(1, len(pages)) / 1024),
        "page_image_p50_ms": _ms(harness.percentile(page_s, 50)),
        "page_image_p95_ms": _ms(harness.percentile(page_s, 95)),
        "crop_p50_ms": _ms(harness.percentile(crop_s, 50)),
        "cached_crop_p50_ms": _ms(harness.percentile(cached_s, 50)),
        "crop_kb_mean": round(crop_bytes / max(1, len(crops)) / 1024),
    }
    line = json.dumps(result)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


if __name__ == "__main__":
    main()
