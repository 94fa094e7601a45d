"""Offline demo: ESR vs full-rollout on-policy distillation of a tiny student on a synthetic task (`trl-esr demo`).

`main` is imported on first use, so that the tests and benchmarks that build models with `trl_esr.demo.tiny_models`
do not pay for TRL (imported by `run`).
"""

from .._lazy import lazy_exports


__all__ = ["main"]

__getattr__, __dir__ = lazy_exports(__name__, globals(), {"main": ".run"})
