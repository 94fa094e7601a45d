"""`trl-esr demo`: two regimes, each distilled with full rollout, ESR and ESR + horizon guard, on 2 seeds; a report.

Everything is offline and sized for a 2-core CPU: the teacher and the two students are pre-trained once and cached in
the output directory. `--quick` shrinks everything to check the plumbing; its numbers mean nothing.
"""

import argparse
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from transformers.utils import logging as transformers_logging

from . import kernels
from .distill import DistillInputs, DistillRun, DistillSettings, RunResult, distill
from .evaluate import greedy_accuracy, per_position_reverse_kl, weights_digest
from .pretrain import ModelRecipe, chat_prompt, load_pretrained, pretrain_missing
from .regimes import Regime, predict
from .report import write_report
from .task import build_tokenizer, make_splits, response_length


ERRORS_BEYOND_K = Regime("errors beyond k", "Errors beyond k", 230, 0.0, 3e-4)
EARLY_DECISION = Regime("early decision", "Early decision", 400, 0.65, 1e-4)


@dataclass(frozen=True)
class Settings:
    """Sizes of one demo run (docs/demo.md says how they were chosen). `QUICK` shrinks everything for tests."""

    n_digits: int = 4
    teacher: tuple = ("llama", 128, 4, 300, 32)  # architecture, hidden size, layers, SFT steps, SFT batch size
    student: tuple = ("qwen2", 96, 3)  # architecture, hidden size, layers (SFT steps: per regime)
    regimes: tuple = (ERRORS_BEYOND_K, EARLY_DECISION)
    sft_examples: int = 20_000
    sft_batch_size: int = 64  # the students'
    sft_learning_rate: float = 2e-3
    distill_prompts: int = 2_400  # the trainer cycles through them; fixed so that `--steps` keeps the splits
    steps: int = 30
    k: int = 12
    batch_size: int = 16
    test_size: int = 200
    eval_every: int = 5
    guard_every: int = 5
    guard_rollouts: int = 32
    num_seeds: int = 2
    kl_rollouts: int = 32
    diagnostics_prompts: int = 64
    threads: int = 1  # distillation: per-step cost of ESR lowest at 1 thread (docs/demo.md)
    pretrain_threads: int = 2  # SFT's batched matmuls: 1.5x faster with 2 threads than 1 on this 2-core CPU


