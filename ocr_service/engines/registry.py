"""The engine registry: the one place where `Settings` become an engine and its options.

Engines take plain options and know nothing of `Settings`; this module reads the
settings each one needs. Engine modules import their heavy libraries (torch, vLLM,
onnxruntime's models) in `load`, so importing them here costs nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from ocr_service.config import EngineName, Settings
from ocr_service.engines.base import Engine
from ocr_service.engines.fake import FakeEngine
from ocr_service.engines.rapidocr import RapidOcrEngine
from ocr_service.engines.remote import RemoteEngine, RemoteOptions
from ocr_service.engines.transformers import TransformersEngine, TransformersOptions
from ocr_service.engines.vllm import VllmEngine, VllmOptions


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
        )
    )


def _transformers(settings: Settings) -> Engine:
    return TransformersEngine(
        TransformersOptions(
            model_path=settings.model_path,
            resolution_mode=settings.resolution_mode,
            ngram_size=settings.ngram_size,
            window_size=settings.window_size,
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
        )
    )


ENGINES: dict[EngineName, Callable[[Settings], Engine]] = {
    "fake": _fake,
    "rapidocr": _rapidocr,
    "vllm": _vllm,
    "transformers": _transformers,
    "remote": _remote,
}


def build_engine(settings: Settings) -> Engine:
    """Create (not load) the engine that `settings.engine` names."""
    return ENGINES[settings.engine](settings)


def batcher_page_cap(settings: Settings) -> int:
    """The batcher's cap on pages in the engine: OCR_BATCH_SIZE, once per replica for `remote`
    (each replica holds OCR_BATCH_SIZE pages; the engine spreads them)."""
    if settings.engine == "remote":
        return settings.batch_size * len(settings.remote_url_list)
    return settings.batch_size
