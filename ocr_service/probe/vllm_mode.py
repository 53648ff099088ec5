"""The probe's vLLM mode: the pages in flight vLLM's KV cache holds, and where throughput levels off.

Doubling a batch until it runs out of memory measures nothing on vLLM: it takes
`OCR_GPU_MEMORY_UTIL` of the card at start, sizes its KV cache from what is left, and
schedules requests within it (past that, a request waits, or preempts another that
is then computed again). So here:

- the maximum safe batch size is the number of pages in flight whose keys and values
  fit the KV cache together when every page is the worst case: the Gundam page with
  the most image tokens (`render_tall_page`) and the longest output a page gets
  (`OCR_DEFAULT_MAX_TOKENS`, and never past `OCR_MAX_MODEL_LEN`). The numbers are
  vLLM's own (its KV blocks and block size, and the prompt length it reports for the
  page), and a run of that many such pages at once confirms them: vLLM's preemption
  counter must stay at 0;
- the recommendation is the knee of a sweep of pages in flight (1, 2, 4, ... up to
  the maximum), each measured at steady state: N pages kept in flight, the first N
  to finish left out, pages/s over the rest;
- the memory advice says which `OCR_GPU_MEMORY_UTIL` holds the recommendation, for a
  card shared with something else.

Every page generates exactly its max_tokens (EOS ignored), so each trial is the same
work and the KV cache fills as computed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from PIL import Image

from ocr_service.config import Settings
from ocr_service.engines.base import PageOutcome, PageOutput, PageRequest
from ocr_service.engines.sample_page import render_tall_page
from ocr_service.engines.vllm import VllmCapacity, VllmEngine
from ocr_service.probe.curve import HEADROOM, ProbeResult, Trial, recommend
from ocr_service.probe.report import format_trial

GiB = 1024**3
SWEEP_MAX_TOKENS = 512  # output tokens of a sweep page unless --max-tokens says otherwise
MEMORY_MARGIN = 0.02  # of the card, on top of the computed share: allocator slack, a second CUDA context


@dataclass(frozen=True)
class Worst:
    """The worst page's need, from vLLM's numbers."""

    prompt_tokens: int  # image and prompt, as vLLM counted them
    output_tokens: int  # the longest output it gets
    max_model_len: int

    @property
    def need(self) -> int:
        """Context the page holds at its end (vLLM stops a request at the context)."""
        return min(self.prompt_tokens + self.output_tokens, self.max_model_len)


def kv_bound(capacity: VllmCapacity, need: int) -> int:
    """Pages of `need` tokens whose KV blocks fit the cache together."""
    return capacity.kv_blocks // capacity.blocks_for(need)


def memory_share_for(capacity: VllmCapacity, pages: int, need: int) -> float | None:
    """The OCR_GPU_MEMORY_UTIL that holds `pages` worst-case pages; None where vLLM's numbers are missing.

    vLLM's share of the card is the model, its activations and CUDA graphs (fixed), plus
    the KV cache (what is left): the fixed part is the share now minus the cache now.
    """
    if not capacity.device_memory_bytes or not capacity.kv_bytes_per_token:
        return None
    block_bytes = capacity.block_size * capacity.kv_bytes_per_token
    fixed = capacity.gpu_memory_util * capacity.device_memory_bytes - capacity.kv_blocks * block_bytes
    wanted = fixed + pages * capacity.blocks_for(need) * block_bytes
    return math.ceil((wanted / capacity.device_memory_bytes + MEMORY_MARGIN) * 100) / 100


def sweep_sizes(maximum: int) -> list[int]:
    """1, 2, 4, ... below the maximum, then the maximum."""
    sizes = [2**k for k in range(maximum.bit_length()) if 2**k < maximum]
    return [*sizes, maximum]


async def keep_in_flight(engine: VllmEngine, page: PageRequest, in_flight: int, total: int) -> tuple[list[float], list[PageOutcome]]:
    """Send `total` pages, `in_flight` at a time (a new one as each ends); finish times and outcomes."""
    slots = asyncio.Semaphore(in_flight)
    finished: list[float] = []
    outcomes: list[PageOutcome] = []
    started = time.perf_counter()

    async def one() -> None:
        async with slots:
            async for _, outcome in engine.run([page]):
                outcomes.append(outcome)
                finished.append(time.perf_counter() - started)

    await asyncio.gather(*(one() for _ in range(total)))
    return sorted(finished), outcomes


def steady_trial(finished: Sequence[float], outcomes: Sequence[PageOutcome], in_flight: int) -> Trial:
    """A trial from one steady-state run: pages/s after the first `in_flight` pages ended.

    `seconds` is the time `in_flight` pages take at that rate, about one page's latency.
    """
    error = next((o for o in outcomes if isinstance(o, Exception)), None)
    if error is not None:
        return Trial(in_flight, error=f"{type(error).__name__}: {error}")
    window = finished[-1] - finished[in_flight - 1]
    if window <= 0:
        return Trial(in_flight, error="too few pages to measure a steady state")
    rate = (len(finished) - in_flight) / window
    return Trial(in_flight, in_flight / rate)


def vllm_engine_for_probe(settings: Settings, max_batch: int) -> VllmEngine:
    """The service's vLLM engine (in this process, not a worker), with room for `max_batch` pages,
    fixed output lengths and vLLM's counters."""
    from ocr_service.engines.registry import build_in_process

    engine = build_in_process(settings.model_copy(update={"batch_size": max_batch}))
    if not isinstance(engine, VllmEngine):
        raise TypeError(f"OCR_ENGINE={settings.engine} is not vLLM")
    return VllmEngine(dataclasses.replace(engine.options, ignore_eos=True, log_stats=True))


