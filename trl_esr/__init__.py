"""trl_esr: Early Stopping Rollout (arXiv 2605.27028) for TRL's on-policy distillation."""

import logging


# On CPUs with AVX512-BF16, importing bitsandbytes warns that the optional `kernels` package (which fetches a kernel
# from the Hub) is missing; its plain CPU path works. Only that one logger is quietened, and only below ERROR.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .config import ESRConfig  # noqa: E402
from .schedule import esr_k_at_step  # noqa: E402
from .trainer import ESRDistillTrainer  # noqa: E402


__version__ = "0.1.0"

__all__ = ["ESRConfig", "ESRDistillTrainer", "esr_k_at_step", "__version__"]
