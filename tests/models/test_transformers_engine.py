"""OCR_ENGINE=transformers on a tiny random-weight DeepSeek-OCR-2: the engine, then the service."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image

from ocr_service.engines.base import DecodedPage, EngineOutOfMemory, PageOutput, PageRequest
from tests.helpers import encode, poll_task, service_process, text_page
from tests.models.support import needs_transformers_ocr2, tiny_model

pytestmark = needs_transformers_ocr2

PROMPT = "<image>\n<|grounding|>Convert the document to markdown."


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model("deepseek-ocr2", tmp_path_factory.mktemp("tiny-ocr2"))


@pytest.fixture(scope="module")
def engine(model_dir: Path) -> Iterator[object]:
    from ocr_service.engines.transformers import TransformersEngine, TransformersOptions

    engine = TransformersEngine(TransformersOptions(str(model_dir), "gundam", ngram_size=30, window_size=90))
    engine.load()
    yield engine
    engine.close()


async def run_all(engine: object, pages: list[PageRequest]) -> dict[int, object]:
    return {index: outcome async for index, outcome in engine.run(pages)}  # type: ignore[attr-defined]


def a4_page() -> Image.Image:
    return text_page(["Quarterly report", "Revenue 1,234", "表格 测试"])


async def test_each_page_keeps_its_own_max_tokens_and_one_bad_page_fails_alone(engine: object) -> None:
    pages = [
        PageRequest.of_image(a4_page(), PROMPT, 0.0, 3),
        PageRequest.of_image(a4_page().resize((500, 700)), "<image>\nFree OCR.", 0.0, 9),
        PageRequest.of_image(a4_page(), "<image><image>\ntwo tags, one image", 0.0, 5),
        PageRequest.of_image(a4_page(), "Free OCR.", 0.8, 6),  # no tag: the engine adds it; sampled
    ]
    outcomes = await run_all(engine, pages)
    assert sorted(outcomes) == [0, 1, 2, 3]
    for index in (0, 1, 3):
        out = outcomes[index]
        assert isinstance(out, PageOutput), out
        assert isinstance(out.text, str)
        assert out.output_tokens is not None and out.output_tokens <= pages[index].max_tokens
        assert out.finish_reason == ("length" if out.output_tokens == pages[index].max_tokens else "stop")
    assert isinstance(outcomes[2], Exception) and not isinstance(outcomes[2], EngineOutOfMemory)


@pytest.mark.parametrize("mode", ["base", "small"])
async def test_other_resolution_modes_run(model_dir: Path, mode: str) -> None:
    from ocr_service.engines.transformers import TransformersEngine, TransformersOptions

    engine = TransformersEngine(TransformersOptions(str(model_dir), mode, ngram_size=30, window_size=90))
    engine.load()
    outcomes = await run_all(engine, [PageRequest.of_image(a4_page(), PROMPT, 0.0, 4)])
    assert isinstance(outcomes[0], PageOutput) and outcomes[0].output_tokens == 4


def test_ignore_eos_generates_exactly_max_tokens(model_dir: Path) -> None:
    from ocr_service.engines.transformers import TransformersEngine, TransformersOptions

    engine = TransformersEngine(TransformersOptions(str(model_dir), "gundam", 30, 90, ignore_eos=True))
    engine.load()
    outcomes = engine.predict([DecodedPage(a4_page(), PROMPT, 0.0, 12), DecodedPage(a4_page(), PROMPT, 0.0, 7)])
    assert [o.output_tokens for o in outcomes] == [12, 7]  # type: ignore[union-attr]
    assert engine.peak_memory_bytes() is None  # not tracked on a CPU


def test_ngram_guard_bans_per_row_and_ignores_the_prompt() -> None:
    import torch

    from ocr_service.engines.transformers import _logits_processors

    guard, limits = _logits_processors(
        torch,
        prompt_length=3,
        ngram_size=2,
        window_size=90,
        whitelist=frozenset({9}),
        max_tokens=[10, 4],
        eos_id=1,
        ignore_eos=False,
        temperatures=[0.0, 0.0],
    )
    # Row 0 generated "5 6 5" (after a prompt of 3): 6 followed 5 before, so 6 is
    # banned. Row 1 generated "7 9 7": 9 followed 7 before, but 9 is whitelisted.
    input_ids = torch.tensor([[5, 6, 2, 5, 6, 5], [3, 3, 3, 7, 9, 7]])
    scores = guard(input_ids, torch.zeros(2, 12))
    assert torch.isinf(scores[0, 6])
    assert int(torch.isinf(scores).sum()) == 1
    # Row 1 has generated 3 of its 4 tokens: not yet at its limit.
    assert not torch.isinf(limits(input_ids, torch.zeros(2, 12))).any()
    longer = torch.cat([input_ids, torch.tensor([[8], [8]])], dim=1)
    forced = limits(longer, torch.zeros(2, 12))
    assert not torch.isinf(forced[0]).any()
    assert forced[1, 1] == 0 and int(torch.isinf(forced[1]).sum()) == 11  # only EOS left


def test_the_service_answers_an_upload_with_transformers(model_dir: Path, tmp_path: Path) -> None:
    env = {
        "OCR_ENGINE": "transformers",
        "OCR_MODEL_PATH": str(model_dir),
        "OCR_BATCH_SIZE": "4",
        "OCR_BATCH_TIMEOUT": "0.5",
        "OCR_DEFAULT_MAX_TOKENS": "24",
    }
    with service_process(tmp_path, env, start_timeout=300) as service:
        url = service.url
        upload = encode(a4_page())
        response = httpx.post(f"{url}/ocr", files={"file": ("page.png", upload, "image/png")}, data={"max_tokens": "16"})
        assert response.status_code == 202, response.text
        task = poll_task(url, response.json()["task_id"], timeout=300)
        assert task["status"] == "completed", task
        assert isinstance(task["result"], str)
        (page,) = task["pages"]
        assert page["finish_reason"] in ("stop", "length")
        stats = httpx.get(f"{url}/stats").json()
        assert stats["engine"] == "transformers"
