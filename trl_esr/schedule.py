"""The rollout horizon k as a pure function of the optimizer step.

Keeping k stateless means a resumed run recomputes exactly the k it would have used: there is nothing to checkpoint.
"""

from .config import ESRConfig


def esr_k_at_step(args: ESRConfig, global_step: int) -> int | None:
    """Return the horizon k for rollouts generated at optimizer step `global_step` (0-based), or `None` for full.

    Linear schedule: `k(s) = esr_k_start + round((esr_k - esr_k_start) * min(s, W) / W)` with `W = esr_k_warmup_steps`,
    so `k(0) = esr_k_start` and `k(s) = esr_k` for every `s >= W`.
    """
    if args.esr_k is None or args.esr_k_schedule == "constant" or args.esr_k_warmup_steps == 0:
        return args.esr_k
    progress = min(global_step, args.esr_k_warmup_steps) / args.esr_k_warmup_steps
    return args.esr_k_start + round((args.esr_k - args.esr_k_start) * progress)
