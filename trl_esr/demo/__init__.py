"""Offline demo: ESR vs full-rollout on-policy distillation of a tiny student on a synthetic task (`trl-esr demo`).

`main` is imported on first use: the demo's pre-training workers import `trl_esr.demo.pretrain`, and must not pay
for TRL (imported by `run`) just to train three small models.
"""

from .._lazy import lazy_exports


__all__ = ["main"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), {"main": ".run"})
