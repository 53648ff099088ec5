"""The engine contract: what the batcher hands an engine and what it gets back.

Engines know nothing of HTTP, tasks, queues or Settings. They get page requests (a
page to decode, its own prompt and sampling parameters) and return one outcome per
page: a `PageOutput`, or the exception that page alone raised (a page that cannot be
decoded included). A whole batch that does not fit in memory raises
`EngineOutOfMemory` instead, so the batcher can split it and retry.

Pages arrive undecoded (`PageSource`): the engine decodes them where it runs, so a
page crosses to an engine process as its encoded bytes, and decoding happens off the
service's event loop and next to the model.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Protocol, runtime_checkable

from PIL import Image

from ocr_service.output.blocks import Block


class EngineOutOfMemory(Exception):
    """The batch did not fit in the device's memory; a smaller batch may."""


class EngineError(Exception):
    """The engine failed on one page; the message says why."""


class PageSource(Protocol):
    """A page that is not decoded yet."""

    def load(self) -> Image.Image:
        """Decode the page to RGB. Blocking; raises on a page that cannot be read."""
        ...


@dataclass(frozen=True)
class ImagePage:
    """A page that is already an image (the probe, benchmarks, tests)."""

    image: Image.Image

    def load(self) -> Image.Image:
        return self.image.convert("RGB")


@dataclass(frozen=True)
class PageRequest:
    """One page and what is asked of it; every page keeps its own parameters."""

    source: PageSource
    prompt: str
    temperature: float
    max_tokens: int
    key: str = ""  # names the page across calls (task id and page), for matching prefetch hints

    @classmethod
    def of_image(cls, image: Image.Image, prompt: str, temperature: float = 0.0, max_tokens: int = 8192) -> PageRequest:
        return cls(ImagePage(image), prompt, temperature, max_tokens)


@dataclass(frozen=True)
class DecodedPage:
    """A page request whose page has been decoded: what a model consumes."""

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
    # Context the page's prompt took, image tokens included (vLLM reports it; the probe reads it).
    prompt_tokens: int | None = None
    # The size of the image the engine read: boxes are in its pixels.
    width: int = 0
    height: int = 0
    # Set by an engine that cannot honour the prompt as asked (and did what it could).
    warning: str | None = None


PageOutcome = PageOutput | Exception


def decode(request: PageRequest) -> DecodedPage | Exception:
    """Decode one page (blocking); a page that cannot be read is its own outcome."""
    try:
        image = request.source.load()
    except Exception as exc:  # noqa: BLE001 - the page's own outcome
        return exc
    return DecodedPage(image, request.prompt, request.temperature, request.max_tokens)


def with_size(outcome: PageOutcome, image: Image.Image) -> PageOutcome:
    """The outcome with the page's pixel size filled in where the engine left it out."""
    if isinstance(outcome, PageOutput) and not outcome.width:
        return replace(outcome, width=image.width, height=image.height)
    return outcome


@runtime_checkable
class Engine(Protocol):
    """An OCR engine. `load` and `close` block; `run` never blocks the event loop."""

    @property
    def name(self) -> str: ...

    @property
    def max_batches_in_flight(self) -> int | None:
        """How many batches may be in the engine at once: 1 for engines that run one batch
        at a time on the device; None where only the batcher's page cap limits it
        (engines that take pages continuously, like vLLM)."""
        ...

    def load(self) -> None:
        """Load weights and warm up. Called once, in a worker thread, before serving."""
        ...

    def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        """Yield `(index into pages, outcome)` for every page, as each finishes.

        Raises `EngineOutOfMemory` (before yielding the pages it concerns) when the
        batch does not fit.
        """
        ...

    def close(self) -> None:
        """Free the device. Called once at shutdown."""
        ...


@runtime_checkable
class Parallel(Protocol):
    """An engine made of several model instances side by side (worker processes, replicas)."""

    @property
    def instances(self) -> int:
        """How many: each takes batches of up to the batch size at once."""
        ...


@runtime_checkable
class MemoryProbe(Protocol):
    """Device-memory readings for the batch-size probe (engines on a GPU, the fake engine)."""

    def reset_peak_memory(self) -> None: ...

    def peak_memory_bytes(self) -> int | None:
        """Peak device memory since the last reset, or None where it is not tracked."""
        ...

    def free_memory(self) -> None:
        """Return cached device memory after a failed batch."""
        ...


@runtime_checkable
class Prefetching(Protocol):
    """An engine that can prepare pages it is likely to get soon (the batcher's hint)."""

    def prefetch(self, batches: Sequence[Sequence[PageRequest]]) -> None:
        """Start preparing the pages of `batches`, which will probably be the next batches,
        in order (one per engine instance that is busy). A hint only: the batches may
        differ, and pages hinted may never come (cancelled)."""
        ...


@dataclass(frozen=True)
class _Ready:
    """One page prepared for the model: decoded (or its error), and `prepare_page`'s inputs."""

    page: DecodedPage | Exception
    inputs: Any = None
    pixels: int = 0  # counted against the prefetch budget while it waits


