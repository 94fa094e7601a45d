#!/usr/bin/env bash
# The paper-shape GPU benchmark in one shot, on the device machine (one H100/H200; see docs/benchmarks.md).
#
# On that machine python3 is 3.12 with torch, transformers, peft and accelerate, but no trl, datasets or bitsandbytes,
# and nothing can be fetched: `benchmarks/device/fetch_wheels.sh`, run beforehand where pip works, puts their wheels in
# benchmarks/device/wheels (gitignored), which the `run` call carries. This installs them, prints the versions, and
# runs `benchmarks.paper_shape` within BUDGET_S seconds (default 330), the full-rollout cap sized to fit
# (FULL_LENGTH=auto; or a number). Results go to $OUT: results.json (rewritten after every run), results.md,
# paper_shape.png and log.txt.
#
#   run(command="bash benchmarks/device/run_paper_shape.sh", carry=["benchmarks/device/wheels"], timeout_s=540)
#
# Extra arguments go to the benchmark after the defaults (the last one wins). The test suite runs this very script on
# CPU at tiny shapes, with the packages of its own environment (INSTALL=0, PYTHON=its interpreter):
#   INSTALL=0 PYTHON=.venv/bin/python OUT=/tmp/ps bash benchmarks/device/run_paper_shape.sh --shapes tiny --steps 1
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-bench_results/paper_shape}
WHEELS=${WHEELS:-benchmarks/device/wheels}
BUDGET_S=${BUDGET_S:-330}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
echo "== $(date -u +%FT%TZ) $(hostname)"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi failed"
if [ "${INSTALL:-1}" = 1 ]; then
    ls "$WHEELS"/*.whl || { echo "no wheels in $WHEELS: run benchmarks/device/fetch_wheels.sh and carry $WHEELS"; exit 2; }
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || exit 3
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
export TOKENIZERS_PARALLELISM=false
"$PYTHON" - <<'PY' || exit 4
from importlib.metadata import version
import torch
names = ["torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "pyarrow", "fsspec",
         "huggingface_hub", "matplotlib"]
device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
print(" ".join(f"{n}=={version(n)}" for n in names), "| cuda", torch.version.cuda, device)
import bitsandbytes, datasets, trl, trl_esr  # noqa: F401  (fail here, not in the middle of the benchmark)
PY
# The benchmark keeps to BUDGET_S by itself; the outer limit stops a hang with time left to send $OUT back.
timeout --signal=TERM --kill-after=10 $((BUDGET_S + 150)) \
    "$PYTHON" -m benchmarks.paper_shape --full-length "${FULL_LENGTH:-auto}" --budget-s "$BUDGET_S" --steps 2 \
    --output-dir "$OUT" "$@"
status=$?
echo "== exit status $status after ${SECONDS} s"
ls -l "$OUT"
exit $status
