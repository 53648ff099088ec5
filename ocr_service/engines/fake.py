"""A deterministic engine for tests and benchmarks, with a latency and GPU-memory model.

Its text names the SHA-256 of the page's pixels, so a test can tell that every result
reached its own task. Batch latency is `batch_latency + item_latency * n` (sleeping,
not spinning, like a GPU the CPU waits on), and a batch needing more simulated memory
than the budget raises `EngineOutOfMemory`, as the real engines do.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Sequence

from ocr_service.deepseek import GROUNDING_TAG
from ocr_service.engines.base import (
    BatchEngine,
    DecodedPage,
    EngineError,
    EngineOutOfMemory,
    PageOutcome,
    PageOutput,
)

FAIL_MARKER = "[fake:fail]"
CRASH_MARKER = "[fake:crash]"  # kills the process running the engine: for engine-worker fault tests
MB = 1024 * 1024


def fake_text(request: DecodedPage) -> str:
    """What the fake engine reads on a page: a fingerprint of its RGB pixels."""
    image = request.image
    digest = hashlib.sha256(image.convert("RGB").tobytes()).hexdigest()
    return f"fake-ocr sha256={digest} size={image.width}x{image.height}"


def grounded(text: str, width: int, height: int) -> str:
    """DeepSeek-style grounded output on the 0..999 grid: a title, a text block and an
    image region (DeepSeek writes no text after an image's box list)."""
    return (
        "<|ref|>title<|/ref|><|det|>[[100, 40, 900, 110]]<|/det|>\n"
        f"# Fake page {width}x{height}\n\n"
        "<|ref|>text<|/ref|><|det|>[[100, 150, 900, 800]]<|/det|>\n"
        f"{text}\n\n"
        "<|ref|>image<|/ref|><|det|>[[250, 820, 750, 960]]<|/det|>\n"
    )


class FakeEngine(BatchEngine):
    name = "fake"

    def __init__(
        self,
        batch_latency: float = 0.0,
        item_latency: float = 0.0,
        memory_budget_mb: float = 0.0,
        item_memory_mb: float = 0.0,
    ) -> None:
        self.batch_latency = batch_latency
        self.item_latency = item_latency
        self.memory_budget_mb = memory_budget_mb
        self.item_memory_mb = item_memory_mb
        self.batches_seen: list[int] = []  # batch sizes, in order; tests read it
        self._peak_bytes = 0
        self._lock = threading.Lock()

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        needed_mb = self.item_memory_mb * len(pages)
        with self._lock:
            self.batches_seen.append(len(pages))
            if self.memory_budget_mb and needed_mb > self.memory_budget_mb:
                raise EngineOutOfMemory(
                    f"fake engine: batch of {len(pages)} needs {needed_mb:g} MB, budget is {self.memory_budget_mb:g} MB"
                )
            self._peak_bytes = max(self._peak_bytes, int(needed_mb * MB))
        time.sleep(self.batch_latency + self.item_latency * len(pages))
        return [self._read(page) for page in pages]

    def _read(self, page: DecodedPage) -> PageOutcome:
        if CRASH_MARKER in page.prompt:
            os.kill(os.getpid(), signal.SIGKILL)  # as a segfault in a kernel would
        if FAIL_MARKER in page.prompt:
            return EngineError(f"fake engine failed on this page as its prompt asked ({FAIL_MARKER})")
        text = fake_text(page)
        if GROUNDING_TAG in page.prompt:
            text = grounded(text, page.image.width, page.image.height)
        tokens = text.split(" ")
        if len(tokens) > page.max_tokens:  # one "token" per space-separated word
            return PageOutput(" ".join(tokens[: page.max_tokens]), "length", output_tokens=page.max_tokens)
        return PageOutput(text, "stop", output_tokens=len(tokens))

    # MemoryProbe: the batch-size probe reads the simulated peak.
    def reset_peak_memory(self) -> None:
        self._peak_bytes = 0

    def peak_memory_bytes(self) -> int | None:
        return self._peak_bytes

    def free_memory(self) -> None:
        pass
