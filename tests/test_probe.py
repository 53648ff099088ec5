"""The batch-size probe: its search on the fake memory model, its recommendation, --write-env, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from ocr_service.engines.base import DecodedPage, EngineError
from ocr_service.engines.fake import FakeEngine
from ocr_service.probe import (
    Trial,
    headroom_limit,
    queue_size_for,
    recommend,
    render_test_page,
    run_probe,
    update_env_file,
)
from tests.helpers import settings, solid_image, text_page

ROOT = Path(__file__).resolve().parent.parent


def probe(budget_mb: float, item_mb: float, max_batch: int = 256, engine: FakeEngine | None = None):
    """Run the probe on a fast fake engine with this memory model."""
    engine = engine or FakeEngine(memory_budget_mb=budget_mb, item_memory_mb=item_mb)
    return run_probe(settings(), solid_image(1), max_batch=max_batch, engine=engine), engine


BUDGETS = [(1000, 37, 27), (100, 10, 10), (50, 7, 7), (37, 37, 1), (640, 10, 64)]


@pytest.mark.parametrize(("budget", "item", "expected"), BUDGETS)
def test_search_finds_the_exact_maximum(budget: float, item: float, expected: int) -> None:
    result, _ = probe(budget, item)
    assert result.maximum == expected
    assert result.failure is None and not result.capped
    assert any(t.batch_size == expected + 1 and t.out_of_memory for t in result.trials)


def test_search_doubles_then_bisects() -> None:
    result, engine = probe(1000, 37)
    search_order = [t.batch_size for t in result.trials]
    assert search_order[:10] == [1, 2, 4, 8, 16, 32, 24, 28, 26, 27]
    # every out-of-memory trial was followed by trials that ran: the engine stayed usable
    assert engine.batches_seen[0] == 1  # the warm-up
    assert {t.batch_size for t in result.trials if t.ok} >= {1, 2, 4, 8, 16, 24, 26, 27}


def test_each_trial_reports_latency_rate_and_peak_memory() -> None:
    result, _ = probe(1000, 37)
    for trial in result.trials:
        if trial.ok:
            assert trial.seconds is not None and trial.pages_per_s is not None and trial.pages_per_s > 0
            assert trial.peak_memory_bytes == int(37 * trial.batch_size * 1024 * 1024)
        else:
            assert "needs" in (trial.error or "") and trial.pages_per_s is None


def test_max_batch_caps_the_search() -> None:
    result, engine = probe(1000, 37, max_batch=5)
    assert result.maximum == 5 and result.capped
    assert max(engine.batches_seen) == 5
    unlimited, _ = probe(0, 0, max_batch=20)
    assert unlimited.maximum == 20 and unlimited.capped


def test_nothing_fits_gives_no_recommendation_and_says_what_to_change() -> None:
    result, _ = probe(30, 37)
    assert result.maximum == 0 and result.recommendation is None
    assert "does not fit" in (result.failure or "")
    for hint in ("OCR_RESOLUTION_MODE", "OCR_GPU_MEMORY_UTIL", "--memory-limit-gb", "GPU with more memory"):
        assert hint in (result.failure or "")


class BrokenEngine(FakeEngine):
    """Raises a non-memory error above `raise_above` pages and fails one page of batches of `page_error_at`."""

    def __init__(self, raise_above: int, page_error_at: int = 0) -> None:
        super().__init__()
        self.raise_above = raise_above
        self.page_error_at = page_error_at

    def predict(self, pages: list[DecodedPage]):  # type: ignore[no-untyped-def]
        if len(pages) > self.raise_above:
            raise RuntimeError("driver exploded")
        outcomes = super().predict(pages)
        if len(pages) == self.page_error_at:
            outcomes[-1] = EngineError("one page failed")
        return outcomes


def test_any_failure_is_recorded_and_the_probe_goes_on() -> None:
    result, _ = probe(0, 0, max_batch=16, engine=BrokenEngine(raise_above=4))
    assert result.maximum == 4 and result.recommendation is not None
    failed = {t.batch_size: t for t in result.trials if not t.ok}
    assert set(failed) == {8, 6, 5}
    assert all("driver exploded" in (t.error or "") and not t.out_of_memory for t in failed.values())


def test_a_failed_page_fails_its_trial() -> None:
    result, _ = probe(0, 0, max_batch=16, engine=BrokenEngine(raise_above=99, page_error_at=4))
    assert result.maximum == 3
    assert "one page failed" in (next(t for t in result.trials if t.batch_size == 4).error or "")


def test_a_non_memory_failure_on_one_page_says_it_is_not_memory() -> None:
    result, _ = probe(0, 0, engine=BrokenEngine(raise_above=0))
    assert result.maximum == 0 and "not a memory limit" in (result.failure or "")


def curve(batch_latency: float, item_latency: float, sizes: list[int]) -> list[Trial]:
    """Synthetic trials with the fake engine's latency model."""
    return [Trial(n, batch_latency + item_latency * n) for n in sizes]


