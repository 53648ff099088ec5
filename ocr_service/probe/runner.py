"""Running the probe: trials on a real engine, device memory readings, the whole search."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from ocr_service.config import Settings
from ocr_service.engines.base import Engine, EngineOutOfMemory, MemoryProbe, PageOutput, PageRequest
from ocr_service.engines.registry import build_engine
from ocr_service.engines.torch_support import is_out_of_memory
from ocr_service.engines.vllm import VllmEngine
from ocr_service.probe.curve import (
    ProbeError,
    ProbeResult,
    Trial,
    headroom_limit,
    maximum_fit,
    recommend,
    search,
)
from ocr_service.probe.report import format_trial
from ocr_service.probe.vllm_mode import run_vllm_probe

GiB = 1024**3
DEFAULT_MAX_BATCH = 256
CPU_PAGES_PER_THREAD = 4  # RapidOCR: past a few pages per thread, more in flight only queue up


def default_max_batch(settings: Settings) -> int:
    """The largest batch worth trying: 256 on the GPU engines; on RapidOCR the batch size
    only caps the pages in flight across its threads, so a few per thread is plenty."""
    if settings.engine == "rapidocr":
        return CPU_PAGES_PER_THREAD * settings.rapidocr_threads
    return DEFAULT_MAX_BATCH


def looks_like_oom(exc: BaseException) -> bool:
    """Whether `exc` is an out-of-memory error, from our engines or straight from torch/CUDA."""
    return isinstance(exc, EngineOutOfMemory) or is_out_of_memory(exc)


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
        with contextlib.suppress(Exception):  # shutting down a measurement; nothing to do
            self._nvml.nvmlShutdown()


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
        self.memory = engine if isinstance(engine, MemoryProbe) else None
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
        self._read_memory(lambda memory: memory.reset_peak_memory())
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
        peak = self._read_memory(lambda memory: memory.peak_memory_bytes())
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
        self._read_memory(lambda memory: memory.free_memory())

    def _read_memory(self, call: Callable[[MemoryProbe], int | None]) -> int | None:
        """Call a memory hook of an engine that has them; a failing hook must not end the probe."""
        if self.memory is None:
            return None
        try:
            return call(self.memory)
        except Exception:  # noqa: BLE001
            return None


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
    max_batch: int | None = None,
    memory_limit_gb: float | None = None,
    max_tokens: int | None = None,
    repeats: int = 1,
    engine: Engine | None = None,
    waves: int = 2,
    confirm: bool = True,
    log: Callable[[str], None] = lambda line: None,
) -> ProbeResult:
    """Load the engine, search for the maximum batch, measure the headroom limit, recommend.

    vLLM gets its own mode (`vllm_mode`): it sizes its memory itself, so its maximum is
    read from its KV cache rather than searched for; `waves` and `confirm` are its.
    """
    max_batch = max_batch if max_batch is not None else default_max_batch(settings)
    limit = limit_gpu_memory(memory_limit_gb) if memory_limit_gb is not None else None
    if limit is not None and settings.engine == "vllm":
        # vLLM allocates in its own engine process, outside this process's torch cap:
        # its own knob is the share of the GPU it takes.
        settings = settings.model_copy(update={"gpu_memory_util": min(settings.gpu_memory_util, limit[0])})
    if isinstance(engine, VllmEngine) or (engine is None and settings.engine == "vllm"):
        vllm_engine = engine if isinstance(engine, VllmEngine) else None
        return run_vllm_probe(
            settings, image, max_batch=max_batch, max_tokens=max_tokens, waves=waves, confirm=confirm,
            engine=vllm_engine, log=log,
        )
    page = PageRequest.of_image(
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
