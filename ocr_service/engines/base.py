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
    """An engine that can prepare pages it is likely to get next (the batcher's hint)."""

    def prefetch(self, pages: Sequence[PageRequest]) -> None:
        """Start preparing `pages`, which will probably be the next batch. A hint only:
        the next batch may differ, and pages hinted may never come (cancelled)."""
        ...


@dataclass
class _Prepared:
    """A batch ready for the model: each page decoded (or its error), and `prepare`'s inputs."""

    decoded: list[DecodedPage | Exception]
    inputs: Any = None
    error: Exception | None = None  # what `prepare` raised, if it did


class BatchEngine:
    """Base for engines whose model runs one synchronous batch at a time.

    Subclasses implement `predict` (and, where the model needs CPU-side inputs, `prepare`
    and `predict_prepared`). A batch goes through two threads of the engine's own: one
    decodes its pages and runs `prepare`, the other runs the model. Each is always the
    same thread, so per-thread state of the libraries underneath (CUDA handles, CPU
    thread pools) is made once. While one batch runs on the model thread, `prefetch`
    prepares the next on the other, so the model does not wait between batches for
    decoding and image processing; a hint that does not match the next batch is dropped.
    """

    name: ClassVar[str] = "batch"
    max_batches_in_flight: ClassVar[int | None] = 1
    _model_thread: ThreadPoolExecutor | None = None
    _prep_thread: ThreadPoolExecutor | None = None
    _prefetched: tuple[tuple[str, ...], Future[_Prepared]] | None = None

    def load(self) -> None:
        pass

    def close(self) -> None:
        for pool in (self._prep_thread, self._model_thread):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        self._prep_thread = self._model_thread = None
        self._prefetched = None

    def prepare(self, pages: Sequence[DecodedPage]) -> Any:
        """CPU-side model inputs for a batch (an image processor's tensors); None by default."""
        return None

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        raise NotImplementedError

    def predict_prepared(self, pages: Sequence[DecodedPage], inputs: Any) -> list[PageOutcome]:
        """Run the model on a prepared batch; engines without a `prepare` step just predict."""
        return self.predict(pages)

    def prefetch(self, pages: Sequence[PageRequest]) -> None:
        keys = _keys(pages)
        if keys is None or (self._prefetched is not None and self._prefetched[0] == keys):
            return
        if self._prefetched is not None:
            self._prefetched[1].cancel()  # an older hint not started yet is dropped
        self._prefetched = (keys, self._threads()[0].submit(self._prepare_batch, pages))

    async def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        prep_thread, model_thread = self._threads()
        keys = _keys(pages)
        hinted, self._prefetched = self._prefetched, None
        if hinted is not None and keys is not None and hinted[0] == keys and not hinted[1].cancelled():
            prepared = await asyncio.wrap_future(hinted[1])
        else:
            if hinted is not None:
                hinted[1].cancel()
            prepared = await asyncio.get_running_loop().run_in_executor(prep_thread, self._prepare_batch, pages)
        outcomes = await asyncio.get_running_loop().run_in_executor(model_thread, self._predict_batch, prepared)
        for index, outcome in enumerate(outcomes):
            yield index, outcome

    def _threads(self) -> tuple[ThreadPoolExecutor, ThreadPoolExecutor]:
        if self._prep_thread is None or self._model_thread is None:
            self._prep_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-prepare")
            self._model_thread = ThreadPoolExecutor(1, thread_name_prefix=f"{self.name}-model")
        return self._prep_thread, self._model_thread

    def _prepare_batch(self, pages: Sequence[PageRequest]) -> _Prepared:
        prepared = _Prepared([decode(page) for page in pages])
        ready = [page for page in prepared.decoded if isinstance(page, DecodedPage)]
        if ready:
            try:
                prepared.inputs = self.prepare(ready)
            except Exception as exc:  # noqa: BLE001 - raised again on the model thread, in order
                prepared.error = exc
        return prepared

    def _predict_batch(self, prepared: _Prepared) -> list[PageOutcome]:
        decoded = prepared.decoded
        ready = [(i, page) for i, page in enumerate(decoded) if isinstance(page, DecodedPage)]
        outcomes: list[PageOutcome] = [page if isinstance(page, Exception) else EngineError("no outcome") for page in decoded]
        if not ready:
            return outcomes
        if prepared.error is not None:
            raise prepared.error
        predicted = self.predict_prepared([page for _, page in ready], prepared.inputs)
        if len(predicted) != len(ready):
            raise EngineError(f"{self.name} returned {len(predicted)} outcomes for {len(ready)} pages")
        for (i, page), outcome in zip(ready, predicted, strict=True):
            outcomes[i] = with_size(outcome, page.image)
        return outcomes


def _keys(pages: Sequence[PageRequest]) -> tuple[str, ...] | None:
    """The batch's identity for matching a hint, or None if a page has no key."""
    keys = tuple(page.key for page in pages)
    return keys if all(keys) else None
