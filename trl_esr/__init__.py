"""trl_esr: Early Stopping Rollout (arXiv 2605.27028) for TRL's on-policy distillation."""

from .config import ESRConfig
from .schedule import esr_k_at_step
from .trainer import ESRDistillTrainer


__version__ = "0.1.0"

__all__ = ["ESRConfig", "ESRDistillTrainer", "esr_k_at_step", "__version__"]
