"""The engine registry: the one place where `Settings` become an engine and its options.

Engines take plain options and know nothing of `Settings`; this module reads the
settings each one needs, and decides where the engine runs: in the service's process,
or in worker processes (`OCR_ENGINE_WORKERS`), one per GPU by default for the GPU
engines. Engine modules import their heavy libraries (torch, vLLM, onnxruntime's
models) in `load`, so importing them here costs nothing.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from ocr_service.config import EngineName, Settings
from ocr_service.engines.base import BatchEngine, Engine
from ocr_service.engines.fake import FakeEngine
from ocr_service.engines.rapidocr import RapidOcrEngine
from ocr_service.engines.remote import RemoteEngine, RemoteOptions
from ocr_service.engines.transformers import TransformersEngine, TransformersOptions
from ocr_service.engines.vllm import VllmEngine, VllmOptions
from ocr_service.engines.workers import WorkerOptions, WorkerPool


def _fake(settings: Settings) -> Engine:
    return FakeEngine(
        batch_latency=settings.fake_batch_latency,
        item_latency=settings.fake_item_latency,
        memory_budget_mb=settings.fake_memory_budget_mb,
        item_memory_mb=settings.fake_item_memory_mb,
    )


def _rapidocr(settings: Settings) -> Engine:
    return RapidOcrEngine(threads=settings.rapidocr_threads)


def _vllm(settings: Settings) -> Engine:
    return VllmEngine(
        VllmOptions(
            model_path=settings.model_path,
            gpu_memory_util=settings.gpu_memory_util,
            max_model_len=settings.max_model_len,
            tensor_parallel_size=settings.tensor_parallel_size,
            max_num_seqs=settings.batch_size,  # our page cap is vLLM's concurrency
            ngram_size=settings.ngram_size,
            window_size=settings.window_size,
            resolution_mode=settings.resolution_mode,
            attention_backend=settings.vllm_attention_backend,
            mm_encoder_attention_backend=settings.vllm_mm_encoder_attention_backend,
            engine_args=settings.vllm_engine_args,
            ignore_eos=settings.ignore_eos,
        )
    )


def _transformers(settings: Settings) -> Engine:
    return TransformersEngine(
        TransformersOptions(
            model_path=settings.model_path,
            resolution_mode=settings.resolution_mode,
            ngram_size=settings.ngram_size,
            window_size=settings.window_size,
            ignore_eos=settings.ignore_eos,
            warmup_batch=settings.batch_size if settings.warmup_tokens else 0,
            warmup_tokens=settings.warmup_tokens,
        )
    )


def _remote(settings: Settings) -> Engine:
    return RemoteEngine(
        RemoteOptions(
            urls=settings.remote_url_list,
            max_pages_per_replica=settings.batch_size,
            page_timeout=settings.remote_timeout,
            startup_timeout=settings.remote_startup_timeout,
            ngram_size=settings.ngram_size,
            window_size=settings.window_size,
            model=settings.remote_model or None,
            api_key=settings.remote_api_key.get_secret_value() or None,
            ignore_eos=settings.ignore_eos,
        )
    )


@dataclass(frozen=True)
class EngineEntry:
    build: Callable[[Settings], Engine]
    on_gpu: bool  # runs one worker per GPU by default
    batches_in_flight: int | None  # the engine's max_batches_in_flight
    prefetching: bool  # a BatchEngine: prepares hinted batches


ENGINES: dict[EngineName, EngineEntry] = {
    "fake": EngineEntry(_fake, False, FakeEngine.max_batches_in_flight, issubclass(FakeEngine, BatchEngine)),
    "rapidocr": EngineEntry(_rapidocr, False, RapidOcrEngine.max_batches_in_flight, False),
    "vllm": EngineEntry(_vllm, True, VllmEngine.max_batches_in_flight, False),
    "transformers": EngineEntry(
        _transformers, True, TransformersEngine.max_batches_in_flight, issubclass(TransformersEngine, BatchEngine)
    ),
    "remote": EngineEntry(_remote, False, RemoteEngine.max_batches_in_flight, False),
}


def build_engine(settings: Settings) -> Engine:
    """Create (not load) the engine that `settings.engine` names, in workers where configured."""
    entry = ENGINES[settings.engine]
    devices = worker_devices(settings, entry.on_gpu)
    if not devices:
        return entry.build(settings)
    return WorkerPool(
        WorkerOptions(
            name=settings.engine,
            factory=functools.partial(build_in_process, settings),
            devices=devices,
            batches_per_worker=entry.batches_in_flight,
            prefetching=entry.prefetching,
        )
    )


def build_in_process(settings: Settings) -> Engine:
    """The engine itself, to run in this process (what each worker builds)."""
    return ENGINES[settings.engine].build(settings)


def worker_devices(settings: Settings, on_gpu: bool) -> tuple[str, ...]:
    """One entry per worker process: the CUDA_VISIBLE_DEVICES it gets ("" = none); empty
    tuple = no workers, the engine runs in the service's process.

    GPU engines get one worker per group of `OCR_TENSOR_PARALLEL_SIZE` GPUs, unless
    `OCR_ENGINE_WORKERS` says otherwise; other engines get `OCR_ENGINE_WORKERS` workers.
    """
    if not on_gpu:
        return ("",) * (settings.engine_workers or 0)
    gpus = [part.strip() for part in settings.devices.split(",") if part.strip()] or _gpus_listed()
    size = settings.tensor_parallel_size
    groups = [",".join(gpus[i : i + size]) for i in range(0, len(gpus) - size + 1, size)]
    count = len(groups) if settings.engine_workers is None else settings.engine_workers
    if count and not groups:
        groups = [""]  # no GPU found (a CPU smoke test): unpinned workers
    return tuple(groups[i % len(groups)] for i in range(count))


def _gpus_listed() -> list[str]:
    """Indexes of the GPUs nvidia-smi lists (none where there is no NVIDIA driver)."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return []
    try:
        listed = subprocess.run([command, "-L"], capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(line for line in listed.splitlines() if line.startswith("GPU "))]


def resolution_mode_of(settings: Settings) -> str | None:
    """The resolution mode the engine serves, or None for engines without modes (RapidOCR, fake)."""
    return settings.resolution_mode if settings.engine in ("vllm", "transformers") else None
