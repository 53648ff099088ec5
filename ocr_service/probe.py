"""The batch-size probe: find the largest batch that fits, measure the curve, recommend one.

`test_batch_size.py` is its command line. The probe builds the engine from the same
Settings as the service, so it measures what the service will run. It tries batches
of 1, 2, 4, ... pages until one fails (or `max_batch`), then bisects between the last
size that fit and the first that did not, so the maximum is exact rather than a power
of two. Every trial records its latency, pages per second and peak memory; an
out-of-memory error (or any other) is recorded as a failed trial, memory is freed and
the probe goes on.

The recommendation is not "half the maximum" (the seed's rule): it is the knee of the
measured throughput curve, the smallest batch that reaches `KNEE_SHARE` of the best
pages/s, because past the knee a bigger batch buys latency, not throughput; and it
stays within `HEADROOM` of the maximum, because the test page is one page at one size
while real pages vary (Gundam mode cuts 2 to 6 tiles, outputs differ in length).

This is a command-line tool, not part of the service: it drives the engine from its
own event loop, one batch at a time, and reads no environment itself.
"""

from __future__ import annotations

import asyncio
import gc
import math
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ocr_service.config import Settings
from ocr_service.engines.base import Engine, EngineOutOfMemory, PageOutput, PageRequest
from ocr_service.engines.registry import build_engine

GiB = 1024**3
MiB = 1024**2
DEFAULT_MAX_BATCH = 256
KNEE_SHARE = 0.90  # a batch "reaches the plateau" at 90% of the best measured pages/s
HEADROOM = 0.80  # recommend at most 80% of the maximum that fitted the test page
QUEUE_SECONDS = 60  # OCR_MAX_QUEUE_SIZE holds about this much work at the measured rate
QUEUE_MIN_BATCHES = 4  # ... and never fewer batches than this, so full batches are always ready
TORCH_ENGINES = ("transformers", "vllm")


class ProbeError(Exception):
    """The probe cannot run as asked (bad flag for this machine); the message says why."""


# -- measurements --------------------------------------------------------------


@dataclass(frozen=True)
class Trial:
    """One batch size, run once."""

    batch_size: int
    seconds: float | None = None
    peak_memory_bytes: int | None = None  # the engine's own peak (torch allocator, fake model)
    device_used_bytes: int | None = None  # highest NVML reading during the batch (whole GPU)
    error: str | None = None
    out_of_memory: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def pages_per_s(self) -> float | None:
        if not self.ok or not self.seconds:
            return None
        return self.batch_size / self.seconds


def search(try_size: Callable[[int], Trial], max_batch: int) -> list[Trial]:
    """Trials in the order run: doubling from 1 until a failure or `max_batch`, then bisection.

    Memory grows with batch size, so "fits" is monotone and bisection between the last
    size that fit and the first that failed finds the exact maximum in log2 steps.
    """
    if max_batch < 1:
        raise ProbeError("--max-batch must be at least 1")
    trials: list[Trial] = []
    fit, failed = 0, None
    size = 1
    while True:
        trial = try_size(size)
        trials.append(trial)
        if not trial.ok:
            failed = size
            break
        fit = size
        if size >= max_batch:
            break
        size = min(size * 2, max_batch)
    while failed is not None and failed - fit > 1:
        middle = (fit + failed) // 2
        trial = try_size(middle)
        trials.append(trial)
        if trial.ok:
            fit = middle
        else:
            failed = middle
    return trials


def maximum_fit(trials: Sequence[Trial]) -> int:
    """The largest batch that ran; 0 when none did."""
    return max((t.batch_size for t in trials if t.ok), default=0)


# -- recommendation ------------------------------------------------------------


@dataclass(frozen=True)
class Recommendation:
    batch_size: int
    reason: str
    pages_per_s: float | None
    max_queue_size: int
    queue_reason: str


def headroom_limit(maximum: int) -> int:
    """The largest batch we would recommend: HEADROOM of the maximum, at least 1."""
    return max(1, math.floor(maximum * HEADROOM))


