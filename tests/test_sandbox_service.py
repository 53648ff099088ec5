"""Hostile documents against the service: a page that takes forever to render, pages that are
huge, and a SIGTERM in the middle of a render. None of them may hold up other work, grow the
service's memory without bound, or keep the process alive past its shutdown grace."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from pathlib import Path

import httpx

from tests.files import make_pdf
from tests.helpers import (
    encode,
    poll_task,
    running_app,
    service_process,
    settings,
    solid_image,
    upload,
    wait_for_task,
)

WHITE = (255, 255, 255)
POSTER = 14_400  # points: a 200 x 200 inch page, the largest a PDF may declare


def stalling_pdf() -> bytes:
    """Under 1.2 KB: one 200 x 200 inch page that fills itself 2,000 times (tens of seconds to draw)."""
    return make_pdf([(POSTER, POSTER, WHITE)], fills=2000)


async def test_a_stalling_pdf_holds_up_neither_uploads_nor_other_documents() -> None:
    app_settings = settings(decode_timeout=2, batch_size=1)
    async with running_app(app_settings) as client:
        stalling = await upload(client, stalling_pdf(), filename="poster.pdf", prompt="Free OCR.")
        assert stalling.status_code == 202
        stalling_id = stalling.json()["task_id"]
        started = await client.get(f"/ocr/{stalling_id}", params={"wait": 0})
        assert started.json()["status"] in {"pending", "processing"}

        # Another PDF's upload is validated at once, not after the render.
        async with asyncio.timeout(5):
            other_pdf = await upload(client, make_pdf([(72, 72, WHITE)]), filename="note.pdf", prompt="Free OCR.")
            health = await client.get("/health")
        assert other_pdf.status_code == 202 and health.status_code == 200

        # An unrelated PNG finishes within seconds: the stalling page ran out of its budget.
        png_id = (await upload(client, encode(solid_image(3)), prompt="Free OCR.")).json()["task_id"]
        png = await wait_for_task(client, png_id, timeout=10)
        assert png["status"] == "completed"
        stalled = (await client.get(f"/ocr/{stalling_id}")).json()
        assert stalled["status"] == "processing" or "OCR_DECODE_TIMEOUT" in stalled["error"]

        stalled = await wait_for_task(client, stalling_id, timeout=10)
        assert stalled["status"] == "failed"
        assert "2 s" in stalled["error"] and "OCR_DECODE_TIMEOUT" in stalled["error"]
        assert (await wait_for_task(client, other_pdf.json()["task_id"]))["status"] == "completed"


def peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, status
    return int(match.group(1)) / 1024


def test_forty_poster_pages_keep_the_service_memory_bounded(tmp_path: Path) -> None:
    # 40 blank 200 x 200 inch pages (about 10 KB), in batches of 8 pages.
    env = {"OCR_ENGINE": "fake", "OCR_BATCH_SIZE": "8", "OCR_FAKE_ITEM_LATENCY": "0", "OCR_FAKE_BATCH_LATENCY": "0"}
    posters = make_pdf([(POSTER, POSTER, WHITE)] * 40)
    with service_process(tmp_path, env) as service:
        response = httpx.post(f"{service.url}/ocr", files={"file": ("posters.pdf", posters)}, data={"prompt": "Free OCR."})
        assert response.status_code == 202, response.text
        task = poll_task(service.url, response.json()["task_id"], timeout=300)
        peak = peak_rss_mb(service.process.pid)
    assert task["status"] == "completed", task.get("error")
    # 8 pages of 16 MP held decoded at once are about 512 MB; at 60 MP they were about 2 GB.
    assert peak < 1200, f"peak RSS {peak:.0f} MiB"
    sizes = {page["markdown"].split("size=")[1] for page in task["pages"]}
    width, height = (int(side) for side in sizes.pop().split("x"))
    assert not sizes and width == height and width * height <= 16_000_000  # OCR_PDF_MAX_PIXELS


def test_sigterm_during_a_stalling_render_exits_within_the_grace(tmp_path: Path) -> None:
    env = {"OCR_ENGINE": "fake", "OCR_BATCH_SIZE": "1", "OCR_SHUTDOWN_GRACE": "2", "OCR_DECODE_TIMEOUT": "120"}
    with service_process(tmp_path, env) as service:
        url, process = service.url, service.process
        response = httpx.post(f"{url}/ocr", files={"file": ("poster.pdf", stalling_pdf())}, data={"prompt": "Free OCR."})
        assert response.status_code == 202, response.text
        task_id = response.json()["task_id"]
        poll_task(url, task_id, 30, {"processing"})
        time.sleep(0.5)  # the page is in the renderer now

        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        # A poll open during the drain is answered: the task failed, with the reason.
        failed = httpx.get(f"{url}/ocr/{task_id}", params={"wait": 30}, timeout=40).json()
        assert failed["status"] == "failed" and "OCR_SHUTDOWN_GRACE=2" in failed["error"], failed
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 2 + 8