def test_recommendation_is_the_knee_of_the_curve() -> None:
    # pages/s = n / (0.05 + 0.01 n): 16 -> 76, 27 -> 84 (90% of 84.4 is 76.0)
    trials = curve(0.05, 0.01, [1, 2, 4, 8, 16, 21, 24, 26, 27])
    rec = recommend(trials, 27)
    assert rec.batch_size == 16
    assert "90%" in rec.reason or "%" in rec.reason
    assert "latency" in rec.reason


def test_recommendation_stops_at_the_headroom_when_throughput_keeps_rising() -> None:
    # a large fixed cost per batch: throughput rises all the way to the maximum
    trials = curve(1.0, 0.01, [1, 2, 4, 8, 16, 21, 24, 26, 27])
    rec = recommend(trials, 27)
    assert rec.batch_size == headroom_limit(27) == 21
    assert "headroom" in rec.reason


def test_recommendation_for_a_flat_curve_is_small() -> None:
    # no batching gain at all (the engine serialises pages): batch 1 is as good as any
    trials = curve(0.0, 0.1, [1, 2, 4, 8, 16])
    assert recommend(trials, 16).batch_size == 1


def test_recommendation_ignores_failed_trials_and_handles_a_maximum_of_one() -> None:
    trials = [Trial(1, 0.5), Trial(2, error="OOM", out_of_memory=True)]
    assert recommend(trials, 1).batch_size == 1


def test_queue_size_holds_a_minute_of_work_and_at_least_four_batches() -> None:
    assert queue_size_for(16, 5.0)[0] == 300
    assert queue_size_for(16, 0.2)[0] == 64  # a minute is 12 pages: four batches win
    size, reason = queue_size_for(8, None)
    assert size == 100 and reason


def test_write_env_creates_and_updates_keeping_other_lines(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    update_env_file(env, {"OCR_BATCH_SIZE": "16", "OCR_MAX_QUEUE_SIZE": "300"})
    assert env.read_text() == "OCR_BATCH_SIZE=16\nOCR_MAX_QUEUE_SIZE=300\n"

    env.write_text("# my settings\nOCR_ENGINE=vllm\nOCR_BATCH_SIZE=8\n# OCR_MAX_QUEUE_SIZE=5\nOCR_PORT=9000\n")
    update_env_file(env, {"OCR_BATCH_SIZE": "16", "OCR_MAX_QUEUE_SIZE": "300"})
    assert env.read_text().splitlines() == [
        "# my settings",
        "OCR_ENGINE=vllm",
        "OCR_BATCH_SIZE=16",
        "# OCR_MAX_QUEUE_SIZE=5",
        "OCR_PORT=9000",
        "OCR_MAX_QUEUE_SIZE=300",
    ]


def test_rendered_test_page_is_a4_with_text() -> None:
    page = render_test_page()
    assert page.size == (1191, 1684) and page.mode == "RGB"
    dark = sum(page.convert("L").histogram()[:128])
    assert dark > 0.03 * page.width * page.height  # many lines of text, not a blank sheet


FAKE_ENV = {
    "OCR_ENGINE": "fake",
    "OCR_FAKE_MEMORY_BUDGET_MB": "1000",
    "OCR_FAKE_ITEM_MEMORY_MB": "37",
    "OCR_FAKE_BATCH_LATENCY": "0.002",
    "OCR_FAKE_ITEM_LATENCY": "0.001",
}


def run_cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("OCR_")}
    environment.update(env)
    return subprocess.run(
        [sys.executable, str(ROOT / "test_batch_size.py"), *args],
        check=False, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=120,
    )


