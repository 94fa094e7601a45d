"""`trl-esr demo`: pre-train (or reuse) a teacher and a student, distil with full rollouts and with ESR, report.

Everything is offline and sized for a laptop CPU: the default run takes a few minutes, `--quick` well under one.
"""

import argparse
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path


os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from transformers.utils import logging as transformers_logging  # noqa: E402

from .distill import distill  # noqa: E402
from .evaluate import greedy_accuracy, per_position_reverse_kl  # noqa: E402
from .pretrain import ModelRecipe, chat_prompt, load_or_pretrain  # noqa: E402
from .report import write_report  # noqa: E402
from .task import build_tokenizer, make_splits, response_length  # noqa: E402


@dataclass(frozen=True)
class Settings:
    """Sizes of one demo run. `QUICK` shrinks everything for tests; the models are smaller and weaker there."""

    n_digits: int = 4
    teacher: tuple = ("llama", 128, 4, 300)  # architecture, hidden size, layers, SFT steps
    student: tuple = ("qwen2", 96, 3, 230)
    sft_examples: int = 20_000
    sft_batch_size: int = 64
    sft_learning_rate: float = 2e-3
    distill_prompts: int = 2_400  # the trainer cycles through them; fixed so that `--steps` keeps the splits
    steps: int = 100
    k: int = 12
    batch_size: int = 16
    learning_rate: float = 3e-4
    test_size: int = 200
    eval_every: int = 10
    kl_rollouts: int = 64


QUICK = Settings(
    n_digits=3,
    teacher=("llama", 64, 2, 200),
    student=("qwen2", 48, 2, 60),
    sft_examples=5_000,
    distill_prompts=200,
    steps=8,
    k=8,
    test_size=48,
    eval_every=4,
    kl_rollouts=16,
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="trl-esr demo",
        description="Offline demo: Early Stopping Rollout vs full-rollout on-policy distillation of a tiny student on "
        "column addition, on CPU. Teacher and student are pre-trained once and cached in the output directory.",
    )
    parser.add_argument("--output-dir", type=Path, default=Path("esr-demo"), help="where models and reports go")
    parser.add_argument("--k", type=int, default=None, help=f"ESR rollout horizon (default {Settings.k})")
    parser.add_argument(
        "--steps", type=int, default=None, help=f"optimizer steps per method (default {Settings.steps})"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a reduced run (tiny models, few steps), for tests")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    transformers_logging.disable_progress_bar()  # weight-loading bars; ours and the Trainer's stay
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*is deprecated")
    settings = QUICK if args.quick else Settings()
    settings = replace(settings, k=args.k or settings.k, steps=args.steps or settings.steps)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    output_dir = args.output_dir.resolve()
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    n = settings.n_digits
    max_completion_length = response_length(n) + 1 + 4  # the answer, EOS, and slack for a wandering student
    if not 0 < settings.k < max_completion_length:
        raise SystemExit(f"--k must be between 1 and {max_completion_length - 1}; got {settings.k}.")
    tokenizer = build_tokenizer()
    splits = make_splits(
        n,
        {"sft": settings.sft_examples, "distill": settings.distill_prompts, "test": settings.test_size},
        seed=args.seed,
    )
    models = {}
    for name, (architecture, hidden_size, num_layers, sft_steps), seed in (
        ("teacher", settings.teacher, args.seed + 1),
        ("student", settings.student, args.seed + 2),
    ):
        recipe = ModelRecipe(
            architecture,
            hidden_size,
            num_layers,
            sft_steps,
            settings.sft_batch_size,
            settings.sft_learning_rate,
            n,
            seed,
        )
        models[name] = load_or_pretrain(name, recipe, tokenizer, splits["sft"], output_dir / "models" / name, device)

    def evaluate(model) -> float:
        return greedy_accuracy(model, tokenizer, splits["test"], n, max_completion_length)

    print(f"Evaluating teacher and student on {settings.test_size} held-out problems...")
    teacher_accuracy, student_accuracy = evaluate(models["teacher"]), evaluate(models["student"])
    print(f"Teacher accuracy {teacher_accuracy:.1%}, student accuracy before distillation {student_accuracy:.1%}.")

    kl_sampling = "student rollouts sampled at T=0.7, top-p 0.95 (as in training), never stopped at k"

    def kl_profile(student) -> list[float]:
        return per_position_reverse_kl(
            student,
            models["teacher"],
            tokenizer,
            splits["test"][: settings.kl_rollouts],
            n,
            max_completion_length,
            temperature=0.7,
            top_p=0.95,
            seed=args.seed,
        )

    kl = {"before distillation": kl_profile(models["student"])}
    runs = []
    for method, k in (("full rollout", None), (f"ESR k={settings.k}", settings.k)):
        horizon = f"rollouts stopped after {k} tokens" if k else f"rollouts up to {max_completion_length} tokens"
        print(f"Distilling with {method} ({horizon}), {settings.steps} steps of {settings.batch_size} prompts...")
        result, student = distill(
            method,
            k,
            str(output_dir / "models" / "student"),
            str(output_dir / "models" / "teacher"),
            tokenizer,
            [chat_prompt(a, b, n) for a, b in splits["distill"]],
            evaluate,
            settings.eval_every,
            max_completion_length,
            settings.steps,
            settings.batch_size,
            settings.learning_rate,
            args.seed,
            use_cpu=device == "cpu",
            output_dir=str(output_dir / "runs" / method.split()[0].lower()),
        )
        print(f"{method}: accuracy {result.final_accuracy:.1%} after {result.wall_seconds:.1f} s of training.")
        kl[f"after {method}"] = kl_profile(student)
        runs.append(result)

    summary = {
        "task": f"{n}-digit column addition written digit by digit with carries ({response_length(n)} words + EOS)",
        "device": device,
        "settings": settings.__dict__ | {"seed": args.seed},
        "teacher": "{} hidden size {}, {} layers, {} SFT steps".format(*settings.teacher),
        "student": "{} hidden size {}, {} layers, {} SFT steps".format(*settings.student),
        "distillation": f"{settings.steps} optimizer steps x {settings.batch_size} prompts, one rollout each, "
        f"reverse KL, lr {settings.learning_rate}, same seed and student initialisation for both methods",
        "teacher_accuracy": teacher_accuracy,
        "student_accuracy": student_accuracy,
        "test_size": settings.test_size,
        "kl_sampling": kl_sampling,
        "total_seconds": time.perf_counter() - started,
    }
    result_table = write_report(output_dir, summary, runs, kl, settings.k)
    print(f"\n{result_table}\n\nReport, metrics and figures written to {output_dir}.")
    return 0
