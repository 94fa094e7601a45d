"""Wall-clock start-up time of `trl-esr --help` and of each subcommand's `--help` (target: <= 2 s on the project's
2-core CPU), next to what building the `train` parser itself costs (the import of torch, transformers and TRL that
`trl_esr/_cli_help.py` avoids).

    python benchmarks/cli_startup.py [--repeats 5]

Each command runs in a fresh interpreter; the median of the repeats is reported. A script, not a test: timings depend
on the machine and its load.
"""

import argparse
import statistics
import subprocess
import sys
import time


COMMANDS = {
    "trl-esr --help": ["-m", "trl_esr.cli", "--help"],
    "trl-esr train --help": ["-m", "trl_esr.cli", "train", "--help"],
    "trl-esr suggest-k --help": ["-m", "trl_esr.cli", "suggest-k", "--help"],
    "trl-esr demo --help": ["-m", "trl_esr.cli", "demo", "--help"],
    "trl-esr evaluate --help": ["-m", "trl_esr.cli", "evaluate", "--help"],
    "(reference) the train parser built: esr_distill --help": ["-m", "trl_esr.scripts.esr_distill", "--help"],
}


def seconds(args: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"| command | median of {args.repeats} (s) | min (s) |\n|---|---|---|")
    for name, command in COMMANDS.items():
        repeats = args.repeats if not name.startswith("(reference)") else min(args.repeats, 2)
        times = [seconds(command) for _ in range(repeats)]
        print(f"| `{name}` | {statistics.median(times):.2f} | {min(times):.2f} |", flush=True)


if __name__ == "__main__":
    main()
