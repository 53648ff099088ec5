"""The service as a user starts it: `python run_service.py`, a real port, the embedded engine."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import ROOT, encode, poll_task, service_process, text_page


@pytest.fixture(scope="module")
def service_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real run_service.py process on the default engine (RapidOCR), from a clean folder."""
    with service_process(tmp_path_factory.mktemp("service"), {"OCR_BATCH_TIMEOUT": "0.1"}) as service:
        yield service.url


def test_rapidocr_reads_a_rendered_page_through_a_real_process(service_url: str) -> None:
    page = text_page(["Invoice number 4711", "The quick brown fox jumps", "over the lazy dog"])
    response = httpx.post(f"{service_url}/ocr", files={"file": ("scan.png", encode(page), "image/png")})
    assert response.status_code == 202
    task = poll_task(service_url, response.json()["task_id"])
    assert task["status"] == "completed", task
    text = task["result"]
    for words in ("Invoice number 4711", "quick brown fox", "lazy dog"):
        assert words in text
    assert text.index("Invoice") < text.index("quick") < text.index("lazy")
    stats = httpx.get(f"{service_url}/stats").json()
    assert stats["engine"] == "rapidocr" and stats["completed"] >= 1


def test_invalid_setting_stops_the_start_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    env.update({"OCR_BATCH_SIZE": "lots", "PYTHONPATH": str(ROOT)})
    result = subprocess.run([sys.executable, str(ROOT / "run_service.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert "OCR_BATCH_SIZE" in result.stderr


def test_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("OCR_BATCH_POLICY=sometimes\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCR_")}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run([sys.executable, str(ROOT / "run_service.py")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "OCR_BATCH_POLICY" in result.stderr


def test_a_three_page_pdf_comes_back_as_one_task_with_its_pages_in_order(service_url: str) -> None:
    pages = [text_page([f"This is page {word} of the report"], size=(1000, 700)) for word in ("one", "two", "three")]
    buffer = io.BytesIO()
    pages[0].save(buffer, format="PDF", save_all=True, append_images=pages[1:], resolution=150)
    response = httpx.post(f"{service_url}/ocr", files={"file": ("report.pdf", buffer.getvalue(), "application/pdf")})
    assert response.status_code == 202
    task = poll_task(service_url, response.json()["task_id"])
    assert task["status"] == "completed", task
    assert task["progress"] == {"pages_done": 3, "pages_total": 3}
    markdowns = [page["markdown"] for page in task["pages"]]
    for markdown, word in zip(markdowns, ("one", "two", "three"), strict=True):
        assert f"page {word} of the report" in markdown
    assert task["result"] == "\n<--- Page Split --->\n".join(markdowns)


def test_a_prompt_the_default_engine_cannot_follow_is_answered_with_a_warning(service_url: str) -> None:
    page = text_page(["A chart of quarterly revenue"])
    response = httpx.post(
        f"{service_url}/ocr",
        files={"file": ("chart.png", encode(page), "image/png")},
        data={"prompt": "<image>\nDescribe this image in detail."},
    )
    task = poll_task(service_url, response.json()["task_id"])
    assert task["status"] == "completed"
    assert "quarterly revenue" in task["result"]  # what it can do: the text
    (warning,) = task["warnings"]
    assert "cannot follow the prompt 'Describe this image in detail.'" in warning
    assert task["pages"][0]["warnings"] == [warning.removeprefix("page 1: ")]
    plain = httpx.post(f"{service_url}/ocr", files={"file": ("p.png", encode(page), "image/png")},
                       data={"prompt": "<image>\nFree OCR."})
    assert "warnings" not in poll_task(service_url, plain.json()["task_id"])


def test_json_logs_stay_json_and_a_blank_page_alarms_no_one(tmp_path: Path) -> None:
    with service_process(tmp_path, {"OCR_LOG_FORMAT": "json", "OCR_BATCH_TIMEOUT": "0.1"}) as service:
        blank = encode(text_page([]))
        response = httpx.post(f"{service.url}/ocr", files={"file": ("blank.png", blank, "image/png")})
        task = poll_task(service.url, response.json()["task_id"])
        log = service.log_path.read_text()
    assert task["status"] == "completed" and task["result"] == ""
    lines = [line for line in log.splitlines() if line.strip()]
    assert lines and all(json.loads(line)["level"] for line in lines)  # every line is a JSON object
    assert "text detection result is empty" not in log
