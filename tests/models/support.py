"""What the model-engine tests share: skip markers, tiny model folders and `vllm serve` replicas."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

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


def available_memory_gib() -> float:
    """MemAvailable from /proc/meminfo: what can still be used without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return 0.0


@dataclass
class VllmReplica:
    """One `vllm serve` (its OpenAI-compatible server) on a tiny model, pinned to one CPU core.

    vllm-cpu 0.32.0's `vllm` command dies looking up its own version (the distribution is
    named vllm_cpu), so the server module is run directly. `--skip-mm-profiling` keeps
    the start at ~45 s and ~5 GB (profiling the full-size vision towers took 23 GB).
    Each replica runs in a process group of its own, so `kill` takes its engine
    process with it, as a crashed host would.
    """

    model_dir: Path
    port: int
    core: int
    log_path: Path
    max_num_seqs: int = 4
    logits_processors: bool = True  # False: a replica started without the n-gram guard
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "vllm.entrypoints.openai.api_server",
            "--model", str(self.model_dir), "--load-format", "dummy", "--dtype", "float32",
            "--skip-mm-profiling", "--max-model-len", "2048", "--max-num-seqs", str(self.max_num_seqs),
            "--limit-mm-per-prompt", json.dumps({"image": 1}),
            "--no-enable-prefix-caching", "--mm-processor-cache-gb", "0",
            "--host", "127.0.0.1", "--port", str(self.port), "--disable-uvicorn-access-log",
        ] + (
            ["--logits_processors", "vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"]
            if self.logits_processors
            else []
        )  # fmt: skip

    def start(self) -> None:
        env = {
            **os.environ,
            "VLLM_CPU_KVCACHE_SPACE": "1",
            # One core each, so two replicas share two cores without fighting ("auto" pins every one to core 0).
            "OMP_NUM_THREADS": "1",
            "VLLM_CPU_OMP_THREADS_BIND": str(self.core),
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_healthy(self, timeout: float = 600) -> None:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            if not self.running or time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve on port {self.port} did not start:\n{self.log_path.read_text()[-4000:]}")
            time.sleep(1)

    def kill(self) -> None:
        """SIGKILL to the whole replica (server and engine processes), as a crash would."""
        self._signal_group(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        if not self.running:
            return
        self._signal_group(signal.SIGTERM)
        assert self.process is not None
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()
        self._signal_group(signal.SIGKILL)  # an engine process left behind, if any

    def _signal_group(self, sig: signal.Signals) -> None:
        if self.process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def metric(self, name: str) -> float:
        """The sum of a metric's samples over all labels, from the replica's Prometheus /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

    def requests_done(self) -> int:
        return int(self.metric("vllm:request_success_total"))

    def requests_with_max_tokens_up_to(self, limit: int) -> int:
        """Requests whose max_tokens was at most `limit` (a bucket of vLLM's histogram: 1, 2, 5, 10, 20, ...):
        tells pages with a small max_tokens from the n-gram guard's 128-token canary."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        return int(sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "vllm:request_params_max_tokens_bucket" and float(sample.labels["le"]) == limit
        ))  # fmt: skip

    def rss_gib(self) -> float:
        """Resident memory of the replica's processes (server, engine, helpers)."""
        import psutil  # vLLM's dependency; only the models virtualenv has it

        if not self.running:
            return 0.0
        assert self.process is not None
        root = psutil.Process(self.process.pid)
        total = 0
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_info().rss
        return total / 2**30
