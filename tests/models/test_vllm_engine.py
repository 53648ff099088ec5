"""OCR_ENGINE=vllm on a tiny random-weight DeepSeek-OCR: the service, the n-gram guard's canary, the probe.

vLLM's vision towers stay full size (SAM ViT-B and CLIP-L are fixed in its code), so
on a CPU one start takes a minute or two and each page about 10-20 s: each test here
starts vLLM once, and one service process answers every service check.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from PIL import Image

from ocr_service.config import Settings
from ocr_service.engines.vllm import VllmEngine, VllmOptions
from ocr_service.probe import format_report, run_probe
from tests.helpers import encode, poll_task, service_process, text_page
from tests.models.support import VLLM_CPU_ENV, needs_vllm, tiny_model

pytestmark = needs_vllm


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model("deepseek-ocr", tmp_path_factory.mktemp("tiny-ocr"))


def test_the_service_answers_uploads_with_vllm_page_by_page(model_dir: Path, tmp_path: Path) -> None:
    env = {
        **VLLM_CPU_ENV,
        "OCR_ENGINE": "vllm",
        "OCR_MODEL_PATH": str(model_dir),
        "OCR_MAX_MODEL_LEN": "2048",
        "OCR_BATCH_SIZE": "4",
        "OCR_BATCH_TIMEOUT": "0.5",
        "OCR_DEFAULT_MAX_TOKENS": "16",
        # As on a GPU host (one worker per GPU): vLLM in an engine worker, which starts vLLM's
        # own engine-core process in turn.
        "OCR_ENGINE_WORKERS": "1",
    }
    # At most 640 px a side: one view, no tiles, the cheapest page vLLM's towers take.
    upload = encode(text_page(["Invoice 4711", "Total 12.50", "发票 合计"], size=(452, 640), font_size=28))
    with service_process(tmp_path, env, start_timeout=900) as service:
        url = service.url

        def post(**form: str) -> str:
            response = httpx.post(f"{url}/ocr", files={"file": ("page.png", upload, "image/png")}, data=form)
            assert response.status_code == 202, response.text
            return response.json()["task_id"]

        # Sent together, so vLLM holds them at once; each keeps its own settings.
        short = post(max_tokens="3")
        grounded = post(prompt="<image>\n<|grounding|>OCR this image.", max_tokens="10")
        # A prompt longer than OCR_MAX_MODEL_LEN: vLLM refuses this page alone.
        too_long = post(prompt="<image>\n" + "x" * 3000)

        done = poll_task(url, short, timeout=600)
        assert done["status"] == "completed", done
        assert done["pages"][0]["finish_reason"] == "length" and done["warnings"], done
        assert isinstance(done["result"], str)

        done = poll_task(url, grounded, timeout=600)
        assert done["status"] == "completed", done
        assert done["pages"][0]["finish_reason"] in ("stop", "length")

        failed = poll_task(url, too_long, timeout=600)
        assert failed["status"] == "failed" and "OCR_MAX_MODEL_LEN=2048" in failed["error"], failed

        stats = httpx.get(f"{url}/stats").json()
        assert stats["engine"] == "vllm" and stats["completed"] >= 2
        assert [worker["state"] for worker in stats["workers"]] == ["ready"]


@pytest.fixture
def vllm_cpu_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in VLLM_CPU_ENV.items():
        monkeypatch.setenv(key, value)


def options(model_dir: Path, **overrides: object) -> VllmOptions:
    values: dict = dict(
        model_path=str(model_dir), gpu_memory_util=0.8, max_model_len=1024, tensor_parallel_size=1,
        max_num_seqs=2, ngram_size=30, window_size=90, resolution_mode="gundam",
    )
    values.update(overrides)
    return VllmOptions(**values)


def test_start_refuses_a_vllm_that_does_not_apply_the_guard(model_dir: Path, vllm_cpu_env: None) -> None:
    """The n-gram processor left out: the canary's guarded page repeats, and the start stops with the fix."""
    engine = VllmEngine(options(model_dir, ngram_guard=False))
    with pytest.raises(RuntimeError, match="n-gram repetition guard") as refused:
        engine.load()
    message = str(refused.value)
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in message and "vLLM 0.20.1" in message
    assert "model runner V1" in message  # what this vLLM chose, said in the message
    assert engine.guard_check is not None and not engine.guard_check.applied  # kept for the record
    assert engine.guard_check.unguarded_repeats > 0 and engine._engine is None  # nothing left running


def test_probe_reads_the_maximum_from_the_kv_cache_and_recommends_a_knee(model_dir: Path, vllm_cpu_env: None) -> None:
    """vLLM's probe mode on a KV cache of 19 blocks of 128 tokens: two worst-case pages of 1,024 tokens fit.

    The same engine's start proves the guard: the canary repeats without the rule and not with it.
    """
    settings = Settings(_env_file=None, engine="vllm", model_path=str(model_dir), max_model_len=1024)
    engine = VllmEngine(options(model_dir, max_num_seqs=4, ignore_eos=True, log_stats=True, kv_cache_blocks=19))
    small_page = Image.new("RGB", (452, 640), "white")  # one view: the cheapest page for the sweep
    result = run_probe(settings, small_page, max_batch=4, max_tokens=16, waves=1, engine=engine)

    check = engine.guard_check
    assert check is not None and check.applied and check.conclusive, check
    assert result.failure is None, result.failure
    # 8 blocks a worst page (the tall page's prompt plus output, capped at the context): 19 // 8 = 2,
    # below the --max-batch cap of 4
    assert result.maximum == 2 and not result.capped
    assert [t.batch_size for t in result.trials] == [1, 2] and all(t.ok for t in result.trials)
    assert result.recommendation is not None and 1 <= result.recommendation.batch_size <= 2
    notes = "\n".join(result.notes)
    assert "19 blocks of 128 tokens" in notes and "1024 tokens = 8 blocks, so 2 such pages fit" in notes
    assert "confirmed: 2 worst-case pages ran at once" in notes and "0 preemptions" in notes
    report = format_report(result)
    assert "Maximum safe batch size: 2" in report and f"OCR_BATCH_SIZE={result.recommendation.batch_size}" in report
