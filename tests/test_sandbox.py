"""The decoder pool: budgets per call and per child, replacement of killed children, routing of
a document's pages, parallel documents, and closing with work in flight.

Pages that stall the renderer are real PDFs (a 200-inch page filled thousands of times);
a "segfault" is a real SIGSEGV sent to the child while it draws.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from ocr_service.documents import DecoderPool, DocumentError, DocumentLimits, open_document
from ocr_service.documents.decoder import Lru
from ocr_service.documents.sandbox import DecoderClosed
from tests.files import make_pdf
from tests.helpers import encode, solid_image

LIMITS = DocumentLimits(max_pixels=60_000_000, max_pdf_pages=500)
RED, WHITE = (255, 0, 0), (255, 255, 255)


def stalling_pdf(pages: int = 1, fills: int = 20_000) -> bytes:
    """200 x 200 inch pages, each filled `fills` times: minutes of drawing for a few KB."""
    return make_pdf([(14_400, 14_400, WHITE)] * pages, fills=fills)


def in_thread(work: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    """Run `work` in a thread; the list gets its result or the exception it raised."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(work())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def address_space_limit(pid: int | None) -> int | None:
    limits = Path(f"/proc/{pid}/limits").read_text()
    match = re.search(r"^Max address space\s+(\d+)", limits, re.MULTILINE)
    return int(match.group(1)) if match else None


def test_a_page_over_its_time_budget_fails_alone_and_its_child_is_replaced() -> None:
    with DecoderPool(workers=1, timeout=1) as pool:
        [old_pid] = pool.worker_pids()
        stalling = open_document(stalling_pdf(pages=2), LIMITS, pool)
        with pytest.raises(
            DocumentError,
            match=r"Page 1 of the PDF took more than 1 s to decode and was stopped; "
            r"the limit is OCR_DECODE_TIMEOUT=1 s per page",
        ):
            stalling.load_page(0)
        [new_pid] = pool.worker_pids()
        assert new_pid is not None and new_pid != old_pid and gone(old_pid)
        # The document's other pages are not tried again; other documents are served.
        with pytest.raises(DocumentError, match="Page 2 of the PDF was not decoded: this document already went over"):
            stalling.load_page(1)
        assert open_document(make_pdf([(50, 50, RED)]), LIMITS, pool).load_page(0).getpixel((5, 5)) == RED
        assert pool.stats.timeouts == 1


def test_a_page_over_the_memory_budget_fails_alone_and_the_child_keeps_serving() -> None:
    big = encode(Image.new("L", (12_000, 12_000), 255))  # 168 KB; 144 MP, over 430 MB once decoded
    limits = DocumentLimits(max_pixels=200_000_000, max_pdf_pages=10)
    with DecoderPool(workers=1, memory_mb=400) as pool:
        [pid] = pool.worker_pids()
        wait_until(lambda: address_space_limit(pid) == 400 * 1024 * 1024)  # set by the child as it starts
        document = open_document(big, limits, pool)
        with pytest.raises(DocumentError, match=r"The PNG image needs more memory .* 400 MB .*OCR_DECODE_MEMORY_MB"):
            document.load_page(0)
        assert open_document(encode(solid_image(1)), limits, pool).load_page(0).size == (64, 48)


def test_a_child_that_crashes_fails_its_page_and_is_replaced() -> None:
    with DecoderPool(workers=1, timeout=60) as pool:
        [pid] = pool.worker_pids()
        assert pid is not None
        stalling = open_document(stalling_pdf(), LIMITS, pool)
        thread, outcome = in_thread(lambda: stalling.load_page(0))
        wait_until(lambda: pool.stats.pages == 1)
        os.kill(pid, signal.SIGSEGV)  # as a codec bug would
        thread.join(10)
        [error] = outcome
        assert isinstance(error, DocumentError)
        assert "Page 1 of the PDF could not be decoded: the decoding process stopped (killed by SIGSEGV)" in str(error)
        assert pool.stats.crashes == 1
        [new_pid] = pool.worker_pids()
        assert new_pid not in (None, pid)
        assert open_document(make_pdf([(50, 50, RED)]), LIMITS, pool).load_page(0).getpixel((5, 5)) == RED


def test_a_long_pdf_crosses_to_a_child_once_not_once_per_page() -> None:
    data = make_pdf([(60, 60, RED)] * 120)
    with DecoderPool(workers=2) as pool:
        document = open_document(data, LIMITS, pool)
        for index in range(document.page_count):
            assert document.load_page(index).getpixel((5, 5)) == RED
        assert (pool.stats.pages, pool.stats.sends, pool.stats.bytes_sent) == (120, 1, len(data))


def test_pages_drawn_from_several_threads_cross_once_per_child_at_most() -> None:
    data = make_pdf([(60, 60, RED)] * 60)
    with DecoderPool(workers=3) as pool:
        document = open_document(data, LIMITS, pool)
        threads = [
            in_thread(lambda part=part: [document.load_page(i).getpixel((5, 5)) for i in part])
            for part in (range(0, 60, 2), range(1, 60, 2))
        ]
        for thread, _ in threads:
            thread.join(60)
        assert [outcome for _, outcome in threads] == [[[RED] * 30]] * 2
        assert pool.stats.sends <= 2  # the open, and at most one more child for the second thread


def test_two_documents_decode_in_parallel_and_uploads_are_opened_while_every_page_child_works() -> None:
    with DecoderPool(workers=3, timeout=120) as pool:
        stalls = [open_document(stalling_pdf(), LIMITS, pool) for _ in range(2)]
        first, first_outcome = in_thread(lambda: stalls[0].load_page(0))
        wait_until(lambda: pool.stats.pages == 1)
        # Another document's page is drawn while the first still renders.
        assert open_document(make_pdf([(50, 50, RED)]), LIMITS, pool).load_page(0).getpixel((5, 5)) == RED
        assert first.is_alive()
        # With both page children rendering, an upload is still opened (the third child).
        second, second_outcome = in_thread(lambda: stalls[1].load_page(0))
        wait_until(lambda: pool.stats.pages == 3)
        assert open_document(encode(solid_image(2)), LIMITS, pool).page_count == 1
        assert first.is_alive() and second.is_alive()

        pool.close()  # kills both renders: their calls fail with the reason
        for thread in (first, second):
            thread.join(10)
            assert not thread.is_alive()
        for outcome in (first_outcome, second_outcome):
            assert len(outcome) == 1 and isinstance(outcome[0], DecoderClosed)
            assert "shutting down" in str(outcome[0])
        assert all(pid is None for pid in pool.worker_pids())
        with pytest.raises(DecoderClosed, match="shutting down"):
            open_document(make_pdf([(50, 50, RED)]), LIMITS, pool)


def test_the_cache_keeps_the_most_recent_documents_within_its_bytes() -> None:
    cache: Lru[str, str] = Lru(budget=10)
    cache.put("a", "A", 4)
    cache.put("b", "B", 4)
    assert cache.get("a") == "A"  # now the most recent
    cache.put("c", "C", 4)  # over the budget: "b", the least recent, goes
    assert ("a" in cache, "b" in cache, "c" in cache) == (True, False, True)
    cache.put("huge", "H", 11)  # bigger than the whole budget: not kept, nothing dropped
    assert ("huge" in cache, "a" in cache, "c" in cache) == (False, True, True)
