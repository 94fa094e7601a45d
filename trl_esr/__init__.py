"""trl_esr: Early Stopping Rollout (arXiv 2605.27028) for TRL's on-policy distillation."""

import logging

from ._lazy import lazy_exports


# On CPUs with AVX512-BF16, importing bitsandbytes warns that the optional `kernels` package (which fetches a kernel
# from the Hub) is missing; its plain CPU path works. Only that one logger is quietened, and only below ERROR.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

__version__ = "0.1.0"

__all__ = ["BoxedAccuracyCallback", "ESRConfig", "ESRDistillTrainer", "esr_k_at_step", "__version__"]

# Imported on first use (PEP 562), so that `trl-esr --help` does not pay for torch, transformers and TRL.
__getattr__, __dir__ = lazy_exports(
    __name__,
    globals(),
    {
        "BoxedAccuracyCallback": ".boxed_eval",
        "ESRConfig": ".config",
        "ESRDistillTrainer": ".trainer",
        "esr_k_at_step": ".schedule",
    },
)
