"""`trl-esr suggest-k`: measure where the teacher disagrees with full-length student rollouts and recommend k.

```bash
trl-esr suggest-k \\
    --model_name_or_path Qwen/Qwen2.5-Math-1.5B \\
    --teacher_model_name_or_path Qwen/Qwen3-1.7B \\
    --dataset_name AI-MO/NuminaMath-CoT --num_prompts 64 \\
    --max_completion_length 3584 --batch_size 8 \\
    --output_dir esr-diagnostics

# the paper's prompts, as `trl-esr train` renders them: the problem column, its system prompt, a Qwen3 teacher in
# non-thinking mode on its own template
trl-esr suggest-k --model_name_or_path Qwen/Qwen2.5-Math-1.5B --teacher_model_name_or_path Qwen/Qwen3-1.7B \\
    --dataset_name AI-MO/NuminaMath-CoT --prompt_column problem \\
    --system_prompt "Please reason step by step, and put your final answer within \\boxed{}." \\
    --teacher_chat_template teacher --teacher_chat_template_kwargs '{"enable_thinking": false}' \\
    --max_completion_length 3584

# LoRA student, both models in 4 bits (TRL's `ModelConfig` options apply to both), teacher-decay probe graded on the
# last \\boxed{} of the `solution` column
trl-esr suggest-k --config suggest_k.yaml --student_adapter_path my-lora --load_in_4bit \\
    --probe_k_grid 0 100 300 --answer_column solution
```

The models are loaded from TRL's `ModelConfig` (`--model_name_or_path`, `--model_revision`, `--dtype`,
`--load_in_4bit`, ...; `trl_esr.inference`), and the pair is checked with the trainer's own rule (`trl_esr.pairing`):
the teacher must read the student's token ids over one vocabulary, as on the trainer's fast path.

Exit codes: 0 = k recommended; 2 = bad input (arguments, dataset, models); 3 = no recommendation possible (the
teacher and student agree too closely for the KL curve to say anything; the report is still written); 1 = a crash and
130 = Ctrl-C during the measurement: the rollouts and scores finished so far are kept in `--output_dir`
(`rollouts.jsonl`, `scores.jsonl`), and running the same command again resumes from there.
"""

import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser

from .. import inference
from ..inference import InferenceModelConfig
from ..validation import cli_none, json_dict
from .decay import boxed_answer_checker
from .prompts import prompt_from_row
from .recommend import DEFAULT_THRESHOLD
from .report import caveats, key_numbers, write_report
from .run import (
    ROLLOUTS_FILE,
    SCORES_FILE,
    MeasurementSettings,
    check_resumable,
    measured_settings,
    run_diagnostics,
)


EXIT_RECOMMENDED = 0
EXIT_BAD_INPUT = 2
EXIT_NO_RECOMMENDATION = 3
EXIT_FAILED = 1  # a crash during the measurement (what was finished is kept in `--output_dir`)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports it


