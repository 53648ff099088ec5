"""The embedded CPU engine: RapidOCR on onnxruntime, with models shipped in the wheel.

It works offline right after `pip install`, so a fresh machine with no GPU can serve.
It reads text lines only: each detected line becomes a block with its pixel box, and
`output.pages` puts them in reading order. A prompt it cannot follow (describe, parse a
figure, locate) still gets the page's text, with a warning that says so.

Settings follow measurements on rendered A4 pages on 2-core machines: the angle
classifier off (on, it flipped some long lines and the character error rate rose
from under 0.1% to 7-9%), the detector input capped at 960 px (2.65 s a page instead
of 5.7 s, 465 MB instead of 840 MB, same accuracy), one recognition crop at a time, and one shared
instance called from `threads` worker threads with one onnxruntime thread each
(on two cores: one page per core at a time).
Everything is set at construction: per-call overrides write into the shared
instance and would race between threads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from ocr_service.deepseek import GROUNDING_TAG, IMAGE_TAG, PROMPTS
from ocr_service.engines.base import EngineError, PageOutcome, PageOutput, PageRequest
from ocr_service.output.blocks import Block

# What RapidOCR does is what these prompts ask: read the page's text (as lines in reading order).
READING_PROMPTS = frozenset(
    " ".join(PROMPTS[name].replace(IMAGE_TAG, "").replace(GROUNDING_TAG, "").split()).lower()
    for name in ("markdown", "free", "ocr")
)
_EMPTY_PAGE = "The text detection result is empty"  # RapidOCR's log line for a page without text


def prompt_warning(prompt: str) -> str | None:
    """The warning for a prompt RapidOCR cannot follow, or None for a reading prompt.

    >>> prompt_warning("<image>\\n<|grounding|>Convert the document to markdown.") is None
    True
    >>> prompt_warning("<image>\\nDescribe this image in detail.")[:60]
    'the rapidocr engine reads text only and cannot follow the pr'
    """
    asked = " ".join(prompt.replace(IMAGE_TAG, "").replace(GROUNDING_TAG, "").split())
    if asked.lower() in READING_PROMPTS:
        return None
    return f"the rapidocr engine reads text only and cannot follow the prompt {asked!r}: this is the page's text"


class RapidOcrEngine:
    """RapidOCR, taking pages continuously: each page goes to the thread pool on its own
    and comes back as soon as it is read, so a lone page never leaves a core idle while
    it waits for companions; `OCR_BATCH_SIZE` caps the pages in flight."""

    name = "rapidocr"
    max_batches_in_flight = None  # the batcher may hand over pages whenever it has room

    def __init__(self, threads: int = 2, det_limit_side_len: int = 960) -> None:
        self.threads = threads
        self.det_limit_side_len = det_limit_side_len
        self._ocr: Any = None  # rapidocr.RapidOCR, imported in load
        self._pool: ThreadPoolExecutor | None = None

    def load(self) -> None:
        from rapidocr import RapidOCR

        _route_library_log()
        self._ocr = RapidOCR(
            params={
                "Global.use_cls": False,
                "Global.log_level": "warning",
                "Det.limit_type": "max",
                "Det.limit_side_len": self.det_limit_side_len,
                "Rec.rec_batch_num": 1,
                "EngineConfig.onnxruntime.intra_op_num_threads": 1,
                "EngineConfig.onnxruntime.inter_op_num_threads": 1,
            }
        )
        self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rapidocr")
        # The first call loads models lazily (6-12 s): pay it now, not on a user's page.
        self._read(np.full((64, 256, 3), 255, dtype=np.uint8))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)

    async def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        if self._ocr is None or self._pool is None:
            raise EngineError("RapidOcrEngine.load() was not called")
        loop = asyncio.get_running_loop()

        async def read(index: int, page: PageRequest) -> tuple[int, PageOutcome]:
            try:
                return index, await loop.run_in_executor(self._pool, self._read_page, page)
            except Exception as exc:  # noqa: BLE001 - one bad page fails alone
                return index, exc

        for finished in asyncio.as_completed([read(index, page) for index, page in enumerate(pages)]):
            yield await finished

    def _read_page(self, page: PageRequest) -> PageOutput:
        image = page.source.load()
        # Pass an array, never a string: RapidOCR fetches strings that look like URLs.
        blocks = self._read(np.asarray(image))
        text = "\n".join(block.text for block in blocks)
        return PageOutput(
            text, "stop", blocks=tuple(blocks), width=image.width, height=image.height, warning=prompt_warning(page.prompt)
        )

    def _read(self, image: np.ndarray) -> list[Block]:
        result = self._ocr(image)
        if result.boxes is None or result.txts is None:
            return []
        # Reading order is decided in `output.pages`, the same for every engine.
        return [
            Block("text", _bounding_box(points), text)
            for points, text in zip(result.boxes, result.txts, strict=True)
            if text.strip()
        ]


def _bounding_box(points: np.ndarray) -> tuple[float, float, float, float]:
    xs, ys = points[:, 0], points[:, 1]
    return (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max()))


def _route_library_log() -> None:
    """Send RapidOCR's own log lines through the service's handler (text or JSON), without
    its colours, and drop its warning for a page without text: a blank page is not a fault."""
    library = logging.getLogger("RapidOCR")
    library.handlers.clear()
    library.propagate = True
    if not any(isinstance(f, _DropEmptyPage) for f in library.filters):
        library.addFilter(_DropEmptyPage())


class _DropEmptyPage(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != _EMPTY_PAGE
