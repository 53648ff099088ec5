"""Settings: every variable of .env.example exists, with the seed's defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from ocr_service.config import Settings

ROOT = Path(__file__).resolve().parent.parent


def test_env_example_lists_every_setting_with_its_default() -> None:
    listed = {}
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            listed[name] = value
    fields = {f"OCR_{name.upper()}" for name in Settings.model_fields}
    assert set(listed) == fields
    from_example = Settings(_env_file=ROOT / ".env.example")
    assert from_example == Settings(_env_file=None)


def test_seed_defaults() -> None:
    s = Settings(_env_file=None)
    assert (s.batch_size, s.max_queue_size, s.batch_timeout, s.task_ttl, s.cleanup_interval) == (8, 100, 2.0, 3600, 300)
    assert (s.max_image_size_mb, s.image_download_timeout, s.ngram_size, s.window_size) == (20, 30, 30, 90)
    assert (s.model_path, s.gpu_memory_util, s.max_model_len, s.tensor_parallel_size) == ("deepseek-ai/DeepSeek-OCR", 0.8, 8192, 1)
    assert s.default_prompt == "<image>\n<|grounding|>Convert the document to markdown."
    assert (s.default_temperature, s.default_max_tokens, s.host, s.port, s.log_level) == (0.0, 8192, "0.0.0.0", 8000, "INFO")
    assert s.engine == "rapidocr"


def test_environment_overrides_and_rejects(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OCR_BATCH_SIZE", "16")
    monkeypatch.setenv("OCR_ENGINE", "fake")
    assert Settings(_env_file=None).batch_size == 16
    monkeypatch.setenv("OCR_ENGINE", "tesseract")
    with pytest.raises(ValidationError, match="engine"):
        Settings(_env_file=None)


def test_decode_workers_follow_the_cores_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    for cores, workers in [(2, 3), (16, 8), (32, 16), (128, 16)]:
        monkeypatch.setattr("os.cpu_count", lambda cores=cores: cores)
        assert Settings(_env_file=None).decode_workers == workers
    assert Settings(_env_file=None, decode_workers=5).decode_workers == 5
