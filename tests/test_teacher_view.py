"""The teacher's view of the prompt: its forward pass gets its own rendering, the response tokens stay shared."""

import copy

import pytest
import torch
from datasets import Dataset
from helpers import DivergenceSpy

from trl_esr.demo.tiny_models import CHAT_TEMPLATE, build_tiny_causal_lm, save_pretrained


def capture_input_ids(model) -> list[torch.Tensor]:
    """Record the `input_ids` of every forward call of `model`'s backbone."""
    seen = []
    model.base_model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True
    )
    return seen


def train_one_step(make_trainer, tokenizer, dataset, args, **overrides):
    trainer = make_trainer(args, train_dataset=dataset, processing_class=tokenizer, **overrides)
    student_inputs, teacher_inputs = capture_input_ids(trainer.model), capture_input_ids(trainer.teacher_model)
    spy = DivergenceSpy(trainer)
    trainer.train()
    return student_inputs[-1], teacher_inputs[-1], spy.calls[0]["loss"]


def unpadded(row: torch.Tensor, pad_id: int) -> list[int]:
    return row[row != pad_id].tolist()


@pytest.fixture
def one_prompt_dataset():
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": "w1 w2 w3"}]] * 2})


def test_teacher_template_string(make_trainer, tokenizer, one_prompt_dataset, make_args):
    args = make_args(max_steps=1, esr_k=4, teacher_chat_template=CHAT_TEMPLATE + " w39")
    student_ids, teacher_ids, _ = train_one_step(make_trainer, tokenizer, one_prompt_dataset, args)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "w1 w2 w3"}], add_generation_prompt=True)
    completion = student_ids[0, -4:].tolist()
    assert unpadded(student_ids[0], tokenizer.pad_token_id) == prompt["input_ids"] + completion
    assert teacher_ids[0].tolist() == prompt["input_ids"] + [tokenizer.convert_tokens_to_ids("w39")] + completion


def test_template_kwargs_like_qwen3_non_thinking(make_trainer, tokenizer, one_prompt_dataset, make_args):
    # A template that, like Qwen3's, opens an empty thinking block when `enable_thinking=False`.
    thinking = copy.deepcopy(tokenizer)
    thinking.chat_template = CHAT_TEMPLATE.replace(
        "<|assistant|>{% endif %}", "<|assistant|>{% if enable_thinking is false %} w38 w39{% endif %}{% endif %}"
    )
    args = make_args(max_steps=1, esr_k=4, teacher_chat_template_kwargs={"enable_thinking": False})
    student_ids, teacher_ids, _ = train_one_step(make_trainer, thinking, one_prompt_dataset, args)
    think_block = tokenizer.convert_tokens_to_ids(["w38", "w39"])
    assert teacher_ids[0].tolist() == unpadded(student_ids[0], tokenizer.pad_token_id)[:-4] + think_block + \
        student_ids[0, -4:].tolist()  # fmt: skip


def test_teachers_own_template(make_trainer, tokenizer, one_prompt_dataset, make_args, tmp_path):
    teacher_tokenizer = copy.deepcopy(tokenizer)
    teacher_tokenizer.chat_template = CHAT_TEMPLATE.replace("prompt %}<|assistant|>", "prompt %}<|system|>")
    teacher = save_pretrained(build_tiny_causal_lm(teacher_tokenizer, "llama", seed=1), teacher_tokenizer,
                              tmp_path / "teacher")  # fmt: skip
    args = make_args(max_steps=1, esr_k=4, teacher_chat_template="teacher")
    student_ids, teacher_ids, _ = train_one_step(
        make_trainer, tokenizer, one_prompt_dataset, args, teacher_model=teacher
    )
    assert tokenizer.convert_tokens_to_ids("<|system|>") in teacher_ids[0].tolist()
    assert tokenizer.convert_tokens_to_ids("<|system|>") not in student_ids[0].tolist()
    assert torch.equal(teacher_ids[:, -4:], student_ids[:, -4:])


def test_same_rendering_gives_the_same_loss(make_trainer, tokenizer, train_dataset, make_args):
    """The teacher view with the student's own template must reproduce the default path exactly."""
    _, _, default_loss = train_one_step(make_trainer, tokenizer, train_dataset, make_args(max_steps=1))
    args = make_args(max_steps=1, teacher_chat_template=CHAT_TEMPLATE)
    _, _, view_loss = train_one_step(make_trainer, tokenizer, train_dataset, args)
    assert view_loss.item() == pytest.approx(default_loss.item(), rel=1e-6)
    args = make_args(max_steps=1, teacher_chat_template=CHAT_TEMPLATE + " w39")
    _, _, other_loss = train_one_step(make_trainer, tokenizer, train_dataset, args)
    assert other_loss.item() != pytest.approx(default_loss.item(), rel=1e-4)


def test_plain_text_prompts_are_refused(make_trainer, make_args):
    dataset = Dataset.from_dict({"prompt": ["w1 w2", "w3 w4"]})
    with pytest.raises(ValueError, match="apply to chat prompts"):
        make_trainer(make_args(teacher_chat_template_kwargs={"x": 1}), train_dataset=dataset)


def test_diagnostics_score_with_the_teachers_view(make_trainer, tokenizer, one_prompt_dataset, make_args):
    args = make_args(max_steps=2, esr_k=4, teacher_chat_template=CHAT_TEMPLATE + " w39", esr_diagnostics_steps=2,
                     esr_diagnostics_num_rollouts=2)  # fmt: skip
    trainer = make_trainer(args, train_dataset=one_prompt_dataset)
    teacher_inputs = capture_input_ids(trainer.teacher_model)
    trainer.train()
    logged = [entry for entry in trainer.state.log_history if "esr/kl_within_k" in entry]
    assert [entry["step"] for entry in logged] == [2]
    w39 = tokenizer.convert_tokens_to_ids("w39")
    diagnostics_forward = teacher_inputs[-1]  # the callback's scoring pass comes after the last training step
    assert diagnostics_forward.size(1) > 24 and w39 in diagnostics_forward[0].tolist()
