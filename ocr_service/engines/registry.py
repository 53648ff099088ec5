"""Engine registry: the one place that maps `OCR_ENGINE` to an engine class.

Heavy engines are imported only when chosen, so the CPU install needs no torch.
"""

from __future__ import annotations

import importlib

from ocr_service.config import Settings
from ocr_service.engines.base import Engine

ENGINES: dict[str, str] = {
    "fake": "ocr_service.engines.fake:FakeEngine",
    "rapidocr": "ocr_service.engines.rapidocr:RapidOcrEngine",
    "vllm": "ocr_service.engines.vllm:VllmEngine",
    "transformers": "ocr_service.engines.transformers:TransformersEngine",
}


def build_engine(settings: Settings) -> Engine:
    """Create (not load) the engine that `settings.engine` names."""
    module_name, class_name = ENGINES[settings.engine].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RuntimeError(
            f"OCR_ENGINE={settings.engine} needs packages that are not installed ({exc}); "
            "see the README's section on GPU engines"
        ) from exc
    return getattr(module, class_name).from_settings(settings)