class BatchEngine:
    """Base for engines whose model runs one synchronous batch at a time.

    Subclasses implement `predict` (and, where the model needs CPU-side inputs per page,
    `prepare_page` and `predict_prepared`). Pages are prepared (decoded, then
    `prepare_page`) one by one on a small pool of threads, and the batch runs on the
    engine's model thread, always the same one, so per-thread state of the libraries
    underneath (CUDA handles, CPU thread pools) is made once. `prefetch` starts preparing
    pages as soon as the batcher sees them coming, so the model does not wait between
    batches for decoding and image processing; a hinted page that never comes is dropped.
    Pages prepared ahead hold at most `prefetch_pixels` decoded pixels, so hints never
    double the memory a batch of large pages takes: past it, a page is prepared when its
    batch comes.
    """

    name: ClassVar[str] = "batch"
    max_batches_in_flight: ClassVar[int | None] = 1
    prepare_threads: ClassVar[int] = min(8, os.cpu_count() or 1)  # a batch of 8 A4 pages is prepared in one round
    prefetch_pixels: ClassVar[int] = 48_000_000  # about 7 A4 pages at 144 dpi, 3 pages at the PDF raster cap
    _model_thread: ThreadPoolExecutor | None = None
    _prep_threads: ThreadPoolExecutor | None = None
    _hinted: dict[str, Future[_Ready | None]] | None = None  # by page key, the latest hint only
    _hinted_pixels = 0
    _budget_lock = threading.Lock()

    def load(self) -> None:
        pass

    def close(self) -> None:
        for pool in (self._prep_threads, self._model_thread):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._prep_threads = self._model_thread = None
        self._hinted = None

    def prepare_page(self, page: DecodedPage) -> Any:
        """CPU-side model inputs for one page (an image processor's tensors); None by default."""
        return None

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        raise NotImplementedError

    def predict_prepared(self, pages: Sequence[DecodedPage], inputs: Sequence[Any]) -> list[PageOutcome]:
        """Run the model on prepared pages (`inputs[i]` is page i's, or the exception that
        preparing it raised); engines without a `prepare_page` step just predict."""
        return self.predict(pages)

    def prefetch(self, batches: Sequence[Sequence[PageRequest]]) -> None:
        pages = [page for batch in batches for page in batch]
        hinted = self._hinted if self._hinted is not None else {}
        keys = {page.key for page in pages if page.key}
        for key in [key for key in hinted if key not in keys]:
            self._forget(hinted.pop(key))  # no longer expected next
        prep = self._threads()[0]
        for page in pages:
            if page.key and page.key not in hinted:
                hinted[page.key] = prep.submit(self._prepare_ahead, page)
        self._hinted = hinted

    async def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        model = self._threads()[1]
        hinted = self._hinted if self._hinted is not None else {}
        # Every page is prepared at once, on all the preparing threads: a batch nobody hinted
        # (clients that send the next page only when they have the last one) waits for its
        # slowest page, not for the sum of them.
        ready = await asyncio.gather(*(self._ready(page, hinted.pop(page.key, None)) for page in pages))
        outcomes = await asyncio.get_running_loop().run_in_executor(model, self._predict_ready, ready)
        for index, outcome in enumerate(outcomes):
            yield index, outcome

    async def _ready(self, page: PageRequest, ahead: Future[_Ready | None] | None) -> _Ready:
        """The page prepared: by its hint where that got through, else now."""
        if ahead is not None:
            done = await asyncio.wrap_future(ahead)
            self._forget(ahead)
            if done is not None:
                return done
        return await asyncio.get_running_loop().run_in_executor(self._threads()[0], self._prepare, page)

    def _threads(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._prep_threads is None or self._model_thread is None:
            self._prep_threads = ThreadPoolExecutor(self.prepare_threads, thread_name_prefix=f"{self.name}-prepare")
            self._model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-model")
        return self._prep_threads, self._model_thread

    def _prepare_ahead(self, request: PageRequest) -> _Ready | None:
        """Prepare a hinted page, or None where its pixels would pass the budget."""
        ready = self._prepare(request)
        pixels = ready.page.image.width * ready.page.image.height if isinstance(ready.page, DecodedPage) else 0
        with self._budget_lock:
            if self._hinted_pixels + pixels > self.prefetch_pixels:
                return None
            self._hinted_pixels += pixels
        return replace(ready, pixels=pixels)

    def _forget(self, hint: Future[_Ready | None]) -> None:
        """A hinted page was taken or dropped: its pixels no longer count against the budget."""
        if hint.cancel() or not hint.done() or hint.exception() is not None:
            if not hint.done():
                hint.add_done_callback(self._forget)  # still running: forget it when it ends
            return
        ready = hint.result()
        if ready is not None:
            with self._budget_lock:
                self._hinted_pixels -= ready.pixels

    def _prepare(self, request: PageRequest) -> _Ready:
        page = decode(request)
        if isinstance(page, Exception):
            return _Ready(page)
        try:
            return _Ready(page, self.prepare_page(page))
        except Exception as exc:  # noqa: BLE001 - this page's own outcome
            return _Ready(page, exc)

    def _predict_ready(self, ready: Sequence[_Ready]) -> list[PageOutcome]:
        good = [(i, item) for i, item in enumerate(ready) if isinstance(item.page, DecodedPage)]
        outcomes: list[PageOutcome] = [
            item.page if isinstance(item.page, Exception) else EngineError("no outcome") for item in ready
        ]
        if not good:
            return outcomes
        pages = [item.page for _, item in good if isinstance(item.page, DecodedPage)]
        predicted = self.predict_prepared(pages, [item.inputs for _, item in good])
        if len(predicted) != len(good):
            raise EngineError(f"{self.name} returned {len(predicted)} outcomes for {len(good)} pages")
        for (i, _), page, outcome in zip(good, pages, predicted, strict=True):
            outcomes[i] = with_size(outcome, page.image)
        return outcomes
