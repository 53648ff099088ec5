"""The model engines' rules that need no model: these run in the light CPU install too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from pydantic import ValidationError

from ocr_service.config import Settings
from ocr_service.deepseek import BOS, EOS, RANDOM_WEIGHTS_MARKER, banned_ngram_tokens, repeated_ngrams, with_image_tag
from ocr_service.engines import transformers as tf_engine
from ocr_service.engines import vllm as vllm_engine
from ocr_service.engines.base import DecodedPage
from ocr_service.engines.registry import build_engine
from ocr_service.engines.torch_support import is_out_of_memory
from ocr_service.engines.vllm_guard import GuardCheck
from ocr_service.tiny_model import (
    SPECIAL_TOKENS,
    deepseek_ocr2_config,
    deepseek_ocr_config,
    token_ids,
)


def settings(**overrides: object) -> Settings:
    return Settings(_env_file=None, **overrides)


def page(**overrides: object) -> DecodedPage:
    values: dict = dict(image=Image.new("RGB", (8, 8)), prompt="<image>\nFree OCR.", temperature=0.0, max_tokens=64)
    values.update(overrides)
    return DecodedPage(**values)


def vllm_options(**overrides: object) -> vllm_engine.VllmOptions:
    engine = build_engine(settings(engine="vllm", **overrides))
    assert isinstance(engine, vllm_engine.VllmEngine)
    return engine.options


# -- the no-repeat n-gram guard ------------------------------------------------


def test_guard_bans_the_token_that_would_repeat_an_ngram() -> None:
    # "a b c a b" with n=3: the last two tokens (a b) were followed by c before.
    assert banned_ngram_tokens([1, 2, 3, 1, 2], ngram_size=3, window_size=90) == {3}


def test_guard_lets_whitelisted_tokens_repeat() -> None:
    td = 7
    assert banned_ngram_tokens([td, 5, td, 5, td], ngram_size=2, window_size=90, whitelist={5}) == set()
    assert banned_ngram_tokens([td, 5, td, 5, td], ngram_size=2, window_size=90) == {5}


def test_guard_only_looks_inside_the_window() -> None:
    tokens = [1, 2, 3] + [9] * 10 + [1, 2]
    assert banned_ngram_tokens(tokens, ngram_size=3, window_size=90) == {3}
    assert banned_ngram_tokens(tokens, ngram_size=3, window_size=5) == set()


def test_guard_waits_for_ngram_size_tokens() -> None:
    assert banned_ngram_tokens([4, 4], ngram_size=3, window_size=90) == set()
    assert banned_ngram_tokens([4, 4, 4], ngram_size=3, window_size=90) == {4}


def test_guard_matches_vllm_reference_rule_on_random_sequences() -> None:
    """Same answers as vLLM's NoRepeatNGramLogitsProcessor loop, written out here."""
    import random

    def reference(ids: list[int], n: int, window: int, white: set[int]) -> set[int]:
        if len(ids) < n:
            return set()
        prefix = tuple(ids[-(n - 1) :])
        banned = set()
        for i in range(max(0, len(ids) - window), len(ids) - n + 1):
            gram = tuple(ids[i : i + n])
            if gram[:-1] == prefix:
                banned.add(gram[-1])
        return banned - white

    rng = random.Random(4)
    for _ in range(500):
        ids = [rng.randrange(4) for _ in range(rng.randrange(0, 40))]
        n, window = rng.randrange(2, 6), rng.randrange(5, 30)
        white = {rng.randrange(4)}
        assert banned_ngram_tokens(ids, n, window, white) == reference(ids, n, window, white)


def test_repeats_count_what_the_guard_would_have_banned() -> None:
    assert repeated_ngrams([5, 6, 5, 6, 5, 6], ngram_size=2, window_size=90) == 3
    assert repeated_ngrams([5, 6, 5, 6, 5, 6], ngram_size=3, window_size=90) == 2
    assert repeated_ngrams([5, 6, 7, 8, 9], ngram_size=2, window_size=90) == 0
    # outside the window the old n-gram no longer counts
    assert repeated_ngrams([1, 2, *range(10, 20), 1, 2], ngram_size=2, window_size=5) == 0


