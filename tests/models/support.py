"""What the model-engine tests share: skip markers, tiny model folders, a real service process."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "failed", "cancelled"}


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def running_service(env: dict[str, str], workdir: Path, start_timeout: float) -> Iterator[str]:
    """`python run_service.py` with `env` on a free local port; yields its URL."""
    port = free_port()
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    full_env.update({"OCR_HOST": "127.0.0.1", "OCR_PORT": str(port), "PYTHONPATH": str(ROOT), **env})
    log_path = workdir / "service.log"
    url = f"http://127.0.0.1:{port}"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, str(ROOT / "run_service.py")], cwd=workdir, env=full_env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + start_timeout
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"service did not start:\n{log_path.read_text()[-6000:]}")
                time.sleep(1)
            yield url
        finally:
            process.terminate()
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_for_task(url: str, task_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = httpx.get(f"{url}/ocr/{task_id}", timeout=10).json()
        if body["status"] in TERMINAL:
            return body
        time.sleep(1)
    raise AssertionError(f"task {task_id} did not finish in {timeout} s")