def run_vllm_probe(
    settings: Settings,
    image: Image.Image,
    *,
    max_batch: int,
    max_tokens: int | None = None,
    waves: int = 2,
    confirm: bool = True,
    engine: VllmEngine | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> ProbeResult:
    """Load vLLM, read its KV capacity for the worst page, confirm it, sweep pages in flight, recommend."""
    the_engine = engine if engine is not None else vllm_engine_for_probe(settings, max_batch)
    sweep_tokens = max_tokens if max_tokens is not None else SWEEP_MAX_TOKENS
    prompt, temperature = settings.default_prompt, settings.default_temperature
    result = ProbeResult(engine=the_engine.name, device="vLLM")
    with asyncio.Runner() as runner:
        log(f"loading engine {the_engine.name} ...")
        try:
            runner.run(asyncio.to_thread(the_engine.load))
        except Exception as exc:  # noqa: BLE001 (a start failure is the probe's answer, said plainly)
            result.failure = f"vLLM did not start: {exc}"
            return result
        try:
            capacity = the_engine.capacity()
            result.device = _describe(capacity)
            probe_page = PageRequest.of_image(image.convert("RGB"), prompt, temperature, 1)
            tall_page = PageRequest.of_image(render_tall_page(), prompt, temperature, 1)
            found = runner.run(_first_tokens(the_engine, [probe_page, tall_page]))  # also the warm-up
            if isinstance(found, str):
                result.failure = found
                return result
            test_prompt, tall_prompt = found
            worst = Worst(tall_prompt, settings.default_max_tokens, capacity.max_model_len)
            bound = kv_bound(capacity, worst.need)
            result.maximum = min(bound, max_batch)
            result.capped = bound > max_batch
            result.notes += _capacity_notes(capacity, worst, bound, test_prompt)
            trials: list[Trial] = []
            headroom = 1.0  # the maximum already holds the worst page
            if confirm:
                confirmed = _confirm(runner, the_engine, image, worst, test_prompt, result.maximum, settings, log)
                result.notes.append(confirmed.note)
                if not confirmed.ok:
                    headroom = HEADROOM
            page = dataclasses.replace(probe_page, max_tokens=sweep_tokens)
            for size in sweep_sizes(result.maximum):
                finished, outcomes = runner.run(keep_in_flight(the_engine, page, size, size * (waves + 1)))
                trial = steady_trial(finished, outcomes, size)
                log(format_trial(trial))
                trials.append(trial)
            result.trials = trials
            fitted = [t.batch_size for t in trials if t.ok]
            if not fitted:
                result.failure = f"No sweep size ran: {trials[0].error if trials else 'nothing measured'}"
                return result
            result.recommendation = recommend(trials, result.maximum, headroom)
            share = memory_share_for(capacity, result.recommendation.batch_size, worst.need)
            if share is not None:
                result.notes.append(
                    f"OCR_GPU_MEMORY_UTIL={share:.2f} holds the recommended {result.recommendation.batch_size} "
                    f"worst-case pages (now {capacity.gpu_memory_util:g}); on a card shared with other programs, "
                    "give vLLM at least that and leave them the rest, then run the probe again at that setting"
                )
        finally:
            runner.run(asyncio.to_thread(the_engine.close))
    return result


def _describe(capacity: VllmCapacity) -> str:
    if capacity.device_memory_bytes:
        return f"{capacity.device_name}, {capacity.device_memory_bytes / GiB:.1f} GiB, vLLM"
    return f"vLLM on the {capacity.device_name}"


async def _first_tokens(engine: VllmEngine, pages: list[PageRequest]) -> tuple[int, int] | str:
    """Prompt lengths vLLM reports for the test page and the tall page, or why they failed."""
    lengths: list[int] = [0] * len(pages)
    async for index, outcome in engine.run(pages):
        if not isinstance(outcome, PageOutput) or outcome.prompt_tokens is None:
            return f"The engine failed on a single page ({outcome!r}); fix that first, then run the probe again."
        lengths[index] = outcome.prompt_tokens
    return lengths[0], lengths[1]


def _capacity_notes(capacity: VllmCapacity, worst: Worst, bound: int, test_prompt: int) -> list[str]:
    lines = [
        f"vLLM's KV cache: {capacity.kv_blocks:,} blocks of {capacity.block_size} tokens = {capacity.kv_tokens:,} "
        f"tokens at OCR_GPU_MEMORY_UTIL={capacity.gpu_memory_util:g} (model runner {capacity.model_runner})",
        f"worst page: {worst.prompt_tokens} prompt tokens (the tallest Gundam page; the test page takes "
        f"{test_prompt}) + {worst.output_tokens} output tokens, capped at OCR_MAX_MODEL_LEN={worst.max_model_len}: "
        f"{worst.need} tokens = {capacity.blocks_for(worst.need)} blocks, so {bound} such pages fit at once",
    ]
    if capacity.encoder_budget_tokens:
        lines.append(
            f"vision encoder: {capacity.encoder_budget_tokens} image tokens a scheduler step, "
            f"{max(1, capacity.encoder_budget_tokens // worst.prompt_tokens)} worst pages' images at a time"
        )
    return lines


@dataclass(frozen=True)
class Confirmation:
    ok: bool
    note: str


def _confirm(
    runner: asyncio.Runner,
    engine: VllmEngine,
    image: Image.Image,
    worst: Worst,
    test_prompt: int,
    pages: int,
    settings: Settings,
    log: Callable[[str], None],
) -> Confirmation:
    """Run `pages` pages that each reach the worst page's need, all at once; vLLM must preempt none."""
    output = max(1, worst.need - test_prompt)
    page = PageRequest.of_image(image.convert("RGB"), settings.default_prompt, settings.default_temperature, output)
    log(f"confirming: {pages} pages at once, {test_prompt} + {output} tokens each ...")
    before = engine.preemptions()
    started = time.perf_counter()
    _, outcomes = runner.run(keep_in_flight(engine, page, pages, pages))
    seconds = time.perf_counter() - started
    after = engine.preemptions()
    failed = [o for o in outcomes if not isinstance(o, PageOutput)]
    if failed:
        return Confirmation(False, f"NOT confirmed: {len(failed)} of {pages} pages failed ({failed[0]!r})")
    if before is None or after is None:
        return Confirmation(True, f"ran {pages} worst-case pages at once in {seconds:.1f} s (vLLM counts no preemptions here)")
    if after > before:
        return Confirmation(
            False,
            f"NOT confirmed: vLLM preempted {after - before} requests running {pages} worst-case pages at once; "
            "the recommendation keeps 20% headroom instead",
        )
    return Confirmation(True, f"confirmed: {pages} worst-case pages ran at once in {seconds:.1f} s, 0 preemptions")
