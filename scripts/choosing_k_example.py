"""Regenerate the worked example of docs/choosing-k.md: `suggest-k`'s diagnostics on the demo's trained models.

Run after `make demo` (which trains and caches the models in `esr-demo/models`):

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/choosing_k_example.py [--demo-dir esr-demo] [--output-dir ...]

For each of the demo's two students it runs `run_diagnostics` against the demo's teacher as the doc says (the
demo's first 64 held-out problems, one rollout each at the paper's T = 0.7, top-p 0.95, seed 0, the teacher-decay
probe graded with the demo's answer checker), writes the usual `diagnostics.json`, `diagnostics.md` and plots per
student, and prints the numbers the doc quotes. The kernels are pinned as in the demo (`trl_esr.demo.kernels`), so
the numbers repeat where the demo's do. Copy the plots into `docs/images/choosing-k/` by hand.
"""

import argparse
import json
from pathlib import Path

from trl_esr.demo import kernels


PROBE_K_GRID = (0, 6, 12, 24, 36)
STUDENTS = ("student-errors-beyond-k", "student-early-decision")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-dir", type=Path, default=Path("esr-demo"), help="`trl-esr demo`'s output directory")
    parser.add_argument("--output-dir", type=Path, default=Path("esr-demo/choosing-k"))
    args = parser.parse_args()
    kernels.pin()  # before torch computes anything
    import torch

    from trl_esr.demo.pretrain import chat_prompt, load_pretrained
    from trl_esr.demo.run import Settings
    from trl_esr.demo.task import build_tokenizer, is_correct, make_splits, response_length
    from trl_esr.diagnostics import MeasurementSettings, run_diagnostics
    from trl_esr.diagnostics.report import key_numbers, write_report

    torch.set_num_threads(1)
    s = Settings()
    models = args.demo_dir / "models"
    if not (models / "teacher").is_dir():
        raise SystemExit(f"No demo models under {models}: run `make demo` first (or pass --demo-dir).")
    sizes = {"sft": s.sft_examples, "distill": s.distill_prompts, "test": s.test_size}
    pairs = make_splits(s.n_digits, sizes, seed=0)["test"][: s.diagnostics_prompts]
    rows = [{"prompt": chat_prompt(a, b, s.n_digits), "a": a, "b": b} for a, b in pairs]
    max_completion_length = response_length(s.n_digits) + 1 + 4  # as in the demo
    tokenizer = build_tokenizer()
    teacher = load_pretrained(models / "teacher", "cpu")
    settings = MeasurementSettings(max_completion_length, batch_size=len(rows), seed=0, probe_k_grid=PROBE_K_GRID)
    for name in STUDENTS:
        student = load_pretrained(models / name, "cpu")
        result = run_diagnostics(
            student, teacher, tokenizer, rows, settings,
            answer_checker=lambda row, text: is_correct(row["a"], row["b"], s.n_digits, text), show_progress=False,
        )  # fmt: skip
        write_report(result, args.output_dir / name)
        kl = result.summary.kl_mean
        peak = max(range(len(kl)), key=kl.__getitem__)
        report = {
            **key_numbers(result),
            "peak_kl_position": peak + 1,
            "teacher_decay": dict(zip(result.decay.k_grid, result.decay.accuracy, strict=True)),
        }
        print(name, json.dumps(report, indent=1))
    print(f"Reports and plots written to {args.output_dir}.")


if __name__ == "__main__":
    main()