QUICK = Settings(
    n_digits=3,
    teacher=("llama", 64, 2, 150, 32),
    student=("qwen2", 48, 2),
    regimes=(replace(ERRORS_BEYOND_K, student_sft_steps=40), replace(EARLY_DECISION, student_sft_steps=60)),
    sft_examples=3_000,
    distill_prompts=200,
    steps=4,
    k=8,
    test_size=32,
    eval_every=2,
    guard_every=2,
    guard_rollouts=4,
    num_seeds=1,
    kl_rollouts=8,
    diagnostics_prompts=8,
)
QUICK_NOTICE = "`--quick` run: tiny models and a few steps, a check of the plumbing only; its numbers mean nothing."


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trl-esr demo",
        description="Offline demo: Early Stopping Rollout vs full-rollout on-policy distillation of tiny students on "
        "column addition, on CPU, in two regimes (errors beyond k, early decision), with and without the ESR horizon "
        "guard. Teacher and students are pre-trained once and cached in the output directory.",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("esr-demo"), help="where models and reports go")
    parser.add_argument("--k", type=int, default=None, help=f"ESR rollout horizon (default {Settings.k})")
    parser.add_argument("--steps", type=int, default=None, help=f"optimizer steps per run (default {Settings.steps})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data and models; runs use seed, seed + 1")
    parser.add_argument("--quick", action="store_true", help="tiny models, a few steps: a plumbing check, for tests")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--threads", type=int, default=None, help=f"torch CPU threads (default {Settings.threads}: fastest measured)"
    )
    parser.add_argument(
        "--native-kernels",
        action="store_true",
        help="use the CPU's fastest torch/MKL kernels instead of the pinned AVX2 ones: other accuracies on other CPUs",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # read at the tokenizer's first parallel call
    transformers_logging.disable_progress_bar()  # weight-loading bars; ours and the Trainer's stay
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*is deprecated")
    settings = QUICK if args.quick else Settings()
    settings = replace(
        settings, k=args.k or settings.k, steps=args.steps or settings.steps, threads=args.threads or settings.threads
    )
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    max_completion_length = response_length(settings.n_digits) + 1 + 4  # answer, EOS, slack for a wandering student
    if not 0 < settings.k < max_completion_length:
        raise SystemExit(f"--k must be between 1 and {max_completion_length - 1}; got {settings.k}.")
    if settings.threads < 1:
        raise SystemExit(f"--threads must be at least 1; got {settings.threads}.")
    torch.set_num_threads(settings.threads)
    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    demo = _Demo(settings, args.seed, device, max_completion_length, output_dir)
    regimes = [demo.run_regime(regime) for regime in settings.regimes]
    summary = demo.summary(time.perf_counter() - started, quick=args.quick)
    text = write_report(output_dir, summary, regimes)
    print(f"\n{text}\n\nReport, metrics and figures written to {output_dir}.")
    return 0


def _student_name(regime: Regime) -> str:
    return "student-" + regime.name.replace(" ", "-")


class _Demo:
    """The shared pieces (tokenizer, splits, teacher) and one regime's runs."""

    def __init__(self, settings: Settings, seed: int, device: str, max_completion_length: int, output_dir: Path):
        self.settings, self.seed, self.device, self.output_dir = settings, seed, device, output_dir
        self.kernels = kernels.cache_key(device)
        self.tokenizer = build_tokenizer()
        self._accuracy: dict[str, float] = {}  # weights_digest -> accuracy
        sizes = {"sft": settings.sft_examples, "distill": settings.distill_prompts, "test": settings.test_size}
        self.splits = make_splits(settings.n_digits, sizes, seed=seed)
        self.distill_settings = DistillSettings(
            max_completion_length, settings.steps, settings.batch_size, 0.0, settings.eval_every,
            settings.guard_every, settings.guard_rollouts, use_cpu=device == "cpu",
        )  # fmt: skip
        started = time.perf_counter()
        jobs = self._pretrain_jobs()
        pretrain_missing(jobs, self.splits["sft"], device, settings.pretrain_threads)
        # One instance for the evaluations and every run's trainer: frozen, as `DistillInputs` requires of a teacher
        # the runs share (it is never trained), instead of each trainer loading it from disk again.
        self.teacher = load_pretrained(jobs[0][2], device).requires_grad_(False)
        self.pretrain_seconds = time.perf_counter() - started  # pre-training or loading the cached models
        self.teacher_accuracy = self.evaluate(self.teacher)
        print(f"Teacher accuracy on {settings.test_size} held-out problems: {self.teacher_accuracy:.1%}.")

    def _pretrain_jobs(self) -> list[tuple[str, ModelRecipe, Path]]:
        """(name, recipe, path) of the teacher, then of each regime's student."""
        s, models = self.settings, self.output_dir / "models"
        architecture, hidden_size, num_layers, sft_steps, batch_size = s.teacher
        common = (s.sft_learning_rate, s.n_digits)
        teacher = ModelRecipe(
            architecture, hidden_size, num_layers, sft_steps, batch_size, *common, self.seed + 1,
            kernels=self.kernels,
        )  # fmt: skip
        jobs = [("teacher", teacher)]
        architecture, hidden_size, num_layers = s.student
        for regime in s.regimes:
            recipe = ModelRecipe(
                architecture, hidden_size, num_layers, regime.student_sft_steps, s.sft_batch_size, *common,
                self.seed + 2, regime.shortcut_fraction, self.kernels,
            )  # fmt: skip
            jobs.append((_student_name(regime), recipe))
        return [(name, recipe, models / name) for name, recipe in jobs]

    def evaluate(self, model) -> float:
        """Greedy accuracy on the test split, measured once per set of weights: greedy evaluation is a pure function
        of them, and ESR and ESR + guard share their weights at every step until the guard stops, so the second run's
        curve (and the checkpoint it keeps) would only repeat the first's evaluations."""
        key = weights_digest(model)
        if key not in self._accuracy:
            length = self.distill_settings.max_completion_length
            self._accuracy[key] = greedy_accuracy(
                model, self.tokenizer, self.splits["test"], self.settings.n_digits, length
            )
        return self._accuracy[key]

    def kl_profile(self, student) -> list[float]:
        s = self.settings
        return per_position_reverse_kl(
            student, self.teacher, self.tokenizer, self.splits["test"][: s.kl_rollouts], s.n_digits,
            self.distill_settings.max_completion_length, temperature=0.7, top_p=0.95, seed=self.seed,
        )  # fmt: skip

    def run_regime(self, regime: Regime) -> dict:
        s, n = self.settings, self.settings.n_digits
        slug = regime.name.replace(" ", "-")
        student_name = _student_name(regime)
        started = time.perf_counter()
        student = load_pretrained(self.output_dir / "models" / student_name, self.device)
        self.pretrain_seconds += time.perf_counter() - started
        student_accuracy = self.evaluate(student)
        print(f"\n== Regime: {regime.title}. Student accuracy before distillation: {student_accuracy:.1%}.")
        prediction = predict(
            student, self.teacher, self.tokenizer, self.splits["test"][: s.diagnostics_prompts], n, s.k,
            self.distill_settings.max_completion_length, self.seed,
        )  # fmt: skip
        print(
            f"Diagnostics before training (trl-esr suggest-k, {s.diagnostics_prompts} rollouts): recommended k = "
            f"{prediction.recommended_k}; {prediction.kl_share_within_k:.0%} of the KL lies in the first {s.k} "
            "tokens; teacher accuracy from student prefixes of "
            + ", ".join(
                f"{k} tokens: {a:.0%}" for k, a in zip(prediction.decay_k_grid, prediction.decay_accuracy, strict=True)
            )
            + f".\nPrediction: {prediction.reading}"
        )
        settings = replace(self.distill_settings, learning_rate=regime.learning_rate)
        inputs = DistillInputs(
            student_path=str(self.output_dir / "models" / student_name),
            teacher=self.teacher,
            tokenizer=self.tokenizer,
            prompts=[chat_prompt(a, b, n) for a, b in self.splits["distill"]],
            evaluate=self.evaluate,
        )
        kl = {"before distillation": self.kl_profile(student)}
        runs: list[RunResult] = []
        for seed in range(self.seed, self.seed + s.num_seeds):
            for method, k, guard in (
                ("full rollout", None, None),
                (f"ESR k={s.k}", s.k, None),
                (f"ESR k={s.k} + guard", s.k, "stop"),
            ):
                print(f"[{regime.title}, seed {seed}] {method}: {s.steps} steps of {s.batch_size} prompts...")
                run_dir = (
                    self.output_dir / "runs" / slug / f"{method.split()[0].lower()}{'-guard' if guard else ''}-{seed}"
                )
                result, model = distill(DistillRun(method, k, guard, seed, str(run_dir)), inputs, settings)
                kept = f" (guard kept step {result.kept_step})" if result.kept_step is not None else ""
                print(f"  accuracy {result.final_accuracy:.1%}{kept} after {result.wall_seconds:.1f} s of training.")
                if seed == self.seed and guard is None:
                    kl[f"after {method}"] = self.kl_profile(model)
                runs.append(result)
        return {
            "regime": regime,
            "student_accuracy": student_accuracy,
            "student_sft_steps": regime.student_sft_steps,
            "prediction": prediction,
            "runs": runs,
            "kl_per_position": kl,
        }

    def summary(self, total_seconds: float, quick: bool) -> dict:
        s = self.settings
        return {
            "notice": QUICK_NOTICE if quick else None,
            "task": f"{s.n_digits}-digit column addition written digit by digit with carries "
            f"({response_length(s.n_digits)} words + EOS)",
            "device": self.device,
            "threads": s.threads,
            "pretrain_threads": s.pretrain_threads,
            "cpu_kernels": kernels.describe(),
            "settings": {key: value for key, value in s.__dict__.items() if key != "regimes"} | {"seed": self.seed},
            "teacher": "{} hidden size {}, {} layers, {} SFT steps of {} examples".format(*s.teacher),
            "student": "{} hidden size {}, {} layers".format(*s.student),
            "distillation": f"{s.steps} optimizer steps x {s.batch_size} prompts, one rollout each, reverse KL, "
            f"ESR k={s.k}; the guard (`esr_horizon_guard='stop'`) measures `esr/kl_beyond_k` on {s.guard_rollouts} "
            f"greedy full-length rollouts every {s.guard_every} steps",
            "teacher_accuracy": self.teacher_accuracy,
            "test_size": s.test_size,
            "k": s.k,
            "kl_sampling": "student rollouts sampled at T=0.7, top-p 0.95 (as in training), never stopped at k",
            "total_seconds": total_seconds,
            "pretrain_seconds": self.pretrain_seconds,
        }
