"""The Engine protocol: what the batcher hands an engine and what it gets back.

Engines know nothing of HTTP, tasks or queues. They get decoded RGB pages, each with
its own prompt and sampling parameters, and return one outcome per page: a
`PageOutput` or the exception that page alone raised. A whole batch that does not fit
in memory raises `EngineOutOfMemory` instead, so the batcher can split it and retry.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, Protocol, runtime_checkable

from PIL import Image

from ocr_service.output.blocks import Block

IMAGE_TAG = "<image>"


def with_image_tag(prompt: str) -> str:
    """DeepSeek prompts hold one `<image>` placeholder; put it first where it is missing."""
    return prompt if IMAGE_TAG in prompt else f"{IMAGE_TAG}\n{prompt}"


class EngineOutOfMemory(Exception):
    """The batch did not fit in the device's memory; a smaller batch may."""


class EngineError(Exception):
    """The engine failed on one page; the message says why."""


@dataclass(frozen=True)
class PageRequest:
    image: Image.Image  # RGB
    prompt: str
    temperature: float
    max_tokens: int


@dataclass(frozen=True)
class PageOutput:
    text: str
    finish_reason: str = "stop"  # "stop" or "length" (hit max_tokens)
    # Engines that detect regions themselves (RapidOCR) give them here, in page
    # pixels; DeepSeek models put them in `text` as grounding tags instead.
    blocks: tuple[Block, ...] | None = None
    output_tokens: int | None = None


PageOutcome = PageOutput | Exception


@runtime_checkable
class Engine(Protocol):
    """An OCR engine. `load` and `close` block; `run` never blocks the event loop."""

    name: str
    # How many batches may be in flight at once: 1 for engines that run one batch
    # at a time on the device; more for engines that batch continuously (vLLM).
    concurrent_batches: int

    def load(self) -> None:
        """Load weights and warm up. Called once, in a worker thread, before serving."""

    def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        """Yield `(index into pages, outcome)` for every page, as each finishes.

        Raises `EngineOutOfMemory` (before yielding anything) when the batch does not fit.
        """

    def close(self) -> None:
        """Free the device. Called once at shutdown."""


class BatchEngine:
    """Base for engines whose model runs one synchronous batch at a time.

    Subclasses implement `predict`. `run` calls it on the engine's own worker thread,
    always the same one: the event loop keeps serving while the model works, and
    per-thread state of the libraries underneath (CUDA handles, CPU thread pools) is
    made once instead of once for every thread of a shared pool.
    """

    name: ClassVar[str] = "batch"
    concurrent_batches: ClassVar[int] = 1
    _worker: ThreadPoolExecutor | None = None

    def load(self) -> None:
        pass

    def close(self) -> None:
        pass

    def predict(self, pages: Sequence[PageRequest]) -> list[PageOutcome]:
        raise NotImplementedError

    async def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-engine")
        outcomes = await asyncio.get_running_loop().run_in_executor(self._worker, self.predict, pages)
        if len(outcomes) != len(pages):
            raise EngineError(f"{self.name} returned {len(outcomes)} outcomes for {len(pages)} pages")
        for index, outcome in enumerate(outcomes):
            yield index, outcome
