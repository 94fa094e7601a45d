"""Pinned CPU kernels, so that the demo's accuracies and token counts repeat on other x86-64 machines.

The demo trains tiny models from scratch, and training amplifies rounding: on this project's AMD EPYC, 100 SFT steps
of the early-decision student ended up to 5e-5 apart between torch's AVX512 and AVX2 kernels, and the whole demo gave
other accuracies (that student 4.5 % before distillation with AVX512, 0.5 % with AVX2). torch picks its vectorised
kernels per CPU (AVX512 where present), and MKL picks its GEMM code per CPU and vendor, so the same code gave three
sets of numbers on three machines. Pinned here: torch's kernels to AVX2 (`ATEN_CPU_CAPABILITY=avx2`, torch's own
code, the same instructions on any x86-64 CPU that has AVX2) and MKL to its reproducible AVX2 branch
(`MKL_CBWR=AVX2`: the same results on every Intel CPU with AVX2; on other vendors' CPUs MKL documents its automatic
branch instead). On the EPYC, AVX2 was as fast as AVX512 for these models (100 SFT steps: 6.6 s against 6.8 s), and
MKL's stricter `COMPATIBLE` branch 1.9x slower, so it is not used.

Both settings are read once, at the first CPU kernel and the first MKL call (importing transformers already runs
some), so `pin` must run before anything computes: `trl_esr.demo.main` calls it before importing the demo.
`describe` says what is in effect, for the report.
"""

import os
import platform
from pathlib import Path


PINNED = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2"}


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or an empty set where there is none."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in text.splitlines() if line.startswith("flags")), set())


def can_pin() -> bool:
    """Whether this CPU runs the pinned kernels: x86-64 with AVX2 and FMA (torch's AVX2 kernels use both)."""
    return platform.machine().lower() in ("x86_64", "amd64") and {"avx2", "fma"} <= cpu_flags()


def pin() -> dict[str, str]:
    """Set the pinned kernels in the environment, unless the user set either variable or the CPU cannot run them;
    returns what was set."""
    if not can_pin():
        return {}
    chosen = {name: value for name, value in PINNED.items() if name not in os.environ}
    os.environ.update(chosen)
    return chosen


def describe() -> dict:
    """What is in effect: torch's kernel level, MKL's branch, and whether both are the pinned ones."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    mkl_cbwr = os.environ.get("MKL_CBWR")
    return {
        "cpu": _cpu_model(),
        "torch_cpu_capability": capability,
        "mkl_cbwr": mkl_cbwr,
        "pinned": capability == "AVX2" and mkl_cbwr == PINNED["MKL_CBWR"],
    }


def cache_key(device: str) -> str:
    """What a pre-trained model's numbers depend on besides its recipe: the device, and on CPU the kernels in effect
    (a cached model trained with other kernels is retrained, not mixed with these)."""
    if device != "cpu":
        return device
    state = describe()
    return f"cpu {state['torch_cpu_capability']} MKL_CBWR={state['mkl_cbwr'] or 'unset'}"


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.machine())