def test_a_guarded_output_never_repeats_by_the_guards_own_rule() -> None:
    """Greedy choice from a fixed preference order, with the guard's bans: no repeat survives."""
    import random

    rng = random.Random(7)
    for _ in range(50):
        preference = rng.sample(range(40), 40)
        n, window = rng.randrange(2, 5), rng.randrange(8, 40)
        ids: list[int] = []
        for _ in range(60):
            banned = banned_ngram_tokens(ids, n, window)
            ids.append(next(token for token in preference if token not in banned))
        assert repeated_ngrams(ids, n, window) == 0


# -- the guard's start-up canary ----------------------------------------------


def test_canary_verdicts() -> None:
    loop = (7, 8) * 64
    applied = GuardCheck(3, 128, tuple(range(128)), loop, "V1")
    assert applied.applied and applied.conclusive and applied.guarded_repeats == 0
    assert applied.unguarded_repeats == 124  # every token from the fifth on, as vLLM measured on the tiny model
    ignored = GuardCheck(3, 128, loop, loop, "V2")
    assert not ignored.applied
    assert "VLLM_USE_V2_MODEL_RUNNER=0" in ignored.failure() and "0.20.1" in ignored.failure()
    assert "model runner V2" in ignored.failure() and "V2 model runner does not take" in ignored.failure()
    assert "did not register it" in GuardCheck(3, 128, loop, loop, "V1").failure()
    proves_nothing = GuardCheck(3, 128, tuple(range(128)), tuple(range(128)))
    assert proves_nothing.applied and not proves_nothing.conclusive


# -- out of memory -------------------------------------------------------------


def test_out_of_memory_is_recognised_by_type_or_message() -> None:
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


# -- the tiny model builder ----------------------------------------------------


def test_tiny_deepseek_ocr_config_fits_vllm_cpu() -> None:
    config = deepseek_ocr_config()
    language = config["language_config"]
    assert config["architectures"] == ["DeepseekOCRForCausalLM"]
    assert config["model_type"] == "deepseek_vl_v2" and config["tile_tag"] == "2D"
    assert language["hidden_size"] // language["num_attention_heads"] in (32, 64, 80, 96, 128)
    assert language["qk_nope_head_dim"] == language["qk_rope_head_dim"] == 0
    assert config["projector_config"] == {
        "model_type": "mlp_projector",
        "projector_type": "linear",
        "input_dim": 2048,
        "n_embed": language["hidden_size"],
    }
    assert language["vocab_size"] > max(token_ids().values())


def test_full_size_configs_keep_the_published_dimensions() -> None:
    text = deepseek_ocr2_config(image_token_id=5, full_size=True)["text_config"]
    assert (text["hidden_size"], text["num_hidden_layers"], text["num_attention_heads"]) == (1280, 12, 10)
    assert (text["n_routed_experts"], text["num_experts_per_tok"], text["n_shared_experts"]) == (64, 6, 2)
    assert text["vocab_size"] == 129280 and text["mlp_layer_types"][0] == "dense"
    vision = deepseek_ocr2_config(image_token_id=5, full_size=True)["vision_config"]
    assert vision["sam_config"]["hidden_size"] == 768 and vision["encoder_config"]["hidden_size"] == 896
    assert deepseek_ocr_config(full_size=True)["language_config"]["moe_intermediate_size"] == 896


def test_special_tokens_have_fixed_distinct_ids() -> None:
    ids = token_ids()
    assert set(ids) == set(SPECIAL_TOKENS)
    assert len(set(ids.values())) == len(ids)
    assert ids[BOS] == 0 and ids[EOS] == 1
    for needed in ("<image>", "<|grounding|>", "<|ref|>", "<|/ref|>", "<|det|>", "<|/det|>", "<td>", "</td>"):
        assert needed in ids


# -- the vLLM engine's recipe --------------------------------------------------


