"""What the model-engine tests share: skip markers and tiny model folders."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT


def _has(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


needs_vllm = pytest.mark.skipif(
    not _has("vllm"), reason="vLLM is not installed here; the models virtualenv has it (bash .ci/models.sh)"
)
needs_transformers_ocr2 = pytest.mark.skipif(
    not (_has("torch") and _has("transformers") and _has("transformers.models.deepseek_ocr2")),
    reason="torch and transformers>=5.10.1 (deepseek_ocr2) are not installed here; "
    "the models virtualenv has them (bash .ci/models.sh)",
)

# vLLM's own knobs for a small CPU run (read by vLLM, not by our code): a 1 GiB KV
# cache, and both cores for torch (vLLM drops to one thread otherwise).
VLLM_CPU_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "OMP_NUM_THREADS": str(os.cpu_count() or 2)}


def tiny_model(arch: str, out: Path) -> Path:
    """A tiny model folder, built in a child process so this one stays free of torch."""
    subprocess.run(
        [sys.executable, "-m", "ocr_service.tiny_model", "--arch", arch, "--out", str(out)],
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
    )
    return out