def recommend(trials: Sequence[Trial], maximum: int) -> Recommendation:
    """Choose OCR_BATCH_SIZE from the measured curve (pure: no engine, no clock).

    The knee is the smallest measured batch whose pages/s reaches KNEE_SHARE of the best
    measured anywhere. If the knee lies above the headroom limit, the throughput is
    still rising there, so the largest measured batch within the limit is taken.
    """
    if maximum < 1:
        raise ValueError("nothing fitted; there is nothing to recommend")
    limit = headroom_limit(maximum)
    measured = sorted((t for t in trials if t.ok and t.pages_per_s), key=lambda t: t.batch_size)
    if not measured:
        return _with_queue(limit, None, f"no timings were measured; {limit} is {HEADROOM:.0%} of the maximum")
    best = max(measured, key=lambda t: t.pages_per_s or 0.0)
    best_rate = best.pages_per_s or 0.0
    target = KNEE_SHARE * best_rate
    within = [t for t in measured if t.batch_size <= limit]
    knee = next((t for t in measured if (t.pages_per_s or 0.0) >= target), best)
    if knee.batch_size <= limit:
        chosen = knee
        rate = chosen.pages_per_s or 0.0
        reason = (
            f"{chosen.batch_size} reaches {rate / best_rate:.0%} of the best measured throughput "
            f"({rate:.2f} of {best_rate:.2f} pages/s at {best.batch_size}); "
        )
        if best.batch_size > chosen.batch_size and best.seconds and chosen.seconds:
            reason += (
                f"larger batches add latency ({chosen.seconds:.2f} s -> {best.seconds:.2f} s a batch) "
                f"for little more throughput, "
            )
        reason += f"and it stays within the memory headroom limit of {limit} ({HEADROOM:.0%} of the maximum {maximum})"
    elif within:
        chosen = within[-1]
        rate = chosen.pages_per_s or 0.0
        reason = (
            f"{chosen.batch_size} is the memory headroom limit ({HEADROOM:.0%} of the maximum {maximum}, "
            f"room for pages larger than the test page); throughput still rises up to it "
            f"({rate:.2f} pages/s here, {best_rate:.2f} at {best.batch_size})"
        )
    else:  # the limit was not measured (callers measure it; see run_probe)
        return _with_queue(limit, None, f"{limit} is {HEADROOM:.0%} of the maximum {maximum}")
    return _with_queue(chosen.batch_size, chosen.pages_per_s, reason)


def _with_queue(batch_size: int, pages_per_s: float | None, reason: str) -> Recommendation:
    queue, queue_reason = queue_size_for(batch_size, pages_per_s)
    return Recommendation(batch_size, reason, pages_per_s, queue, queue_reason)


def queue_size_for(batch_size: int, pages_per_s: float | None) -> tuple[int, str]:
    """OCR_MAX_QUEUE_SIZE: about QUEUE_SECONDS of work, and at least QUEUE_MIN_BATCHES batches.

    The queue bounds how long an admitted page waits: a client at the back of a full
    queue waits queue/throughput seconds, so a minute of work keeps that wait short
    (and the 503's Retry-After honest) while smoothing bursts. A few full batches
    must always be ready so the engine never idles between them.
    """
    floor = QUEUE_MIN_BATCHES * batch_size
    if not pages_per_s:
        return max(100, floor), f"no throughput measured; kept the default 100 (at least {QUEUE_MIN_BATCHES} batches)"
    by_time = math.ceil(QUEUE_SECONDS * pages_per_s / 10) * 10  # a round number
    if by_time >= floor:
        return by_time, (
            f"about {QUEUE_SECONDS} s of work at {pages_per_s:.2f} pages/s: a full queue drains "
            f"within a minute, so no admitted page waits longer than that"
        )
    return floor, f"{QUEUE_MIN_BATCHES} batches of {batch_size}, so full batches are always ready"


# -- running trials on an engine -----------------------------------------------


