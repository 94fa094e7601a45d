"""Offline demo: ESR vs full-rollout on-policy distillation of a tiny student on a synthetic task (`trl-esr demo`).

`main` pins the CPU kernels (`kernels.pin`) before it imports the demo, which imports torch, transformers and TRL:
the pinned settings only take effect before the first computation. The import is also deferred so that the tests and
benchmarks that build models with `trl_esr.demo.tiny_models` do not pay for TRL.
"""

import sys


__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """`trl-esr demo [options]`; `--native-kernels` keeps the CPU's own kernel choice."""
    from .kernels import pin

    if "--native-kernels" not in (sys.argv[1:] if argv is None else argv):
        pin()
    from .run import main as run_main

    return run_main(argv)
