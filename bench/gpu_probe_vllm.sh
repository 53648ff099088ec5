#!/usr/bin/env bash
# The batch-size probe's vLLM mode (test_batch_size.py) on a GPU at several memory settings, one after the other,
# in one device call. Each run starts vLLM on the full-size random-weight DeepSeek-OCR (built in $MODEL_DIR when
# missing), with FlashAttention 2 and SDPA in the vision encoder, and writes probe-UTIL.log and probe-UTIL.env.
#
#   bash bench/gpu_probe_vllm.sh OUT_DIR 0.9 0.5            # two settings, the maximum read from vLLM's KV cache
#   bash bench/gpu_probe_vllm.sh OUT_DIR 0.5:confirm        # and confirmed: that many worst-case pages at once
#
# Knobs (environment): MODEL_DIR (/tmp/dsocr), MAX_MODEL_LEN (8192), MAX_BATCH (256), SWEEP_TOKENS (256 output
# tokens a sweep page), WAVES (2), RUN_S (270: each run is cut off after this many seconds), and any OCR_ setting,
# such as OCR_VLLM_ATTENTION_BACKEND or OCR_VLLM_ENGINE_ARGS (FlashAttention 2 unless set: FA3 and Triton attention
# died on the H100 of 2026-11-26).
set -uo pipefail
out=${1:?usage: gpu_probe_vllm.sh OUT_DIR UTIL[:confirm] ...}
shift
[ $# -gt 0 ] || set -- 0.9 0.5
cd "$(dirname "$0")/.."
mkdir -p "$out"
model=${MODEL_DIR:-/tmp/dsocr}
if [ ! -f "$model/config.json" ]; then
    python3 -m ocr_service.tiny_model --arch deepseek-ocr --full-size --out "$model" || exit 1
fi
FA2='{"attention_config": {"flash_attn_version": 2}}'
status=0
for spec in "$@"; do
    util=${spec%%:*}
    confirm=--no-confirm
    [ "$spec" = "$util:confirm" ] && confirm=--confirm
    echo "== probe at OCR_GPU_MEMORY_UTIL=$util ($confirm)"
    OCR_ENGINE=vllm OCR_MODEL_PATH="$model" OCR_GPU_MEMORY_UTIL="$util" OCR_MAX_MODEL_LEN="${MAX_MODEL_LEN:-8192}" \
    OCR_VLLM_ENGINE_ARGS="${OCR_VLLM_ENGINE_ARGS:-$FA2}" OCR_VLLM_MM_ENCODER_ATTENTION_BACKEND=TORCH_SDPA PYTHONUNBUFFERED=1 \
        timeout --kill-after=20 "${RUN_S:-270}" python3 test_batch_size.py --max-batch "${MAX_BATCH:-256}" \
        --max-tokens "${SWEEP_TOKENS:-256}" --waves "${WAVES:-2}" "$confirm" --write-env "$out/probe-$util.env" \
        > "$out/probe-$util.log" 2>&1
    code=$?
    echo "   exit $code"
    [ "$code" -eq 0 ] || status=$code
    # the report: the last block of the log (the table and the recommendation)
    sed -n '/^Engine: /,$p' "$out/probe-$util.log" | grep -v '^(' | tail -40
done
exit $status
