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


QUESTIONS = ["What is 2 + 3?", "Name a cat.", "Is it on?", "Where is the mat, and who sat on it?"]


def tiny_pair(student_tokenizer, teacher_tokenizer, tmp_path, student_shape=None, models=None,
              head_scale: float = 30.0) -> dict[str, str]:  # fmt: skip
    """Tiny Llama-style student and teacher with two real vocabularies (or the given `models`), saved; heads scaled
    by `head_scale` for peaked distributions (near-uniform ones weigh every logit alike, aligned or not).
    `student_shape`: keyword arguments of the student's `build_tiny_causal_lm` (vLLM needs a head size it supports)."""
    from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained

    paths = {}
    shapes = {"student": student_shape or dict(hidden_size=16), "teacher": dict(hidden_size=24)}
    for seed, (name, tokenizer) in enumerate([("student", student_tokenizer), ("teacher", teacher_tokenizer)]):
        model = models[name] if models else build_tiny_causal_lm(tokenizer, "llama", seed=seed, **shapes[name])
        with torch.no_grad():
            model.get_output_embeddings().weight.mul_(head_scale)  # a tied head scales its embeddings too
        paths[name] = save_pretrained(model, tokenizer, tmp_path / name)
    return paths


def own_forward_logits(paths, student_tokenizer, teacher_tokenizer, batches, allowed: set[int], k: int) -> list:
    """Per rollout of the recorded `batches`, each model's logits from its own forward on its own tokens: the student
    on its prompt and rollout, the teacher on its own chat-template rendering of the question and the response text
    (as the student's tokenizer decodes it), tokenized by the teacher. `(completion ids, student logits (k, V_s),
    teacher logits (T, V_t))` per rollout; each rollout must have k tokens, all in `allowed`."""
    from transformers import AutoModelForCausalLM

    student_lm = AutoModelForCausalLM.from_pretrained(paths["student"]).eval()
    teacher_lm = AutoModelForCausalLM.from_pretrained(paths["teacher"]).eval()
    rollouts = []
    for batch in batches:
        for prompt, mask, completion in zip(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                            strict=True):  # fmt: skip
            prompt, completion = prompt[mask.bool()].tolist(), completion.tolist()
            assert len(completion) == k and set(completion) <= allowed
            (question,) = [q for q in QUESTIONS if q in student_tokenizer.decode(prompt)]
            rendered = teacher_tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
            )  # a teacher with another tokenizer reads its own rendering of the prompt
            teacher_prompt = teacher_tokenizer(rendered, add_special_tokens=False)["input_ids"]
            response = student_tokenizer.decode(completion)
            teacher_response = teacher_tokenizer(response, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                student_logits = student_lm(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
                teacher_logits = teacher_lm(torch.tensor([teacher_prompt + teacher_response])).logits[
                    0, len(teacher_prompt) - 1 : -1]  # fmt: skip
            rollouts.append((completion, student_logits.float(), teacher_logits.float()))
    return rollouts


def question_prompts():
    from datasets import Dataset

    return Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in QUESTIONS]})


def cross_tokenizer_step(student_tokenizer, teacher_tokenizer, allowed: set[int], k: int, make_args, tmp_path,
                         models=None):  # fmt: skip
    """One ESR step (k tokens, learning rate 0, HF generate) of a `tiny_pair`, the student sampling only `allowed`
    ids, four one-question prompts. Returns the loss our code computed and `own_forward_logits` of its rollouts."""
    from trl_esr import ESRDistillTrainer

    paths = tiny_pair(student_tokenizer, teacher_tokenizer, tmp_path, models=models)
    suppressed = [i for i in range(len(student_tokenizer)) if i not in allowed]
    args = make_args(max_steps=1, esr_k=k, learning_rate=0.0, per_device_train_batch_size=4, esr_diagnostics_steps=0,
                     generation_kwargs={"suppress_tokens": suppressed})  # fmt: skip
    trainer = ESRDistillTrainer(
        model=paths["student"], teacher_model=paths["teacher"], args=args, train_dataset=question_prompts(),
        processing_class=student_tokenizer, teacher_processing_class=teacher_tokenizer,
    )  # fmt: skip
    assert trainer._pairing.mode == "aligned"
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    trainer.train()
    assert trainer.state.log_history[0]["esr/aligned_fraction"] == 1.0
    (call,) = spy.calls
    return call["loss"].item(), own_forward_logits(paths, student_tokenizer, teacher_tokenizer, batches, allowed, k)
