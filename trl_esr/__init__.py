"""trl_esr: Early Stopping Rollout (arXiv 2605.27028) for TRL's on-policy distillation."""

import logging

from ._lazy import lazy_exports


# On CPUs with AVX512-BF16, importing bitsandbytes warns that the optional `kernels` package (which fetches a kernel
# from the Hub) is missing; its plain CPU path works. Only that one logger is quietened, and only below ERROR.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _not_bitsandbytes_offline_trust_notice(record: logging.LogRecord) -> bool:
    """On those CPUs bitsandbytes asks `kernels` for its Hub kernel, and `kernels` then says, in offline mode
    (`HF_HUB_OFFLINE=1`, as this project's commands run), that it skips the publisher check: every run, about a kernel
    bitsandbytes falls back from anyway. Only that message, about that one repository, is dropped."""
    return not record.getMessage().startswith(
        "Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes'"
    )


logging.getLogger("kernels._internals.hf_hub").addFilter(_not_bitsandbytes_offline_trust_notice)

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
