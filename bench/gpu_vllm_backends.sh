#!/usr/bin/env bash
# Which vLLM attention set-up runs DeepSeek-OCR on this GPU? Tries each in turn with the guard part of
# bench/gpu_vllm.py (an engine start, the start-up canary, the n-gram check on an A4 page) and stops at the first
# that passes. Hopper hosts have shown FlashAttention 3 dying ("trap divide error") and Triton's attention kernels
# hitting "an illegal memory access"; the set-up that passes gives the OCR_VLLM_* settings to serve with.
#
#   bash bench/gpu_vllm_backends.sh OUT_DIR [NAME ...]      # names from the list below; default: all, in order
#
# Each try writes OUT_DIR/NAME/ (gpu_vllm.json, stdout.log); OUT_DIR/passed holds the name that passed.
set -uo pipefail
out=${1:?usage: gpu_vllm_backends.sh OUT_DIR [NAME ...]}
shift
cd "$(dirname "$0")/.."

declare -A backend engine_args
backend[fa2]=FLASH_ATTN;           engine_args[fa2]='{"attention_config": {"flash_attn_version": 2}}'
backend[triton_split]=TRITON_ATTN; engine_args[triton_split]='{"attention_config": {"use_prefill_decode_attention": true}}'
backend[triton_eager]=TRITON_ATTN; engine_args[triton_eager]='{"enforce_eager": true}'
backend[triton]=TRITON_ATTN;       engine_args[triton]='{}'
[ $# -gt 0 ] || set -- fa2 triton_split triton_eager triton

for name in "$@"; do
    mkdir -p "$out/$name"
    echo "== $name: OCR_VLLM_ATTENTION_BACKEND=${backend[$name]} OCR_VLLM_ENGINE_ARGS='${engine_args[$name]}'"
    timeout --kill-after=20 "${TRY_S:-240}" python3 bench/gpu_vllm.py --out "$out/$name" --parts guard \
        --batch-sizes 64 --attention-backend "${backend[$name]}" --mm-encoder-attention-backend TORCH_SDPA \
        --engine-args "${engine_args[$name]}" --budget-s "${TRY_S:-240}" > "$out/$name/stdout.log" 2>&1
    grep -E "^guard|^errors" "$out/$name/stdout.log"
    if python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); sys.exit(bool(r["errors"]) or "guard" not in r)' \
        "$out/$name/gpu_vllm.json" 2>/dev/null; then
        echo "$name" > "$out/passed"
        echo "passed: $name"
        exit 0
    fi
    grep -m3 -E "illegal memory|trap divide|Error:" "$out/$name/stdout.log" | cut -c1-300
done
exit 1
