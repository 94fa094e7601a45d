"""`ESRDiagnosticsCallback`: watch, during training, how the teacher-student KL splits at the rollout horizon k.

ESR trains only on each rollout's first k tokens, so the training loss says nothing about the rest of a response. Every
few optimizer steps this callback samples full-length student rollouts from a fixed prompt set and logs the mean
reverse KL before and after k: if `esr/kl_beyond_k` stays high while `esr/kl_within_k` falls, the student has learned
the start of responses only; if both fall, what it learned early carries over to the rest.
"""

import copy
import random
from dataclasses import fields
from typing import NamedTuple

import torch
from transformers import TrainerCallback

from .._trl_compat import chat_template_options, generation_config, metrics, stop_token_ids
from ..config import ESRConfig
from .per_position import PositionStats, sample_completions, score_completions, seeded_sampling
from .prompts import prompt_from_row, tokenize_prompts


# The config's defaults (`esr_diagnostics_steps`, `esr_diagnostics_num_rollouts`; see their help for the cost).
_CONFIG_DEFAULTS = {field.name: field.default for field in fields(ESRConfig)}
DEFAULT_EVERY_N_STEPS = _CONFIG_DEFAULTS["esr_diagnostics_steps"]
DEFAULT_NUM_ROLLOUTS = _CONFIG_DEFAULTS["esr_diagnostics_num_rollouts"]


def sharded_student(trainer) -> bool:
    """Whether the student's weights are sharded across processes (FSDP, DeepSpeed ZeRO-3): then no process can run
    `generate` on its own copy, as the measuring callbacks do."""
    return bool(
        trainer.is_fsdp_enabled
        or (trainer.is_deepspeed_enabled and trainer.accelerator.state.deepspeed_plugin.zero_stage == 3)
    )


def unavailable_reason(trainer) -> str | None:
    """Why the callback cannot measure on `trainer`, or `None` if it can. `ESRDistillTrainer` leaves the callback off
    (with a warning) for these; built by hand, the callback refuses them."""
    if sharded_student(trainer):
        return "the student is sharded (FSDP or DeepSpeed ZeRO-3), and each process generates with its own copy"
    dataset = trainer.train_dataset
    if dataset is None or not hasattr(dataset, "__len__") or not hasattr(dataset, "__getitem__"):
        return "the training set is a stream (or missing): the prompts are drawn from a map-style `train_dataset`"
    return None


class KLMeasurement(NamedTuple):
    """One measurement: the step it was taken at, the horizon k it splits at, and the two means."""

    step: int
    k: int | None
    kl_within_k: float
    kl_beyond_k: float | None