def test_vllm_engine_is_built_from_settings_without_importing_vllm() -> None:
    engine = build_engine(settings(engine="vllm", batch_size=5, ngram_size=20, window_size=50))
    assert isinstance(engine, vllm_engine.VllmEngine)
    assert engine.max_batches_in_flight is None  # only the page cap limits it
    assert engine.options.max_num_seqs == 5 and engine.options.ngram_size == 20


def test_vllm_refuses_other_modes_at_start_and_says_why() -> None:
    engine = build_engine(settings(engine="vllm", resolution_mode="base"))
    with pytest.raises(ValueError, match="OCR_RESOLUTION_MODE=base.*Gundam"):
        engine.load()


def test_vllm_engine_arguments_follow_the_recipe(tmp_path: Path) -> None:
    options = vllm_options(model_path=str(tmp_path), max_model_len=4096)
    arguments = vllm_engine.engine_arguments(options, on_cpu=False)
    assert arguments["enable_prefix_caching"] is False
    assert arguments["mm_processor_cache_gb"] == 0
    assert arguments["logits_processors"] == ["vllm.model_executor.models.deepseek_ocr:NGramPerReqLogitsProcessor"]
    assert arguments["max_model_len"] == 4096 and "load_format" not in arguments and "dtype" not in arguments
    (tmp_path / RANDOM_WEIGHTS_MARKER).write_text(json.dumps({"arch": "deepseek-ocr"}))
    on_cpu = vllm_engine.engine_arguments(options, on_cpu=True)
    assert on_cpu["load_format"] == "dummy" and on_cpu["dtype"] == "float32"


def test_vllm_attention_backends_come_from_settings_and_are_left_out_when_empty(tmp_path: Path) -> None:
    default = vllm_engine.engine_arguments(vllm_options(model_path=str(tmp_path)), on_cpu=False)
    assert "attention_backend" not in default and "mm_encoder_attn_backend" not in default
    options = vllm_options(
        model_path=str(tmp_path), vllm_attention_backend="TRITON_ATTN", vllm_mm_encoder_attention_backend="TORCH_SDPA"
    )
    arguments = vllm_engine.engine_arguments(options, on_cpu=False)
    assert arguments["attention_backend"] == "TRITON_ATTN"
    assert arguments["mm_encoder_attn_backend"] == "TORCH_SDPA"


def test_vllm_engine_args_setting_is_a_json_object_applied_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OCR_VLLM_ENGINE_ARGS", '{"attention_config": {"flash_attn_version": 2}, "max_model_len": 3000}')
    arguments = vllm_engine.engine_arguments(vllm_options(model_path=str(tmp_path)), on_cpu=False)
    assert arguments["attention_config"] == {"flash_attn_version": 2}
    assert arguments["max_model_len"] == 3000  # over the setting of the same name: the user's JSON wins
    monkeypatch.setenv("OCR_VLLM_ENGINE_ARGS", "[1, 2]")
    with pytest.raises(ValidationError, match="vllm_engine_args"):
        settings()


def test_vllm_drops_engine_arguments_its_version_lacks() -> None:
    kept, dropped = vllm_engine.known_arguments({"model": "m", "skip_mm_profiling": True}, ["model", "dtype"])
    assert kept == {"model": "m"} and dropped == ["skip_mm_profiling"]


def test_vllm_refuses_engine_arguments_the_user_named_that_it_lacks() -> None:
    with pytest.raises(ValueError, match="OCR_VLLM_ENGINE_ARGS .* attention_confg"):
        vllm_engine.known_arguments({"model": "m", "attention_confg": {}}, ["model"], required=["attention_confg"])


def test_vllm_sampling_is_per_page() -> None:
    options = vllm_options(ngram_size=30, window_size=90)
    arguments = vllm_engine.sampling_arguments(page(temperature=0.3, max_tokens=77), options, frozenset({11, 12}))
    assert arguments["temperature"] == 0.3 and arguments["max_tokens"] == 77
    assert arguments["skip_special_tokens"] is False and arguments["ignore_eos"] is False
    assert arguments["extra_args"] == {"ngram_size": 30, "window_size": 90, "whitelist_token_ids": {11, 12}}
    benchmark = vllm_engine.sampling_arguments(page(), vllm_options(ignore_eos=True), frozenset())
    assert benchmark["ignore_eos"] is True