@dataclass
class SuggestKArguments:
    """Arguments of `trl-esr suggest-k` besides the models' (TRL's `ModelConfig`, applied to both models); names follow
    TRL's scripts (`ScriptArguments`, `DistillationConfig.teacher_model_name_or_path`)."""

    teacher_model_name_or_path: str | None = field(
        default=None, metadata={"help": "Teacher model; it must read the student's token ids (the same vocabulary)."}
    )
    teacher_model_revision: str | None = field(
        default=None, metadata={"help": "Teacher revision (branch, tag or commit); default: its default branch."}
    )
    student_adapter_path: str | None = field(
        default=None, metadata={"help": "Optional PEFT (LoRA) adapter loaded on top of the student."}
    )
    dataset_name: str | None = field(default=None, metadata={"help": "Hub dataset to take prompts from."})
    dataset_files: list[str] | None = field(
        default=None,
        metadata={"help": "Local .json/.jsonl/.parquet files to take prompts from (instead of a Hub set)."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Dataset split."})
    prompt_column: str = field(
        default="prompt",
        metadata={
            "help": "Column holding the prompt (a string or chat messages), e.g. 'problem' for NuminaMath-CoT. "
            "Without it, prompts come from a 'messages' column minus its final assistant turn."
        },
    )
    answer_column: str = field(
        default="answer",
        metadata={"help": "Column with the reference answer for the teacher-decay probe (its last \\boxed{} if any)."},
    )
    num_prompts: int = field(
        default=64, metadata={"help": "Prompts to roll out (a seeded shuffle of the split); one rollout each."}
    )
    max_completion_length: int = field(
        default=1024,
        metadata={"help": "Length of the full rollouts: use your training's `max_completion_length` (paper: 3584)."},
    )
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (the paper's 0.7)."})
    top_p: float = field(default=0.95, metadata={"help": "Top-p of sampling (the paper's 0.95)."})
    batch_size: int = field(default=8, metadata={"help": "Rollouts generated and scored at once."})
    seed: int = field(default=42, metadata={"help": "Seed: the same seed and batch size give the same numbers."})
    threshold: float = field(
        default=DEFAULT_THRESHOLD,
        metadata={
            "help": "Share of the total per-position KL the first k tokens must hold, in (0, 1) (paper: about 45%%)."
        },
    )
    output_dir: str = field(
        default="esr-diagnostics",
        metadata={
            "help": "Where the JSON, plots and report go. Rollouts and scores are written there batch by batch "
            "(rollouts.jsonl, scores.jsonl): after a crash or Ctrl-C, the same command resumes where it stopped."
        },
    )
    probe_k_grid: list[int] = field(
        default_factory=list,
        metadata={"help": "Student-prefix lengths for the teacher-decay probe, e.g. `0 100 300`; empty: no probe."},
    )
    # The prompts as training renders them (the same options as `trl-esr train`'s): the KL curve depends on them.
    system_prompt: str | None = field(
        default=None,
        metadata={"help": "System message put before every prompt that has none, as `trl-esr train` does."},
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "The student's chat template keyword arguments (JSON), as TRL's `chat_template_kwargs`."},
    )
    teacher_chat_template: str | None = field(
        default=None,
        metadata={"help": "How the teacher sees each chat prompt, as `ESRConfig.teacher_chat_template` ('teacher')."},
    )
    teacher_chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={"help": "Keyword arguments for the teacher's prompt (JSON), e.g. '{\"enable_thinking\": false}'."},
    )

    def __post_init__(self):
        cli_none(self, "system_prompt", "teacher_chat_template")
        for name in ("chat_template_kwargs", "teacher_chat_template_kwargs"):
            setattr(self, name, json_dict(name, getattr(self, name)))


def make_parser() -> TrlParser:
    return TrlParser((SuggestKArguments, InferenceModelConfig), prog="trl-esr suggest-k")


def main(argv: list[str] | None = None) -> int:
    try:
        args, model_args = make_parser().parse_args_and_config(argv)
    except SystemExit as exit_:  # argparse: --help (0) or a bad argument (2)
        return exit_.code if isinstance(exit_.code, int) else EXIT_BAD_INPUT
    except (ValueError, OSError) as error:  # an unreadable --config file, `ModelConfig`'s own checks
        return _bad_input(error)
    try:
        _validate(args, model_args)
        rows = _load_prompt_rows(args)
        settings = _measured_settings(args, model_args, len(rows))
        resuming = check_resumable(args.output_dir, settings, [prompt_from_row(row) for row in rows])
        student, teacher, tokenizer, teacher_renderer = _load_models(args, model_args, rows)
    except (ValueError, OSError) as error:
        return _bad_input(error)
    if resuming:
        print(resuming, file=sys.stderr)

    # Rollouts, scores and probe results are written to `--output_dir` batch by batch: a crash or Ctrl-C keeps them,
    # and the same command resumes from there.
    try:
        result = run_diagnostics(
            student,
            teacher,
            tokenizer,
            rows,
            _measurement_settings(args),
            boxed_answer_checker(args.answer_column) if args.probe_k_grid else None,
            save_dir=args.output_dir,
            run_identity=_run_identity(args, model_args),
            template_options=args.chat_template_kwargs,
            teacher_prompt_renderer=teacher_renderer,
        )
    except KeyboardInterrupt as interrupt:
        return _stopped("interrupted", interrupt, EXIT_INTERRUPTED)
    except Exception as error:
        traceback.print_exc()
        return _stopped(f"failed ({type(error).__name__})", error, EXIT_FAILED)
    try:
        paths = write_report(result, args.output_dir, extra_settings=_model_settings(args, model_args))
    except Exception as error:
        traceback.print_exc()
        error.add_note(f"The measurements are kept in {args.output_dir}: {ROLLOUTS_FILE} and {SCORES_FILE}.")
        return _stopped(f"could not write the report ({type(error).__name__})", error, EXIT_FAILED)
    _print_summary(result, paths)
    return EXIT_RECOMMENDED if result.recommendation.k is not None else EXIT_NO_RECOMMENDATION


def _validate(args: SuggestKArguments, model_args: ModelConfig) -> None:
    """Every argument that can be checked without loading anything; raises `ValueError` naming the option."""
    from ..validation import check_model_path, check_output_dir, resolve_dataset_source

    if model_args.model_name_or_path is None or args.teacher_model_name_or_path is None:
        raise ValueError("Both `--model_name_or_path` and `--teacher_model_name_or_path` are required.")
    if (args.dataset_name is None) == (args.dataset_files is None):
        raise ValueError("Give exactly one of `--dataset_name` (Hub) and `--dataset_files` (local files).")
    for name in ("num_prompts", "max_completion_length", "batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"`--{name}` must be a positive integer, got {getattr(args, name)}.")
    if not 0 < args.threshold < 1:
        raise ValueError(
            f"`--threshold` must be in (0, 1), got {args.threshold}: it is the share of the total KL the first k "
            "tokens hold, and a share of 1 would put k at the end of every rollout. The paper's rule uses 0.45."
        )
    if not args.temperature > 0 or not 0 < args.top_p <= 1:
        raise ValueError(
            f"`--temperature` must be > 0 and `--top_p` in (0, 1] (the rollouts are sampled); got {args.temperature} "
            f"and {args.top_p}. The paper samples at 0.7 and 0.95."
        )
    if any(not 0 <= k < args.max_completion_length for k in args.probe_k_grid):
        raise ValueError(
            f"Every `--probe_k_grid` value must be in [0, {args.max_completion_length}) (`--max_completion_length`); "
            f"got {args.probe_k_grid}."
        )
    check_model_path("model_name_or_path", model_args.model_name_or_path, revision=model_args.model_revision)
    check_model_path(
        "teacher_model_name_or_path", args.teacher_model_name_or_path, revision=args.teacher_model_revision
    )
    check_model_path("student_adapter_path", args.student_adapter_path, adapter=True)
    args.dataset_name, args.dataset_files = resolve_dataset_source(args.dataset_name, args.dataset_files)
    check_output_dir("output_dir", args.output_dir)


def _load_prompt_rows(args: SuggestKArguments) -> list[dict]:
    from datasets.exceptions import DatasetGenerationError

    from ..data import load_prompt_dataset, to_prompt_dataset
    from ..validation import explain_load_error

    try:
        dataset = load_prompt_dataset(args.dataset_name, dataset_files=args.dataset_files, split=args.dataset_split)
    except (DatasetGenerationError, ValueError, TypeError) as error:
        explained = explain_load_error("dataset_split", args.dataset_split, args.dataset_files, error)
        if explained is None:
            raise
        raise explained from error
    if len(dataset) == 0:
        raise ValueError(f"The dataset split `--dataset_split` {args.dataset_split!r} has no rows.")
    dataset = to_prompt_dataset(dataset, args.prompt_column, args.system_prompt)  # names `--prompt_column` if none
    if args.probe_k_grid and args.answer_column not in dataset.column_names:
        raise ValueError(
            f"The teacher-decay probe grades answers from `--answer_column` '{args.answer_column}', which the dataset "
            f"lacks (columns: {dataset.column_names})."
        )
    dataset = dataset.shuffle(seed=args.seed).select(range(min(args.num_prompts, len(dataset))))
    return list(dataset)


def _load_models(args: SuggestKArguments, model_args: ModelConfig, rows: list[dict] | None = None):
    """The student (with its adapter), the teacher, the student's tokenizer and the teacher's view of the prompts
    (`trl_esr.teacher_view`, or `None`: the student's rendering). The pair and the teacher's view are checked first,
    from the tokenizers and the configs' head sizes, with the trainer's rules (`trl_esr.pairing.pair_kind`): the
    per-token KL compares next-token distributions over one vocabulary, so the teacher must read the student's ids
    with heads of the same size (the trainer's "same" pairs). `rows`: the prompt rows, whose first prompt says
    whether the teacher's view applies (chat messages); `None`: taken to be chat prompts."""
    from transformers import AutoTokenizer

    from ..pairing import TokenizerPairing, head_size, pair_kind
    from ..teacher_view import TeacherPromptRenderer

    student_name, teacher_name = model_args.model_name_or_path, args.teacher_model_name_or_path
    tokenizer = inference.load_tokenizer(student_name, model_args.model_revision)
    teacher_revision = args.teacher_model_revision
    teacher_tokenizer = AutoTokenizer.from_pretrained(teacher_name, revision=teacher_revision)
    kind = pair_kind(
        tokenizer,
        teacher_tokenizer,
        head_size(student_name, revision=model_args.model_revision),
        head_size(teacher_name, revision=teacher_revision),
    )
    if kind.mode != "same":
        reason = (
            "their heads have different sizes (`vocab_size`)"
            if kind.shares_ids
            else "the tokenizers differ (some student token has another id, or none, in the teacher's)"
        )
        raise ValueError(
            f"The student and the teacher do not share one vocabulary: {reason}. The per-token KL compares "
            "next-token distributions over one vocabulary, so `suggest-k` needs a teacher that reads the student's "
            "token ids with a head of the same size (the trainer supports the other pairs: docs/cross-family.md)."
        )
    pairing = TokenizerPairing(tokenizer, teacher_tokenizer)
    teacher_renderer = TeacherPromptRenderer.from_config(args, pairing, tokenizer, rows)
    student = inference.load_causal_lm(student_name, model_args, model_args.model_revision)
    teacher = inference.load_causal_lm(teacher_name, model_args, teacher_revision)
    if args.student_adapter_path is not None:
        from peft import PeftModel

        student = PeftModel.from_pretrained(student, args.student_adapter_path)
    return student, teacher, tokenizer, teacher_renderer


# The `ModelConfig` fields that change the numbers: a run is resumed only with the same ones.
_MODEL_OPTIONS = ("model_revision", "dtype", "attn_implementation", "load_in_4bit", "load_in_8bit",
                  "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage")  # fmt: skip


# How the prompts are rendered (the system prompt already changes the prompts, which a resumed run must match).
_PROMPT_OPTIONS = ("system_prompt", "chat_template_kwargs", "teacher_chat_template", "teacher_chat_template_kwargs")


def _model_settings(args: SuggestKArguments, model_args: ModelConfig) -> dict:
    return {
        "model_name_or_path": model_args.model_name_or_path,
        "teacher_model_name_or_path": args.teacher_model_name_or_path,
        "teacher_model_revision": args.teacher_model_revision,
        "student_adapter_path": args.student_adapter_path,
        **{name: getattr(model_args, name) for name in _MODEL_OPTIONS},
        "dataset": args.dataset_name or args.dataset_files,
        "dataset_split": args.dataset_split,
        "prompt_column": args.prompt_column,
        **{name: getattr(args, name) for name in _PROMPT_OPTIONS},
    }


def _measurement_settings(args: SuggestKArguments) -> MeasurementSettings:
    return MeasurementSettings(
        max_completion_length=args.max_completion_length,
        temperature=args.temperature,
        top_p=args.top_p,
        batch_size=args.batch_size,
        seed=args.seed,
        threshold=args.threshold,
        probe_k_grid=tuple(args.probe_k_grid),
    )


def _measured_settings(args: SuggestKArguments, model_args: ModelConfig, num_prompts: int) -> dict:
    """The settings `run_diagnostics` saves with its partial results (see `run.measured_settings`)."""
    return measured_settings(_measurement_settings(args).as_dict(num_prompts), _run_identity(args, model_args))


def _run_identity(args: SuggestKArguments, model_args: ModelConfig) -> dict:
    """The model and dataset settings, plus the size and time of each local model file: partial results are reused
    only for the same models (a student retrained into the same folder is another model)."""
    identity = _model_settings(args, model_args)
    for name in ("model_name_or_path", "teacher_model_name_or_path", "student_adapter_path"):
        folder = Path(identity[name]).expanduser() if identity[name] else None
        if folder is not None and folder.is_dir():
            identity[f"{name}_files"] = {
                file.name: [file.stat().st_size, file.stat().st_mtime_ns]
                for file in sorted(folder.iterdir())
                if file.is_file()
            }
    return identity


def _stopped(what: str, error: BaseException, code: int) -> int:
    notes = getattr(error, "__notes__", [])
    kept = notes[-1] if notes else "Nothing was finished yet."
    print(f"trl-esr suggest-k: {what}. {kept}", file=sys.stderr)
    return code


def _print_summary(result, paths: dict) -> None:
    rec, numbers = result.recommendation, key_numbers(result)
    print(f"\nRecommended k = {rec.k}" if rec.k is not None else "\nNo k can be recommended.")
    print(rec.reason)
    for note in caveats(result, numbers):
        print(f"Caveat: {note}")
    for name, value in numbers.items():
        print(f"  {name:<26} {f'{value:.4g}' if isinstance(value, float) else value}")
    if result.decay is not None:
        curve = ", ".join(
            f"k={k}: {acc:.3f}" for k, acc in zip(result.decay.k_grid, result.decay.accuracy, strict=True)
        )
        print(f"  teacher accuracy from a student prefix: {curve}")
    print(f"Report: {paths['markdown']}  (data: {paths['json']})")


def _bad_input(error: Exception) -> int:
    print(f"trl-esr suggest-k: error: {error}", file=sys.stderr)
    return EXIT_BAD_INPUT
