#!/usr/bin/env bash
# Download, here, the wheels that `run_paper_shape.sh` installs on the device machine, which has no network.
#
# The device machine has python3 3.12 with torch 2.11 (CUDA 13), transformers, peft, accelerate, pyarrow, pandas,
# xxhash and fsspec installed, but not trl, datasets (nor datasets' dill and multiprocess) or bitsandbytes. Binary
# wheels only, no dependencies resolved (each one is named), for CPython 3.12 on x86-64 Linux: bitsandbytes 0.50.2 is
# tagged manylinux_2_24_x86_64 (it carries libbitsandbytes_cuda130.so), the others are pure Python.
#
#   bash benchmarks/device/fetch_wheels.sh [DIR]    # DIR defaults to benchmarks/device/wheels (gitignored)
#
# The wheels travel to the device as a `carry` path, which counts towards the 64 MiB limit on what travels: about
# 43 MiB here, so the rest of the working tree must stay under about 21 MiB.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-benchmarks/device/wheels}
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHEELS=(
    trl==1.16.0
    datasets==5.2.0
    dill==0.4.1           # datasets 5.2.0: dill<0.4.2
    multiprocess==0.70.19 # datasets 5.2.0: multiprocess<0.70.20
    bitsandbytes==0.50.2
)
mkdir -p "$DIR"
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform any -d "$DIR" "${WHEELS[@]}"
ls -l "$DIR"/*.whl
total=$(du -cb "$DIR"/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1024 / 1024)) MiB in $(ls "$DIR"/*.whl | wc -l) wheels (carry limit: 64 MiB with the tree)"
if [ "$(ls "$DIR"/*.whl | wc -l)" -ne "${#WHEELS[@]}" ]; then
    echo "expected ${#WHEELS[@]} wheels, one per name: remove stale ones from $DIR" >&2
    exit 1
fi