# vLLM's own messages (vllm/v1/engine/input_processor.py and vllm/renderers/params.py, 0.20.1 and 0.32.0).
TOO_LONG = [
    "The decoder prompt (length 3011) is longer than the maximum model length of 2048. Make sure that ...",
    "This model's maximum context length is 2048 tokens. However, your prompt contains at least 2049 input "
    "tokens, which exceeds this limit even without any output tokens.",
    "This model's maximum context length is 2048 tokens. However, you requested 16 output tokens and your "
    "prompt contains 3011 input tokens, for a total of 3027 tokens.",
]


@pytest.mark.parametrize("message", TOO_LONG)
def test_a_page_too_long_for_the_context_names_the_setting(message: str) -> None:
    error = vllm_engine.page_error(ValueError(message))
    assert "OCR_MAX_MODEL_LEN=2048" in str(error) and message[:40] in str(error)
    assert str(vllm_engine.page_error(RuntimeError("boom"))) == "vLLM failed: boom"


def test_a_refused_guard_at_start_names_the_fix() -> None:
    # vLLM 0.32 with the V2 runner (vllm/v1/worker/gpu/sample/logits_processor/loader.py) and 0.20.1 with
    # VLLM_USE_V2_MODEL_RUNNER=1 (vllm/config/vllm.py)
    for message in (
        "NGramPerReqLogitsProcessor is not a subclass of vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor",
        "VLLM_USE_V2_MODEL_RUNNER does not yet support: custom logits processors",
    ):
        wrapped = RuntimeError("start failed")
        wrapped.__cause__ = ValueError(message)
        explained = vllm_engine.start_error(wrapped)
        assert explained is not None and "VLLM_USE_V2_MODEL_RUNNER=0" in str(explained)
    assert vllm_engine.start_error(RuntimeError("no GPU")) is None


def test_vllm_output_reports_finish_reason_and_drops_eos() -> None:
    out = vllm_engine.page_output(f"# Title{EOS}", "stop", 3)
    assert (out.text, out.finish_reason, out.output_tokens) == ("# Title", "stop", 3)
    assert vllm_engine.page_output("loop loop", "length", 8192).finish_reason == "length"


def test_prompts_always_carry_one_image_tag() -> None:
    assert with_image_tag("Free OCR.") == "<image>\nFree OCR."
    assert with_image_tag("<image>\nFree OCR.") == "<image>\nFree OCR."


# -- the transformers engine's rules -------------------------------------------


def test_transformers_modes_match_deepseek_ocr2_queries() -> None:
    assert tf_engine.check_resolution_mode("gundam") == tf_engine.ViewSize(1024, True)
    assert tf_engine.check_resolution_mode("base") == tf_engine.ViewSize(1024, False)
    assert tf_engine.check_resolution_mode("small") == tf_engine.ViewSize(768, False)
    with pytest.raises(ValueError, match="OCR_RESOLUTION_MODE=tiny.*768"):
        tf_engine.check_resolution_mode("tiny")


def test_transformers_refuses_an_unservable_mode_at_start() -> None:
    engine = build_engine(settings(engine="transformers", resolution_mode="large"))
    with pytest.raises(ValueError, match="OCR_RESOLUTION_MODE=large"):
        engine.load()


def test_each_row_gets_its_own_finish_reason() -> None:
    eos, pad = 1, 2
    # Stopped early: EOS before its limit, then padding while other rows went on.
    assert tf_engine.finish_row([5, 6, eos, pad, pad], eos, max_tokens=10) == ([5, 6], "stop")
    # Its limit came first: the forced EOS sits right after max_tokens tokens.
    assert tf_engine.finish_row([5, 6, 7, eos, pad], eos, max_tokens=3) == ([5, 6, 7], "length")
    # The longest row: never ended, cut at max_tokens.
    assert tf_engine.finish_row([5, 6, 7, 8], eos, max_tokens=4) == ([5, 6, 7, 8], "length")