class ESRDiagnosticsCallback(TrainerCallback):
    """Log `esr/kl_within_k` and `esr/kl_beyond_k` every `every_n_steps` optimizer steps.

    Both are token-weighted means of the reverse KL(student ‖ teacher) (untempered logits) over `num_rollouts`
    full-length student rollouts (`max_completion_length` tokens, sampled with the trainer's generation settings):
    over response positions < k, and ≥ k, where k = `esr_k_at_step(args, global_step)` (grown by `ESRHorizonGuard`,
    if any) is the horizon of the next training step. Without a horizon (`esr_k=None`), `kl_within_k` covers every
    position and `kl_beyond_k` is not logged. The metrics are logged at the step they are measured, in the same
    `log_history` entry as the loss; the last measurement is also kept in `latest` (a `KLMeasurement`).

    The prompts are drawn once from the training set with `seed`, and every measurement samples with that same seed,
    so successive values differ because the student changed, not because the rollouts did. Sampling runs under a
    forked RNG, so training's own random stream is unchanged. Each process measures on its own copy of the models
    (identical values, no collective calls): data parallelism works, sharded students (FSDP, DeepSpeed ZeRO-3) are
    not supported. Rollouts use HF `generate` on the unwrapped student even when training uses vLLM; text-only models
    (`processing_class` is a tokenizer).

    With `greedy` (`ESRConfig.esr_diagnostics_greedy`), the rollouts are greedy instead: no sampling noise at all,
    and the policy most evaluations decode. On the demo's early-decision regime that is what made the KL beyond k
    follow the student's drift (docs/choosing-k.md, "The horizon guard").

    Args:
        trainer: the [`ESRDistillTrainer`] to watch (its `train_dataset`, `teacher_model`, generation settings).
        every_n_steps: measure when `global_step` is a multiple of this.
        num_rollouts: prompts (one rollout each) in the fixed set.
        batch_size: rollouts generated and scored at once; defaults to `num_rollouts`, at most
            `max(8, per_device_train_batch_size)` (training already generates that many at once): one generation
            call per measurement where it fits, since each call pays a per-token cost whatever its batch.
        seed: seed of the prompt draw and of sampling; defaults to `trainer.args.seed`.
        greedy: greedy rollouts; defaults to `trainer.args.esr_diagnostics_greedy`.
    """

    def __init__(
        self,
        trainer,
        every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        num_rollouts: int = DEFAULT_NUM_ROLLOUTS,
        batch_size: int | None = None,
        seed: int | None = None,
        greedy: bool | None = None,
    ):
        if batch_size is None:
            batch_size = min(num_rollouts, max(8, trainer.args.per_device_train_batch_size))
        for name, value in (
            ("every_n_steps", every_n_steps),
            ("num_rollouts", num_rollouts),
            ("batch_size", batch_size),
        ):
            if value <= 0:
                raise ValueError(f"`{name}` must be a positive integer, got {value}.")
        reason = unavailable_reason(trainer)
        if reason is not None:
            raise ValueError(f"ESRDiagnosticsCallback cannot measure here: {reason}. Leave it off for this run.")
        dataset = trainer.train_dataset
        self.trainer = trainer
        self.every_n_steps = every_n_steps
        self.batch_size = batch_size
        self.seed = trainer.args.seed if seed is None else seed
        self.greedy = getattr(trainer.args, "esr_diagnostics_greedy", False) if greedy is None else greedy
        indices = random.Random(self.seed).sample(range(len(dataset)), min(num_rollouts, len(dataset)))
        prompts = [prompt_from_row(dataset[i]) for i in indices]
        self.prompt_ids = tokenize_prompts(trainer.processing_class, prompts, **chat_template_options(trainer))
        self.latest: KLMeasurement | None = None  # read by `ESRHorizonGuard`
        self.teacher_prompt_ids = None  # the teacher's own rendering, when the trainer gives it one
        if trainer.teacher_prompt_renderer is not None:
            self.teacher_prompt_ids = trainer.teacher_prompt_renderer.prompt_ids(prompts)

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every_n_steps != 0:
            return control
        k = self.trainer._k_at_step(state.global_step)  # the schedule's k, grown by the horizon guard if any
        stats = self.measure()
        within, beyond = kl_within_and_beyond(stats, k)
        self.latest = KLMeasurement(state.global_step, k, within, beyond)
        logged = metrics(self.trainer, "train")
        logged["esr/kl_within_k"].append(within)
        if beyond is not None:
            logged["esr/kl_beyond_k"].append(beyond)
        control.should_log = True  # log at this step even if it is off the `logging_steps` grid
        return control

    def measure(self) -> PositionStats:
        """Sample the fixed prompts' full-length rollouts and score them; the student's train/eval mode is restored."""
        trainer = self.trainer
        student = trainer.accelerator.unwrap_model(trainer.model)  # a PeftModel stays a PeftModel
        teacher = trainer.accelerator.unwrap_model(trainer.teacher_model)
        sampling = copy.deepcopy(generation_config(trainer))  # the trainer's sampling settings, full length
        sampling.max_new_tokens = trainer.args.max_completion_length
        if self.greedy:  # unset the sampling knobs too, or `generate` warns that they are ignored
            sampling.do_sample, sampling.temperature, sampling.top_p, sampling.top_k, sampling.min_p = (
                False, None, None, None, None,
            )  # fmt: skip
        # Cut where TRL cuts its rollouts: after the first of its stop ids (the student's generation-config EOS list
        # and the tokenizer's), even if `generation_kwargs` gave `generate` another `eos_token_id`.
        eos_ids = stop_token_ids(trainer)
        pad_token_id = sampling.pad_token_id
        was_training = student.training
        try:
            with seeded_sampling(self.seed, student.device):
                completions = sample_completions(
                    student, self.prompt_ids, sampling, pad_token_id, eos_ids, self.batch_size, False
                )
            return score_completions(
                student, teacher, self.prompt_ids, completions, pad_token_id, self.batch_size, False,
                teacher_prompt_ids=self.teacher_prompt_ids,
            )  # fmt: skip
        finally:
            student.train(was_training)


def kl_within_and_beyond(stats: PositionStats, k: int | None) -> tuple[float, float | None]:
    """Token-weighted mean reverse KL at response positions < k and ≥ k (`None`: k is None or no rollout reaches k)."""
    positions = torch.arange(stats.mask.size(1))  # (T,)
    horizon = stats.mask.size(1) if k is None else k
    within = stats.mask & (positions < horizon)  # (N, T)
    beyond = stats.mask & (positions >= horizon)  # (N, T)
    mean_within = (stats.reverse_kl * within).sum() / within.sum()
    if k is None or not beyond.any():
        return mean_within.item(), None
    return mean_within.item(), ((stats.reverse_kl * beyond).sum() / beyond.sum()).item()
