"""trl_esr: Early Stopping Rollout (arXiv 2605.27028) for TRL's on-policy distillation."""

import logging


# On CPUs with AVX512-BF16, importing bitsandbytes warns that the optional `kernels` package (which fetches a kernel
# from the Hub) is missing; its plain CPU path works. Only that one logger is quietened, and only below ERROR.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

__all__ = ["ESRConfig", "ESRDistillTrainer", "esr_k_at_step", "__version__"]

# Imported on first use (PEP 562), so that `trl-esr --help` does not pay for torch, transformers and TRL.
_LAZY = {"ESRConfig": ".config", "ESRDistillTrainer": ".trainer", "esr_k_at_step": ".schedule"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__():
    return sorted([*globals(), *_LAZY])
