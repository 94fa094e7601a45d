"""One distillation run (full rollout, ESR, or ESR + horizon guard) with `ESRDistillTrainer`, evaluated as it trains.

Every method of a regime goes through `distill` with the same student initialisation, seed, data order and number of
optimizer steps; only `esr_k` and the guard differ. Wall-clock time runs from the first to the last optimizer step and
excludes the time spent evaluating, but includes the guard's own measurements (they are part of what it costs).
"""

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from trl_esr import ESRConfig, ESRDistillTrainer
from trl_esr.diagnostics import ESRDiagnosticsCallback


@dataclass(frozen=True)
class DistillSettings:
    """What every run of a regime shares."""

    max_completion_length: int
    steps: int
    batch_size: int
    learning_rate: float
    eval_every: int
    guard_every: int  # `esr_diagnostics_steps` of the guarded run
    guard_rollouts: int  # `esr_diagnostics_num_rollouts` of the guarded run
    use_cpu: bool


@dataclass(frozen=True)
class DistillInputs:
    """What every run of a regime starts from: the same student checkpoint, teacher, tokenizer, prompts and accuracy
    measure, so that the runs differ only in their `DistillRun`.

    The student is a path, loaded afresh by each run's trainer: training changes it in place, and every run must start
    from the same weights. The teacher is one loaded instance shared by all runs, instead of each of the demo's 12
    trainers loading it from disk again. Sharing it is safe because it is never trained: it must be frozen
    (`requires_grad` off, so no optimizer can update it even if handed its parameters) and in eval mode (no dropout),
    which `distill` checks before each run; the trainer's loss and the guard's measurements run it under
    `torch.no_grad` only. An instance is used as given: TRL applies `teacher_model_init_kwargs` only to a teacher it
    loads (the demo sets none), and places it with accelerate in evaluation mode, which on one device without mixed
    precision (the demo's `bf16=False`) leaves it as it is; the trainer still reads the teacher's tokenizer from the
    folder the instance was loaded from (its `name_or_path`).
    """

    student_path: str
    teacher: PreTrainedModel
    tokenizer: PreTrainedTokenizerFast
    prompts: list[list[dict]]  # chat prompts, one user message each; the trainer cycles through them
    evaluate: Callable[[PreTrainedModel], float]  # accuracy of a model on the held-out split


@dataclass(frozen=True)
class DistillRun:
    """One run of a regime: the method (full rollout, ESR, ESR + guard), its seed and where its checkpoints go."""

    method: str  # its name in the report, e.g. "ESR k=12 + guard"
    k: int | None  # `esr_k`; None: full rollout
    guard: str | None  # `esr_horizon_guard`; None: no guard
    seed: int
    output_dir: str


@dataclass
class RunResult:
    """What one run measured. Token counts are summed from the trainer's own `esr/*` logs, plus (`tokens_measured`)
    the full-length rollouts the guard's measurements generated; `curve` points count both."""

    method: str
    seed: int
    k: int | None
    guard: str | None = None
    curve: list[dict] = field(default_factory=list)  # {"step", "train_seconds", "tokens", "accuracy"}
    tokens_generated: int = 0
    tokens_trained: int = 0
    tokens_measured: int = 0
    max_rollout_length: int = 0
    rollouts: int = 0
    kl_beyond_k: list[list[float]] = field(default_factory=list)  # [step, value] of each guard measurement
    stopped_at: int | None = None  # the step the guard stopped training at
    kept_step: int | None = None  # the step of the model the run hands over (the guard's best checkpoint)
    kept_accuracy: float | None = None

    @property
    def final_accuracy(self) -> float:
        """The accuracy of the model the run hands over: the guard's best checkpoint, else the last step's."""
        return self.curve[-1]["accuracy"] if self.kept_accuracy is None else self.kept_accuracy

    @property
    def wall_seconds(self) -> float:
        return self.curve[-1]["train_seconds"]

    @property
    def total_tokens(self) -> int:
        return self.tokens_generated + self.tokens_measured