def test_cli_reports_the_maximum_and_writes_env(tmp_path: Path) -> None:
    image = tmp_path / "page.png"
    solid_image(3, (200, 280)).save(image)
    (tmp_path / "custom.env").write_text("OCR_PORT=9000\n")
    done = run_cli(tmp_path, "--test-image", str(image), "--write-env", "custom.env", **FAKE_ENV)
    assert done.returncode == 0, done.stderr
    assert "Maximum safe batch size: 27" in done.stdout
    assert "Recommended batch size: " in done.stdout and "OCR_BATCH_SIZE=" in done.stdout
    written = (tmp_path / "custom.env").read_text().splitlines()
    assert written[0] == "OCR_PORT=9000"
    assert any(line.startswith("OCR_BATCH_SIZE=") for line in written)
    assert any(line.startswith("OCR_MAX_QUEUE_SIZE=") for line in written)


def test_cli_renders_its_own_page_and_engine_flag_overrides_settings(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--engine", "fake", "--max-batch", "4", **{**FAKE_ENV, "OCR_ENGINE": "rapidocr"})
    assert done.returncode == 0, done.stderr
    assert "Maximum safe batch size: 4 (the --max-batch cap" in done.stdout
    assert not (tmp_path / ".env").exists()


def test_cli_exits_non_zero_when_one_page_does_not_fit(tmp_path: Path) -> None:
    done = run_cli(tmp_path, "--write-env", **{**FAKE_ENV, "OCR_FAKE_MEMORY_BUDGET_MB": "20"})
    assert done.returncode != 0
    assert "does not fit" in done.stderr and "OCR_RESOLUTION_MODE" in done.stderr
    assert not (tmp_path / ".env").exists()


def test_memory_limit_without_torch_is_a_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("PIL")
    try:
        import torch  # noqa: F401
    except ImportError:
        done = run_cli(tmp_path, "--memory-limit-gb", "24", **FAKE_ENV)
        assert done.returncode == 2 and "--memory-limit-gb needs torch" in done.stderr
    else:
        pytest.skip("torch is installed here; the GPU run covers --memory-limit-gb")


def test_probe_accepts_any_image_mode() -> None:
    engine = FakeEngine(memory_budget_mb=100, item_memory_mb=30)
    result = run_probe(settings(), Image.new("L", (50, 50), 128), engine=engine)
    assert result.maximum == 3


def test_on_the_cpu_engine_the_probe_stays_within_a_few_pages_per_thread(tmp_path: Path) -> None:
    image = tmp_path / "small.png"
    text_page(["Probe"], size=(320, 120), font_size=30).save(image)
    env = {key: value for key, value in FAKE_ENV.items() if not key.startswith("OCR_FAKE")}
    done = run_cli(tmp_path, "--test-image", str(image), **{**env, "OCR_ENGINE": "rapidocr", "OCR_RAPIDOCR_THREADS": "2"})
    assert done.returncode == 0, done.stderr
    assert "Maximum safe batch size: 8 (the --max-batch cap" in done.stdout  # 4 pages per thread, not 256
