"""The transformers engine: DeepSeek-OCR-2 through transformers' native classes.

For machines without vLLM, and for resolution modes vLLM cannot serve. It runs one
batch at a time (`BatchEngine`): the pages of a batch are padded on the left and
generated together. What vLLM gives per request is rebuilt here per row of the
batch, so no page borrows another's settings: its own temperature, its own
max_tokens (a row that reaches it is ended with EOS and reported as "length"), and
the same no-repeat n-gram guard as vLLM's DeepSeek-OCR recipe.

Native classes only (`deepseek_ocr2`, transformers >= 5.10.1): no remote code.
torch and transformers are imported in `load`, after the torchvision fix.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ocr_service.deepseek import (
    DEFAULT_PROMPT,
    TABLE_CELL_TOKENS,
    banned_ngram_tokens,
    uses_random_weights,
    with_image_tag,
)
from ocr_service.engines.base import (
    BatchEngine,
    DecodedPage,
    EngineError,
    EngineOutOfMemory,
    PageOutcome,
    PageOutput,
    PageRequest,
)
from ocr_service.engines.sample_page import render_test_page
from ocr_service.engines.torch_support import install_torchvision_import_fix, is_out_of_memory

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewSize:
    """How a resolution mode sizes a page for DeepSeek-OCR-2's processor."""

    global_size: int  # the whole page, padded to a square of this side
    crop_to_patches: bool  # add 768 px tiles (2 to 6) for detail

    @property
    def tile_size(self) -> int:
        # transformers' image processor sizes an uncropped page's only view by
        # `tile_size`, not `size`; so without tiles the tile size is the view size.
        return 768 if self.crop_to_patches else self.global_size


# DeepSeek-OCR-2's vision encoder has learned queries for two view sizes only,
# 1024 px (16x16 queries) and 768 px (12x12); see `DeepseekOcr2VisionModel` in
# transformers. So Gundam (1024 + 768 tiles, the default), Base (1024) and Small
# (768: OCR-2's own small view, where OCR v1 used 640) exist; Tiny (512) and Large
# (1280) have no queries to match and are refused at start.
RESOLUTION_MODES: dict[str, ViewSize] = {
    "gundam": ViewSize(1024, True),
    "base": ViewSize(1024, False),
    "small": ViewSize(768, False),
}


@dataclass(frozen=True)
class TransformersOptions:
    model_path: str
    resolution_mode: str
    ngram_size: int
    window_size: int
    # Generate every page to its max_tokens whatever the model says (benchmarks).
    ignore_eos: bool = False
    # A batch of this many sample pages runs at load, on the threads that serve: the first
    # batch of a new size (or on a new thread) is several times slower than the next.
    warmup_batch: int = 0
    warmup_tokens: int = 32


def check_resolution_mode(mode: str) -> ViewSize:
    """The view size of `mode`, or a message that says why it cannot be served."""
    if mode not in RESOLUTION_MODES:
        raise ValueError(
            f"OCR_RESOLUTION_MODE={mode} is not available with OCR_ENGINE=transformers: "
            "DeepSeek-OCR-2 only has learned queries for 1024 px and 768 px views; "
            f"choose one of {', '.join(RESOLUTION_MODES)}."
        )
    return RESOLUTION_MODES[mode]



def collate(parts: Sequence[Any], pad_id: int) -> Any:
    """One batch of processor inputs from pages prepared one by one: prompts padded on the
    left (generation continues on the right), global views and tiles stacked in page order.

    The image processor treats each image on its own, so this is what preparing the pages
    together gives, without waiting for the whole batch to arrive first.
    """
    import torch
    from transformers import BatchFeature

    length = max(int(part["input_ids"].shape[1]) for part in parts)

    def left_pad(name: str, value: int) -> Any:
        rows = [part[name] for part in parts]
        return torch.cat(
            [torch.nn.functional.pad(row, (length - row.shape[1], 0), value=value) for row in rows], dim=0
        )

    data: dict[str, Any] = {
        "input_ids": left_pad("input_ids", pad_id),
        "attention_mask": left_pad("attention_mask", 0),
        "pixel_values": torch.cat([part["pixel_values"] for part in parts], dim=0),
        "num_local_patches": [int(n) for part in parts for n in _as_list(part["num_local_patches"])],
    }
    tiles = [part["pixel_values_local"] for part in parts if part.get("pixel_values_local") is not None]
    if tiles:
        data["pixel_values_local"] = torch.cat(tiles, dim=0)
    return BatchFeature(data=data)


