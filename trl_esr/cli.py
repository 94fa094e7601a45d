"""`trl-esr` console command: `trl-esr demo|train|suggest-k|evaluate ...`.

Each subcommand forwards its arguments to its module's `main`. `trl-esr --help` and `trl-esr <command> --help` import
nothing heavy: a command's help is pre-rendered in `trl_esr/_cli_help.py` (by `scripts/gen_cli_help.py`, checked by
a test), since building the parser of `train` alone imports torch, transformers and TRL. The text is used only when
the installed transformers and TRL are the versions it was rendered with; otherwise the command's parser prints it."""

import sys


_COMMANDS = {
    "demo": ("trl_esr.demo", "offline demo: ESR vs full-rollout distillation on a tiny task, on CPU"),
    "train": ("trl_esr.scripts.esr_distill", "distil a student from a teacher with ESR (TRL-style arguments)"),
    "suggest-k": ("trl_esr.diagnostics.cli", "measure per-position teacher/student KL and recommend k"),
    "evaluate": ("trl_esr.scripts.evaluate_boxed", "MATH-500-style avg@n / pass@n of a model's \\boxed{} answers"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in _COMMANDS:
        print("usage: trl-esr <command> [options]\n\ncommands:")
        for name, (_, help_text) in _COMMANDS.items():
            print(f"  {name:<10} {help_text}")
        print("\n`trl-esr <command> --help` lists a command's options.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    if argv[1:] in (["-h"], ["--help"]) and (text := _cached_help(argv[0])) is not None:
        print(text, end="")
        return 0
    module_name, _ = _COMMANDS[argv[0]]
    module = __import__(module_name, fromlist=["main"])
    return module.main(argv[1:]) or 0


def _cached_help(command: str) -> str | None:
    """The pre-rendered help of `command`, or None when it would not be what its parser prints here: the options of
    `train` come from transformers' and TRL's dataclasses, which gain and lose fields between versions."""
    from importlib.metadata import PackageNotFoundError, version

    from ._cli_help import HELP, RENDERED_WITH

    try:
        if any(version(name) != rendered for name, rendered in RENDERED_WITH.items()):
            return None
    except PackageNotFoundError:
        return None
    return HELP[command]


if __name__ == "__main__":
    sys.exit(main())