def looks_like_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory error, from our engines or straight from torch/CUDA."""
    if isinstance(exc, EngineOutOfMemory | MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "cuda_error_out_of_memory" in text


class DeviceMemorySampler:
    """Polls NVML for the GPU's used memory while a batch runs and keeps the highest reading.

    NVML sees the whole device (other processes, vLLM's engine process, the CUDA
    context, the allocator's cache), which torch's own counters do not. Without
    pynvml or a GPU it reads nothing and every reading is None.
    """

    INTERVAL = 0.02

    def __init__(self, handle: Any, nvml: Any) -> None:
        self._handle = handle
        self._nvml = nvml
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_current_device(cls) -> DeviceMemorySampler | None:
        """A sampler for torch's current CUDA device, if torch (already loaded) and pynvml are here."""
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available():
            return None
        try:
            import pynvml  # nvidia-ml-py; optional
        except ImportError:
            return None
        try:
            pynvml.nvmlInit()
            index = torch.cuda.current_device()
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is not None:  # CUDA_VISIBLE_DEVICES renumbers devices; the UUID does not change
                handle = pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
            else:
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        except Exception:  # noqa: BLE001 (NVML is optional: without it the column reads "-")
            return None
        return cls(handle, pynvml)

    def used_bytes(self) -> int:
        return int(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used)

    def start(self) -> None:
        self._peak = self.used_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, name="nvml-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> int:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._peak = max(self._peak, self.used_bytes())
        return self._peak

    def _poll(self) -> None:
        while not self._stop.wait(self.INTERVAL):
            self._peak = max(self._peak, self.used_bytes())

    def close(self) -> None:
        try:
            self._nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001, S110 (shutting down a measurement; nothing to do)
            pass


class Prober:
    """Runs batches of the test page through one loaded engine, one trial at a time."""

    def __init__(
        self,
        engine: Engine,
        page: PageRequest,
        runner: asyncio.Runner,
        sampler: DeviceMemorySampler | None = None,
        repeats: int = 1,
    ) -> None:
        self.engine = engine
        self.page = page
        self.runner = runner
        self.sampler = sampler
        self.repeats = max(1, repeats)

    def trial(self, batch_size: int) -> Trial:
        """Run a batch `repeats` times and keep the fastest run (the least disturbed by noise).

        A failure ends the repeats: the size does not fit, whatever the earlier runs did.
        """
        best = self.run_once(batch_size)
        for _ in range(self.repeats - 1):
            if not best.ok:
                break
            again = self.run_once(batch_size)
            if not again.ok:
                return again
            if (again.seconds or 0) < (best.seconds or 0):
                best = again
        return best

    def run_once(self, batch_size: int) -> Trial:
        """Run one batch; whatever it raises becomes a failed trial, never an exception here."""
        self._call_optional("reset_peak_memory")
        if self.sampler is not None:
            self.sampler.start()
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            outcomes = self.runner.run(self._run([self.page] * batch_size))
            seconds = time.perf_counter() - started
            error = next((o for o in outcomes if isinstance(o, Exception)), None)
            if error is None and len(outcomes) != batch_size:
                error = RuntimeError(f"the engine answered {len(outcomes)} of {batch_size} pages")
        except Exception as exc:  # noqa: BLE001 (out of memory above all; no failure may end the probe)
            seconds = time.perf_counter() - started
            error = exc
        device = self.sampler.stop() if self.sampler is not None else None
        peak = self._call_optional("peak_memory_bytes")
        if error is None:
            return Trial(batch_size, seconds, peak, device)
        message = f"{type(error).__name__}: {error}".strip()
        out_of_memory = looks_like_oom(error)
        del error  # its traceback can hold the failed batch's tensors: drop it before cleaning up
        self.clean_up()
        return Trial(batch_size, seconds, peak, device, error=message, out_of_memory=out_of_memory)

    async def _run(self, pages: list[PageRequest]) -> list[PageOutput | Exception]:
        outcomes: list[PageOutput | Exception] = []
        async for _, outcome in self.engine.run(pages):
            outcomes.append(outcome)
        return outcomes

    def clean_up(self) -> None:
        """Release what a failed batch left behind so the next trial starts clean."""
        gc.collect()  # drop the failed batch's tensors before the engine empties its cache
        self._call_optional("free_memory")

    def _call_optional(self, name: str) -> Any:
        method = getattr(self.engine, name, None)
        if not callable(method):
            return None
        try:
            return method()
        except Exception:  # noqa: BLE001 (an optional memory hook must not end the probe)
            return None


# -- the whole probe -----------------------------------------------------------


@dataclass
class ProbeResult:
    engine: str
    device: str
    trials: list[Trial] = field(default_factory=list)  # in the order run
    maximum: int = 0
    capped: bool = False  # the maximum is --max-batch, not a failure
    recommendation: Recommendation | None = None
    failure: str | None = None  # why nothing fitted


def limit_gpu_memory(limit_gb: float) -> tuple[float, float]:
    """Cap this process's share of the GPU (torch's per-process memory fraction).

    Returns (fraction, total GiB). Torch is imported only here, when the flag is used.
    The cap binds torch's caching allocator; the CUDA context (a few hundred MB) is
    outside it, so the card being imitated should have that much more than the cap.
    """
    try:
        import torch
    except ImportError as exc:
        raise ProbeError("--memory-limit-gb needs torch and a CUDA GPU (install requirements_models.txt)") from exc
    if not torch.cuda.is_available():
        raise ProbeError("--memory-limit-gb needs a CUDA GPU, and none is visible")
    device = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = limit_gb * GiB / total
    if not 0 < fraction <= 1:
        raise ProbeError(f"--memory-limit-gb {limit_gb:g} must be above 0 and at most this GPU's {total / GiB:.1f} GiB")
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    return fraction, total / GiB


def describe_device(settings: Settings, limit: tuple[float, float] | None) -> str:
    """A line naming what the probe measures: the GPU (and its cap), or the fake memory model."""
    if settings.engine == "fake":
        if settings.fake_memory_budget_mb:
            return (
                f"fake engine, simulated memory {settings.fake_memory_budget_mb:g} MB, "
                f"{settings.fake_item_memory_mb:g} MB a page"
            )
        return "fake engine, unlimited simulated memory"
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available():
        return f"{settings.engine} engine on the CPU"
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    text = f"{props.name}, {props.total_memory / GiB:.1f} GiB"
    if limit is not None:
        text += f", capped at {limit[0] * limit[1]:.1f} GiB ({limit[0]:.3f} of it)"
    return text


def nothing_fits_message(settings: Settings, trial: Trial) -> str:
    """What to tell a user whose single page did not fit: the cause and the settings to change."""
    if not trial.out_of_memory:
        return (
            f"The engine failed on a single page ({trial.error}). That is not a memory limit; "
            "fix it first (the service would fail the same way), then run the probe again."
        )
    lines = [
        (
            f"Even a single page does not fit in memory with OCR_ENGINE={settings.engine} "
            f"at OCR_RESOLUTION_MODE={settings.resolution_mode} ({trial.error})."
        ),
        "Change one of:",
        "  - OCR_RESOLUTION_MODE: a smaller mode needs less memory (gundam > large > base > small > tiny);",
        (
            f"  - OCR_GPU_MEMORY_UTIL (now {settings.gpu_memory_util:g}) or --memory-limit-gb: give the model "
            "more of the GPU, and free it of other processes;"
        ),
        "  - a GPU with more memory.",
    ]
    if settings.engine == "fake":
        lines.append("  (fake engine: OCR_FAKE_MEMORY_BUDGET_MB must be at least OCR_FAKE_ITEM_MEMORY_MB)")
    return "\n".join(lines)


def run_probe(
    settings: Settings,
    image: Image.Image,
    *,
    max_batch: int = DEFAULT_MAX_BATCH,
    memory_limit_gb: float | None = None,
    max_tokens: int | None = None,
    repeats: int = 1,
    engine: Engine | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> ProbeResult:
    """Load the engine, search for the maximum batch, measure the headroom limit, recommend."""
    limit = limit_gpu_memory(memory_limit_gb) if memory_limit_gb is not None else None
    if limit is not None and settings.engine == "vllm":
        # vLLM allocates in its own engine process, outside this process's torch cap:
        # its own knob is the share of the GPU it takes.
        settings = settings.model_copy(update={"gpu_memory_util": min(settings.gpu_memory_util, limit[0])})
    page = PageRequest(
        image.convert("RGB"),
        settings.default_prompt,
        settings.default_temperature,
        max_tokens if max_tokens is not None else settings.default_max_tokens,
    )
    with asyncio.Runner() as runner:
        the_engine = engine if engine is not None else build_engine(settings)
        log(f"loading engine {the_engine.name} ...")
        runner.run(asyncio.to_thread(the_engine.load))  # in a worker thread, as the service does
        sampler = DeviceMemorySampler.for_current_device()
        result = ProbeResult(engine=the_engine.name, device=describe_device(settings, limit))
        try:
            prober = Prober(the_engine, page, runner, sampler, repeats)

            def try_size(size: int) -> Trial:
                trial = prober.trial(size)
                log(format_trial(trial))
                return trial

            warm = prober.run_once(1)  # first calls compile and allocate lazily: not a fair timing
            if not warm.ok:
                result.trials = [warm]
                result.failure = nothing_fits_message(settings, warm)
                return result
            result.trials = search(try_size, max_batch)
            result.maximum = maximum_fit(result.trials)
            if result.maximum == 0:
                result.failure = nothing_fits_message(settings, result.trials[0])
                return result
            result.capped = result.maximum >= max_batch
            if headroom_limit(result.maximum) not in {t.batch_size for t in result.trials if t.ok}:
                result.trials.append(try_size(headroom_limit(result.maximum)))
            result.recommendation = recommend(result.trials, result.maximum)
        finally:
            if sampler is not None:
                sampler.close()
            runner.run(asyncio.to_thread(the_engine.close))
    return result


# -- output --------------------------------------------------------------------


def _mib(value: int | None) -> str:
    return "-" if not value else f"{value / MiB:,.0f}"


def format_trial(trial: Trial) -> str:
    if trial.ok:
        return (
            f"batch {trial.batch_size:>4}: ok   {trial.seconds or 0:8.3f} s  {trial.pages_per_s or 0:8.2f} pages/s  "
            f"peak {_mib(trial.peak_memory_bytes)} MiB"
        )
    kind = "OOM " if trial.out_of_memory else "FAIL"
    return f"batch {trial.batch_size:>4}: {kind} {trial.error}"


def format_table(trials: Sequence[Trial]) -> str:
    """One row per batch size tried, smallest first."""
    header = f"{'batch':>6} {'result':>7} {'latency s':>10} {'pages/s':>9} {'peak MiB':>10} {'device MiB':>11}  note"
    rows = [header, "-" * len(header)]
    for trial in sorted(trials, key=lambda t: t.batch_size):
        result = "ok" if trial.ok else ("OOM" if trial.out_of_memory else "error")
        latency = "-" if trial.seconds is None or not trial.ok else f"{trial.seconds:.3f}"
        rate = "-" if trial.pages_per_s is None else f"{trial.pages_per_s:.2f}"
        note = "" if trial.ok else (trial.error or "")[:100]
        rows.append(
            f"{trial.batch_size:>6} {result:>7} {latency:>10} {rate:>9} "
            f"{_mib(trial.peak_memory_bytes):>10} {_mib(trial.device_used_bytes):>11}  {note}".rstrip()
        )
    return "\n".join(rows)


def env_lines(recommendation: Recommendation) -> dict[str, str]:
    return {
        "OCR_BATCH_SIZE": str(recommendation.batch_size),
        "OCR_MAX_QUEUE_SIZE": str(recommendation.max_queue_size),
    }


def format_report(result: ProbeResult) -> str:
    """The table and the seed's recommendation block."""
    bar = "=" * 60
    lines = [f"Engine: {result.engine} ({result.device})", "", format_table(result.trials), ""]
    lines += [bar, "RECOMMENDATIONS", bar]
    rec = result.recommendation
    if rec is None:
        lines.append("No batch size fits.")
        return "\n".join(lines)
    lines += [
        f"For {result.device}:",
        f"  Maximum safe batch size: {result.maximum}"
        + (" (the --max-batch cap; larger batches were not tried)" if result.capped else ""),
        f"  Recommended batch size: {rec.batch_size}",
        f"    ({rec.reason})",
        "",
        "Update your .env file:",
        *(f"  {key}={value}" for key, value in env_lines(rec).items()),
        f"    (OCR_MAX_QUEUE_SIZE: {rec.queue_reason})",
    ]
    return "\n".join(lines)


def update_env_file(path: Path, values: dict[str, str]) -> None:
    """Set `values` in a .env file: replace their lines, append the missing, keep every other line."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    pending = dict(values)
    for number, line in enumerate(lines):
        key = line.strip().removeprefix("export ").split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in values:
            lines[number] = f"{key}={values[key]}"
            pending.pop(key, None)
    lines += [f"{key}={value}" for key, value in pending.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# -- the test page ---------------------------------------------------------------

A4_AT_144_DPI = (1191, 1684)  # the upstream scripts rasterise PDFs at 144 dpi (DESIGN.md section 5)

_PARAGRAPH = (
    "The service accepts images and PDF documents, places every page in a bounded queue and groups "
    "waiting pages into batches for the model. Each page keeps its own prompt and sampling parameters. "
    "A batch that does not fit in device memory is split in halves and retried, and the live batch cap "
    "is lowered until the pages fit again. Results are returned as Markdown with layout boxes. "
)
_TABLE = [
    ("Region", "Q1 revenue", "Q2 revenue", "Growth", "Staff"),
    ("North", "1,204.50", "1,377.10", "14.3%", "212"),
    ("South", "986.00", "1,002.75", "1.7%", "175"),
    ("East", "2,310.40", "2,128.90", "-7.9%", "340"),
    ("West", "754.25", "901.60", "19.5%", "98"),
    ("Central", "1,580.00", "1,644.30", "4.1%", "260"),
    ("Total", "6,835.15", "7,054.65", "3.2%", "1,085"),
]


def render_test_page(size: tuple[int, int] = A4_AT_144_DPI) -> Image.Image:
    """A dense A4 text page: title, paragraphs at body size, a ruled table, a footer.

    It stands in for a typical document page so the probe sees realistic vision and
    output work; pass a real scan with --test-image to probe with your own pages.
    """
    width, height = size
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    title = ImageFont.load_default(size=40)
    body = ImageFont.load_default(size=22)  # about 11 pt at 144 dpi
    margin, y = 100, 90
    draw.text((margin, y), "Quarterly Operations Report", fill="black", font=title)
    y += 80
    words = (_PARAGRAPH * 2).split()
    for paragraph in range(3):
        y = _draw_wrapped(draw, words[paragraph * 7 :] + words[: paragraph * 7], (margin, y), width - 2 * margin, body)
        y += 24
    y = _draw_table(draw, (margin, y), width - 2 * margin, body) + 30
    while y < height - 200:
        y = _draw_wrapped(draw, words, (margin, y), width - 2 * margin, body) + 24
    draw.text((margin, height - 90), "Page 1 of 1    Confidential", fill="gray", font=body)
    return image


def _draw_wrapped(draw: ImageDraw.ImageDraw, words: list[str], origin: tuple[int, int], width: int, font: Any) -> int:
    x, y = origin
    line: list[str] = []
    for word in words:
        if line and draw.textlength(" ".join([*line, word]), font=font) > width:
            draw.text((x, y), " ".join(line), fill="black", font=font)
            y += 34
            line = []
        line.append(word)
    if line:
        draw.text((x, y), " ".join(line), fill="black", font=font)
        y += 34
    return y


def _draw_table(draw: ImageDraw.ImageDraw, origin: tuple[int, int], width: int, font: Any) -> int:
    x, y = origin
    column = width // len(_TABLE[0])
    row_height = 44
    for row_number, row in enumerate(_TABLE):
        top = y + row_number * row_height
        draw.rectangle((x, top, x + column * len(row), top + row_height), outline="black", width=2)
        for col, cell in enumerate(row):
            draw.line((x + col * column, top, x + col * column, top + row_height), fill="black", width=2)
            draw.text((x + col * column + 10, top + 10), cell, fill="black", font=font)
    return y + len(_TABLE) * row_height
