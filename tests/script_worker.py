"""Runs `trl_esr.scripts.esr_distill` and keeps the trainer it built, so tests can inspect what the script did.

In-process: `trainer = run_script(argv)`. Under `torchrun`: `script_worker.py REPORT_DIR ARGV...` writes
`REPORT_DIR/rank{r}.json` with the world size, the rank, the logged history and the final trainable weights.
"""

import json
import os
import sys


os.environ["HF_HUB_OFFLINE"] = "1"

import trl_esr.scripts.esr_distill as script  # noqa: E402


def run_script(argv: list[str]):
    """`esr_distill.main(argv)`, returning the `ESRDistillTrainer` it trained."""
    trainers = []

    class RecordingTrainer(script.ESRDistillTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            trainers.append(self)

    original, script.ESRDistillTrainer = script.ESRDistillTrainer, RecordingTrainer
    try:
        script.main(argv)
    finally:
        script.ESRDistillTrainer = original
    (trainer,) = trainers
    return trainer


def report(trainer) -> dict:
    return {
        "world_size": trainer.accelerator.num_processes,
        "rank": trainer.accelerator.process_index,
        "log_history": trainer.state.log_history,
        "trainable": {
            name: p.detach().flatten().tolist() for name, p in trainer.model.named_parameters() if p.requires_grad
        },
    }


if __name__ == "__main__":
    report_dir, argv = sys.argv[1], sys.argv[2:]
    result = report(run_script(argv))
    with open(os.path.join(report_dir, f"rank{result['rank']}.json"), "w") as f:
        json.dump(result, f)
