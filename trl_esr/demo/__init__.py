"""Offline demo: ESR vs full-rollout on-policy distillation of a tiny student on a synthetic task (`trl-esr demo`)."""

from .run import main


__all__ = ["main"]
