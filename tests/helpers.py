"""Test helpers: a spy on the trainer's divergence, a reverse KL written straight from its definition, lookups of a
trainer's callbacks by type, the fields ESR adds to TRL's config, and a learning rate that jumps mid-run."""

import dataclasses
import inspect

import torch
from transformers import TrainerCallback


class DivergenceSpy:
    """Replaces `trainer._divergence_loss`; records each call's arguments and returned loss, and keeps the gradient of
    the student hidden states it was given (positions aligned with the completion tokens)."""

    def __init__(self, trainer):
        self.inner = trainer._divergence_loss
        self.signature = inspect.signature(self.inner)
        self.calls: list[dict] = []
        trainer._divergence_loss = self

    def __call__(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        call = dict(bound.arguments)
        for head in ("student_lm_head_weight", "teacher_lm_head_weight"):  # the optimizer updates them in place
            call[head] = call[head].detach().clone()
        if call["student_hidden_states"].requires_grad:
            call["student_hidden_states"].retain_grad()
        loss, entropy_sum, num_valid = self.inner(*args, **kwargs)
        call["loss"] = loss.detach().clone()
        self.calls.append(call)
        return loss, entropy_sum, num_valid


def reverse_kl_per_token(call: dict, temperature: float = 1.0) -> torch.Tensor:
    """KL(student || teacher) = sum_v p_s(v) (log p_s(v) - log p_t(v)) at each position, from the recorded hidden
    states and heads: (B, K). Tiny Qwen2/Llama heads have no bias, logit scale or soft-capping."""
    with torch.no_grad():
        student_logits = call["student_hidden_states"] @ call["student_lm_head_weight"].T  # (B, K, V)
        teacher_logits = call["teacher_hidden_states"] @ call["teacher_lm_head_weight"].T  # (B, K, V)
        log_p_student = torch.log_softmax(student_logits.float() / temperature, dim=-1)
        log_p_teacher = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
        return (log_p_student.exp() * (log_p_student - log_p_teacher)).sum(-1)


def record_batches(trainer) -> list[dict]:
    """Record every batch `_generate_and_score_completions` returns (training and evaluation), with the mode."""
    batches, generate = [], trainer._generate_and_score_completions

    def recording(inputs):
        batch = generate(inputs)
        batches.append({**batch, "training": trainer.model.training})
        return batch

    trainer._generate_and_score_completions = recording
    return batches


def callbacks_of(trainer, callback_type: type) -> list:
    """The trainer's callbacks of `callback_type` (subclasses included), in the order they run."""
    return [callback for callback in trainer.callback_handler.callbacks if isinstance(callback, callback_type)]


def esr_fields() -> list[str]:
    """The fields `ESRConfig` adds to TRL's `DistillationConfig`, in declaration order."""
    from trl import DistillationConfig

    from trl_esr import ESRConfig

    trl_fields = {field.name for field in dataclasses.fields(DistillationConfig)}
    return [field.name for field in dataclasses.fields(ESRConfig) if field.name not in trl_fields]


class LearningRateJump(TrainerCallback):
    """From step `step` on, the optimizer's learning rate is `lr` (a schedule gone wrong)."""

    def __init__(self, step, lr):
        self.step, self.lr = step, lr

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if state.global_step + 1 >= self.step:
            for group in optimizer.param_groups:
                group["lr"] = self.lr