class _AccuracyCurve(TrainerCallback):
    """Evaluate at the start, every `every` optimizer steps and at the last step, keeping a training-only stopwatch.

    Points are taken when a step's logs arrive (`on_log`, every step with `logging_steps=1`), so the step's own
    `esr/tokens_generated` is already counted and a stop by the guard is already decided.
    """

    def __init__(self, evaluate: Callable[[PreTrainedModel], float], every: int, result: RunResult):
        self.evaluate, self.every, self.result = evaluate, every, result

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._start, self._eval_seconds, self._tokens = time.perf_counter(), 0.0, 0
        self._record(state, model)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if not logs or "esr/tokens_generated" not in logs:
            return  # the end-of-training summary
        self._tokens += logs["esr/tokens_generated"]
        last = state.global_step == state.max_steps or control.should_training_stop  # the guard may stop early
        if state.global_step % self.every == 0 or last:
            self._record(state, model)

    def _record(self, state, model: PreTrainedModel) -> None:
        now = time.perf_counter()
        train_seconds = now - self._start - self._eval_seconds
        tokens = int(self._tokens) + self.result.tokens_measured
        accuracy = self.evaluate(model)
        self._eval_seconds += time.perf_counter() - now
        point = {"step": state.global_step, "train_seconds": train_seconds, "tokens": tokens, "accuracy": accuracy}
        self.result.curve.append(point)


class _QuietProgress(ProgressCallback):
    """TRL's progress bar without the dict it prints at every logging step (we log every step to count tokens)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def _count_measured_tokens(trainer: ESRDistillTrainer, result: RunResult) -> None:
    """Add the tokens of every guard measurement's rollouts to `result.tokens_measured`."""
    for callback in trainer.callback_handler.callbacks:
        if isinstance(callback, ESRDiagnosticsCallback):
            measure = callback.measure

            def counted_measure(measure=measure):
                stats = measure()
                result.tokens_measured += int(stats.mask.sum())
                return stats

            callback.measure = counted_measure


def _check_frozen(teacher: PreTrainedModel) -> None:
    """The shared teacher must not change between runs: frozen and in eval mode (see `DistillInputs`)."""
    if teacher.training or any(parameter.requires_grad for parameter in teacher.parameters()):
        raise ValueError("The teacher is shared by every run: freeze it (`requires_grad_(False)`) and call `eval()`.")


def distill(run: DistillRun, inputs: DistillInputs, settings: DistillSettings) -> tuple[RunResult, PreTrainedModel]:
    """Distil the teacher into the student; returns the measurements and the model the run hands over.

    `run.output_dir` belongs to the demo: a previous demo run's checkpoints there are deleted first (the trainer
    refuses to train over checkpoints it was not told to resume from).
    """
    _check_frozen(inputs.teacher)
    shutil.rmtree(run.output_dir, ignore_errors=True)
    args = ESRConfig(
        output_dir=run.output_dir,
        esr_k=run.k,
        esr_diagnostics_steps=settings.guard_every if run.guard else 0,
        esr_diagnostics_num_rollouts=settings.guard_rollouts,
        esr_diagnostics_greedy=True,  # the guard's signal: sampled measurements were too noisy (docs/demo.md)
        esr_horizon_guard=run.guard,
        max_completion_length=settings.max_completion_length,
        per_device_train_batch_size=settings.batch_size,
        gradient_accumulation_steps=1,
        max_steps=settings.steps,
        learning_rate=settings.learning_rate,
        warmup_steps=max(1, settings.steps // 10),  # Adam's first updates are sign-like: lr-sized noise
        seed=run.seed,
        use_cpu=settings.use_cpu,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",  # the guard saves its best checkpoint whatever this says
        save_only_model=True,
        report_to="none",
    )
    trainer = ESRDistillTrainer(
        model=inputs.student_path,
        teacher_model=inputs.teacher,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": inputs.prompts}),
        processing_class=inputs.tokenizer,
    )
    result = RunResult(method=run.method, seed=run.seed, k=run.k, guard=run.guard)
    _count_measured_tokens(trainer, result)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_QuietProgress)
    trainer.add_callback(_AccuracyCurve(inputs.evaluate, settings.eval_every, result))
    trainer.train()

    logs = trainer.state.log_history
    step_logs = [log for log in logs if "esr/tokens_generated" in log]
    result.tokens_generated = int(sum(log["esr/tokens_generated"] for log in step_logs))
    result.tokens_trained = int(sum(log["esr/tokens_trained"] for log in step_logs))
    result.max_rollout_length = int(max(log["completions/max_length"] for log in step_logs))
    result.rollouts = len(step_logs) * settings.batch_size
    result.kl_beyond_k = [[log["step"], log["esr/kl_beyond_k"]] for log in logs if "esr/kl_beyond_k" in log]
    model = trainer.model
    if run.guard == "stop":
        result.stopped_at = trainer.state.global_step if trainer.state.global_step < settings.steps else None
        best = trainer.state.best_model_checkpoint
        if best:  # the guard's lowest-KL-beyond-k checkpoint: what a user of the guard keeps
            model = AutoModelForCausalLM.from_pretrained(best).to(trainer.model.device)
            result.kept_step = int(best.rsplit("-", 1)[1])
            result.kept_accuracy = inputs.evaluate(model)
    return result, model
