"""Import time of the ESR core: `from trl_esr import ESRDistillTrainer`, next to TRL's own
`from trl import DistillationTrainer` (the floor: torch, transformers and TRL), and the `trl_esr` modules it loads.

    python benchmarks/import_time.py [--repeats 3]

Each import runs in a fresh interpreter; the best of the repeats is reported (the least disturbed by other load on the
machine). The third row times our import with TRL already loaded: what trl_esr itself adds, without the noise of the
much larger torch/transformers/TRL import. A script, not a test: timings depend on the machine and its load. The
module set does not: `tests/test_training.py::test_the_core_import_loads_no_optional_layer` checks it.
"""

import argparse
import json
import os
import subprocess
import sys


IMPORTS = {  # name: (statement timed, statement run before the clock starts)
    "from trl_esr import ESRDistillTrainer": ("from trl_esr import ESRDistillTrainer", ""),
    "(floor) from trl import DistillationTrainer": ("from trl import DistillationTrainer", ""),
    "import trl_esr": ("import trl_esr", ""),
    "(ours alone) the same, TRL already imported": (
        "from trl_esr import ESRDistillTrainer",
        "from trl import DistillationTrainer",
    ),
}

_PROBE = """
import json, sys, time
{setup}
start = time.perf_counter()
{statement}
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "modules": sorted(m for m in sys.modules if m.split(".")[0] == "trl_esr")}}))
"""


def measure(statement: str, setup: str = "") -> dict:
    """Seconds and `trl_esr` modules of one import, in a fresh interpreter (after `setup`, which is not timed)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    probe = _PROBE.format(statement=statement, setup=setup)
    result = subprocess.run([sys.executable, "-c", probe], env=env, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    results = {}
    print(f"| import | best of {args.repeats} (s) | all (s) |\n|---|---|---|")
    for name, (statement, setup) in IMPORTS.items():
        runs = [measure(statement, setup) for _ in range(args.repeats)]
        times = [run["seconds"] for run in runs]
        results[name] = {"best": min(times), "all": times, "modules": runs[-1]["modules"]}
        print(f"| `{name}` | {min(times):.2f} | {', '.join(f'{t:.2f}' for t in times)} |", flush=True)
    core = results["from trl_esr import ESRDistillTrainer"]["modules"]
    print(f"\n`trl_esr` modules loaded by `from trl_esr import ESRDistillTrainer` ({len(core)}):")
    for module in core:
        print(f"- {module}")
    if hasattr(os, "getloadavg"):
        print(f"\nload average (1, 5, 15 min): {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return results


if __name__ == "__main__":
    main()
