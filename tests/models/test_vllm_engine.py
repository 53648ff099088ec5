"""OCR_ENGINE=vllm on a tiny random-weight DeepSeek-OCR, through a real service process.

vLLM's vision towers stay full size (SAM ViT-B and CLIP-L are fixed in its code), so
on a CPU one start takes a minute or two and each page about 10-20 s: one service
process answers every check here.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

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
        assert failed["status"] == "failed" and "2048" in failed["error"], failed

        stats = httpx.get(f"{url}/stats").json()
        assert stats["engine"] == "vllm" and stats["completed"] >= 2