def _as_list(value: Any) -> list[Any]:
    return value.tolist() if hasattr(value, "tolist") else list(value)


def finish_row(generated: Sequence[int], eos_id: int, max_tokens: int) -> tuple[list[int], str]:
    """A row's own tokens and finish reason, from the batch's generated ids.

    The row ends at its first EOS (transformers pads after it while other rows go
    on). It "stop"ped if that EOS came before its own max_tokens; otherwise it
    reached max_tokens ("length"), whether its EOS was the one forced at its limit
    or the batch simply ended.
    """
    tokens = list(generated)
    if eos_id in tokens:
        tokens = tokens[: tokens.index(eos_id)]
        if len(tokens) < max_tokens:
            return tokens, "stop"
    return tokens[:max_tokens], "length"


class TransformersEngine(BatchEngine):
    """DeepSeek-OCR-2 on transformers: bf16 on a GPU, fp32 on a CPU."""

    name = "transformers"
    max_batches_in_flight = 1

    def __init__(self, options: TransformersOptions) -> None:
        self.options = options
        self._torch: Any = None
        self._model: Any = None
        self._processor: Any = None
        self._device: Any = None
        self._dtype: Any = None
        self._eos_id = 1
        self._pad_id: int | None = None
        self._whitelist: frozenset[int] = frozenset()

    # -- start and stop ---------------------------------------------------------

    def load(self) -> None:
        check_resolution_mode(self.options.resolution_mode)
        if self._model is not None:
            return  # loaded already (an app restarted around the same engine)
        install_torchvision_import_fix()  # the image processor imports torchvision
        try:
            import torch
            from transformers import (
                AutoConfig,
                AutoProcessor,
                DeepseekOcr2ForConditionalGeneration,
            )
        except ImportError as exc:
            raise RuntimeError(
                f"OCR_ENGINE=transformers needs torch and transformers>=5.10.1 with DeepSeek-OCR-2 ({exc}); "
                "install requirements_models.txt"
            ) from exc
        self._torch = torch
        on_gpu = torch.cuda.is_available()
        self._device = torch.device("cuda" if on_gpu else "cpu")
        self._dtype = torch.bfloat16 if on_gpu else torch.float32  # CPUs lack fast bf16
        path = self.options.model_path
        if uses_random_weights(path):
            # A folder from `ocr_service.tiny_model` without a checkpoint: random
            # weights, initialised on the device directly (seconds, even full size).
            config = AutoConfig.from_pretrained(path)
            with self._device:
                model = DeepseekOcr2ForConditionalGeneration._from_config(config, dtype=self._dtype)
        else:
            model = DeepseekOcr2ForConditionalGeneration.from_pretrained(path, dtype=self._dtype)
        self._model = model.to(self._device).eval()
        processor = AutoProcessor.from_pretrained(path)
        processor.tokenizer.padding_side = "left"  # generation continues on the right
        # The processor counts a page's image tokens from its image processor's default
        # `size` and `tile_size`, not from those passed per call: set the mode's here.
        view = RESOLUTION_MODES[self.options.resolution_mode]
        processor.image_processor.size = {"height": view.global_size, "width": view.global_size}
        processor.image_processor.tile_size = view.tile_size
        self._processor = processor
        tokenizer = processor.tokenizer
        self._eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 1
        self._pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self._eos_id
        vocab = tokenizer.get_vocab()
        self._whitelist = frozenset(vocab[t] for t in TABLE_CELL_TOKENS if t in vocab)
        logger.info(
            "DeepSeek-OCR-2 loaded from %s on %s (%s), mode %s",
            path,
            self._device,
            self._dtype,
            self.options.resolution_mode,
        )
        self._warm_up()

    def _warm_up(self) -> None:
        """Run one batch of the configured size through both of the engine's threads."""
        size, tokens = self.options.warmup_batch, self.options.warmup_tokens
        if not size or not tokens:
            return
        started = time.perf_counter()
        page = render_test_page()
        pages = [PageRequest.of_image(page, DEFAULT_PROMPT, 0.0, tokens) for _ in range(size)]
        prepare, model = self._threads()
        ready = [future.result() for future in [prepare.submit(self._prepare, page) for page in pages]]
        model.submit(self._predict_ready, ready).result()
        logger.info("warmed up with a batch of %d pages in %.1f s", size, time.perf_counter() - started)

    def close(self) -> None:
        self._model = None
        self.free_memory()
        super().close()

    # -- memory, for the batch-size probe ---------------------------------------

    def reset_peak_memory(self) -> None:
        if self._on_gpu():
            self._torch.cuda.reset_peak_memory_stats(self._device)

    def peak_memory_bytes(self) -> int | None:
        """Peak GPU memory since `reset_peak_memory`; None on a CPU (not tracked)."""
        if not self._on_gpu():
            return None
        return int(self._torch.cuda.max_memory_allocated(self._device))

    def free_memory(self) -> None:
        if self._on_gpu():
            gc.collect()  # tensors kept alive only by reference cycles (tracebacks) go first
            self._torch.cuda.empty_cache()

    def _on_gpu(self) -> bool:
        return self._torch is not None and self._device is not None and self._device.type == "cuda"

    # -- inference --------------------------------------------------------------

    def predict(self, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        return self.predict_prepared(pages, [self._try_prepare(page) for page in pages])

    def prepare_page(self, page: DecodedPage) -> Any:
        """The image processor's inputs for one page: resized global view, tiles, prompt ids.

        CPU work; it runs on the engine's preparing threads, as the page arrives, while
        the model generates the batch before.
        """
        view = RESOLUTION_MODES[self.options.resolution_mode]
        try:
            return self._processor(
                images=[page.image],
                text=[with_image_tag(page.prompt)],
                crop_to_patches=view.crop_to_patches,
                size={"height": view.global_size, "width": view.global_size},
                tile_size=view.tile_size,
                return_tensors="pt",
            )
        except Exception as exc:
            raise EngineError(f"could not prepare the page for DeepSeek-OCR-2: {exc}") from exc

    def predict_prepared(self, pages: Sequence[DecodedPage], inputs: Sequence[Any]) -> list[PageOutcome]:
        """Generate the prepared pages together; each page that could not be prepared fails alone."""
        if self._model is None:
            raise EngineError("the transformers engine is not loaded")
        outcomes: list[PageOutcome | None] = [part if isinstance(part, Exception) else None for part in inputs]
        ready = [i for i, o in enumerate(outcomes) if o is None]
        if not ready:
            return [o for o in outcomes if o is not None]
        batch = collate([inputs[i] for i in ready], self._pad_id if self._pad_id is not None else self._eos_id)
        out_of_memory = ""
        try:
            rows = self._generate(batch, [pages[i] for i in ready])
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            out_of_memory = f"{len(ready)} pages at {self.options.resolution_mode}: {exc}"
        if out_of_memory:
            # Only now, outside the except block, are the torch error and its traceback (whose
            # frames hold the failed batch's activations) gone, so the cache can really be
            # emptied; and the error we raise carries no cause that would pin them again.
            del batch
            self.free_memory()
            raise EngineOutOfMemory(out_of_memory)
        for i, outcome in zip(ready, rows, strict=True):
            outcomes[i] = outcome
        return [o if o is not None else EngineError("no outcome") for o in outcomes]

    def _try_prepare(self, page: DecodedPage) -> Any:
        try:
            return self.prepare_page(page)
        except EngineError as exc:
            return exc

    def _generate(self, inputs: Any, pages: Sequence[DecodedPage]) -> list[PageOutcome]:
        torch = self._torch
        from transformers import LogitsProcessorList

        inputs = inputs.to(self._device)
        for key in ("pixel_values", "pixel_values_local"):
            if inputs.get(key) is not None:
                inputs[key] = inputs[key].to(self._dtype)
        prompt_length = int(inputs["input_ids"].shape[1])
        temperatures = [float(p.temperature) for p in pages]
        max_tokens = [int(p.max_tokens) for p in pages]
        processors = _logits_processors(
            torch,
            prompt_length=prompt_length,
            ngram_size=self.options.ngram_size,
            window_size=self.options.window_size,
            whitelist=self._whitelist,
            max_tokens=max_tokens,
            eos_id=self._eos_id,
            ignore_eos=self.options.ignore_eos,
            temperatures=temperatures,
        )
        sampling = any(t > 0 for t in temperatures)
        with torch.inference_mode():
            output = self._model.generate(
                **inputs,
                max_new_tokens=max(max_tokens),
                do_sample=sampling,
                # Per-row temperatures are applied by our own processor; keep the
                # checkpoint's generation defaults from adding any other warper.
                temperature=1.0 if sampling else None,
                top_k=None,
                top_p=None,
                logits_processor=LogitsProcessorList(processors),
                eos_token_id=self._eos_id,
                pad_token_id=self._pad_id,
            )
        generated = output[:, prompt_length:].tolist()
        tokenizer = self._processor.tokenizer
        outcomes: list[PageOutcome] = []
        for row, limit in zip(generated, max_tokens, strict=True):
            tokens, reason = finish_row(row, self._eos_id, limit)
            text = tokenizer.decode(tokens, skip_special_tokens=False)
            outcomes.append(PageOutput(text=text, finish_reason=reason, output_tokens=len(tokens)))
        return outcomes


def _logits_processors(
    torch: Any,
    *,
    prompt_length: int,
    ngram_size: int,
    window_size: int,
    whitelist: frozenset[int],
    max_tokens: Sequence[int],
    eos_id: int,
    ignore_eos: bool,
    temperatures: Sequence[float],
) -> list[Any]:
    """The per-row rules, as transformers `LogitsProcessor`s (defined here: they need torch)."""
    from transformers import LogitsProcessor

    class NoRepeatNGram(LogitsProcessor):
        """vLLM's DeepSeek-OCR n-gram guard, on each row's generated tokens only."""

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            generated = input_ids.shape[1] - prompt_length
            if generated < ngram_size:
                return scores
            start = input_ids.shape[1] - min(generated, window_size)
            for row, recent in enumerate(input_ids[:, start:].tolist()):
                banned = banned_ngram_tokens(recent, ngram_size, window_size, whitelist)
                if banned:
                    scores[row, list(banned)] = -float("inf")
            return scores

    class RowLimits(LogitsProcessor):
        """Each row's own max_tokens (EOS forced at the limit) and, if asked, no early EOS."""

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            generated = input_ids.shape[1] - prompt_length
            done = [row for row, limit in enumerate(max_tokens) if generated >= limit]
            if ignore_eos:
                going = [row for row, limit in enumerate(max_tokens) if generated < limit]
                if going:
                    scores[going, eos_id] = -float("inf")
            if done:
                scores[done, :] = -float("inf")
                scores[done, eos_id] = 0.0
            return scores

    class RowTemperature(LogitsProcessor):
        """Each row's own temperature; 0 keeps only the argmax (greedy) in a sampled batch."""

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            for row, temperature in enumerate(temperatures):
                if temperature > 0:
                    scores[row] = scores[row] / temperature
                else:
                    best = int(torch.argmax(scores[row]))
                    kept = scores[row, best].clone()
                    scores[row, :] = -float("inf")
                    scores[row, best] = kept
            return scores

    processors: list[Any] = [NoRepeatNGram(), RowLimits()]
    if any(t > 0 for t in temperatures):
        processors.append(RowTemperature())
    return processors
