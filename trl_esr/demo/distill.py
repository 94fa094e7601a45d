"""One distillation run (full rollout or ESR) with `ESRDistillTrainer`, evaluated on the held-out split as it trains.

Both methods go through the same function with the same student initialisation, seed, data order and number of
optimizer steps; only `esr_k` differs. Wall-clock time is measured from the first to the last optimizer step and
excludes the time spent evaluating.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerFast, TrainerCallback
from transformers.trainer_callback import ProgressCallback

from trl_esr import ESRConfig, ESRDistillTrainer


@dataclass
class RunResult:
    """What one distillation run measured. Token counts are summed from the trainer's own `esr/*` logs."""

    method: str
    k: int | None
    curve: list[dict] = field(default_factory=list)  # {"step", "train_seconds", "accuracy"}
    tokens_generated: int = 0
    tokens_trained: int = 0
    max_rollout_length: int = 0
    rollouts: int = 0

    @property
    def final_accuracy(self) -> float:
        return self.curve[-1]["accuracy"]

    @property
    def wall_seconds(self) -> float:
        return self.curve[-1]["train_seconds"]


class _AccuracyCurve(TrainerCallback):
    """Evaluate at the start and every `every` optimizer steps, keeping a training-only stopwatch."""

    def __init__(self, evaluate: Callable[[PreTrainedModel], float], every: int, result: RunResult):
        self.evaluate, self.every, self.result = evaluate, every, result

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._start, self._eval_seconds = time.perf_counter(), 0.0
        self._record(0, model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self._record(state.global_step, model)

    def _record(self, step: int, model: PreTrainedModel) -> None:
        now = time.perf_counter()
        train_seconds = now - self._start - self._eval_seconds
        accuracy = self.evaluate(model)
        self._eval_seconds += time.perf_counter() - now
        self.result.curve.append({"step": step, "train_seconds": train_seconds, "accuracy": accuracy})


class _QuietProgress(ProgressCallback):
    """TRL's progress bar without the dict it prints at every logging step (we log every step to count tokens)."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        pass


def distill(
    method: str,
    k: int | None,
    student_path: str,
    teacher_path: str,
    tokenizer: PreTrainedTokenizerFast,
    prompts: list[list[dict]],
    evaluate: Callable[[PreTrainedModel], float],
    eval_every: int,
    max_completion_length: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    use_cpu: bool,
    output_dir: str,
) -> tuple[RunResult, PreTrainedModel]:
    """Distil the teacher into the student for `steps` optimizer steps; returns the measurements and the student."""
    args = ESRConfig(
        output_dir=output_dir,
        esr_k=k,
        max_completion_length=max_completion_length,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=1,
        max_steps=steps,
        learning_rate=learning_rate,
        warmup_steps=max(1, steps // 10),  # Adam's first updates are sign-like: lr-sized noise on a trained student
        seed=seed,
        use_cpu=use_cpu,
        bf16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
    )
    trainer = ESRDistillTrainer(
        model=student_path,
        teacher_model=teacher_path,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    result = RunResult(method=method, k=k)
    trainer.remove_callback(ProgressCallback)
    trainer.add_callback(_QuietProgress)
    trainer.add_callback(_AccuracyCurve(evaluate, eval_every, result))
    trainer.train()

    step_logs = [log for log in trainer.state.log_history if "esr/tokens_generated" in log]
    result.tokens_generated = int(sum(log["esr/tokens_generated"] for log in step_logs))
    result.tokens_trained = int(sum(log["esr/tokens_trained"] for log in step_logs))
    result.max_rollout_length = int(max(log["completions/max_length"] for log in step_logs))
    result.rollouts = steps * batch_size
    return result, trainer.model
