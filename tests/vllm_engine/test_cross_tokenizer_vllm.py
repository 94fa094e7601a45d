"""A teacher with another tokenizer, the student's rollouts from a real colocated vLLM engine: the aligned path runs
after generation, so vLLM's completions must feed it exactly as HF `generate`'s do. Llama-3's real vocabulary for the
student (128,256 ids, served by vLLM), Qwen3's for the teacher; the loss is checked against a KL computed by hand from
each model's own forward (`helpers.own_forward_logits`) on a pairing built from the token strings."""

import pytest
import torch
from engine_checks import pair_trainer
from helpers import DivergenceSpy, own_forward_logits, record_batches, tiny_pair


# Whole-word tokens both byte-level vocabularies spell alike, so the teacher reads each as one token
WORDS = ["ĠThe", "Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat", "Ġanswer", "Ġis"]
K = 5


def _string_pairs(student, teacher) -> tuple[torch.Tensor, torch.Tensor]:
    """Two byte-level BPE vocabularies (one byte alphabet): added tokens by name, then EOS with EOS, then tokens with
    the same string; one-to-one."""
    teacher_vocab, teacher_added = teacher.get_vocab(), set(teacher.added_tokens_decoder)
    added = student.added_tokens_decoder
    pairs = {i: teacher_vocab[t.content] for i, t in added.items() if t.content in teacher_vocab}
    if student.eos_token_id not in pairs and teacher.eos_token_id not in pairs.values():
        pairs[student.eos_token_id] = teacher.eos_token_id
    used = set(pairs.values())
    for token, i in student.get_vocab().items():
        j = teacher_vocab.get(token)
        if i not in pairs and i not in added and j is not None and j not in teacher_added:
            if j not in used:
                pairs[i] = j
                used.add(j)
    student_ids = sorted(pairs)
    return torch.tensor(student_ids), torch.tensor([pairs[i] for i in student_ids])


def test_vllm_rollouts_of_a_llama3_student_train_against_a_qwen3_teacher(
    vocabularies, make_vllm_args, tmp_path, engine_calls
):
    student_tokenizer, teacher_tokenizer = vocabularies["llama3"], vocabularies["qwen3"]
    paths = tiny_pair(student_tokenizer, teacher_tokenizer, tmp_path, student_shape=dict(hidden_size=64, num_heads=2))
    allowed = {student_tokenizer.convert_tokens_to_ids(word) for word in WORDS}
    sampling = {"allowed_token_ids": sorted(allowed)}  # vLLM's: only these words, never EOS
    args = make_vllm_args(esr_k=K, max_steps=1, learning_rate=0.0, generation_kwargs=sampling)
    trainer = pair_trainer(paths, student_tokenizer, teacher_tokenizer, args, mode="aligned")
    calls = engine_calls(trainer)
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    trainer.train()

    assert calls == [K]  # one engine call, capped at k
    assert trainer.state.log_history[0]["esr/aligned_fraction"] == 1.0
    rollouts = own_forward_logits(paths, student_tokenizer, teacher_tokenizer, batches, allowed, K)
    student_ids, teacher_ids = _string_pairs(student_tokenizer, teacher_tokenizer)
    per_rollout = []
    for _, student_logits, teacher_logits in rollouts:
        assert len(teacher_logits) == K  # whole words: one teacher token per student token
        log_p = torch.log_softmax(student_logits[:, student_ids], dim=-1)
        log_q = torch.log_softmax(teacher_logits[:, teacher_ids], dim=-1)
        per_rollout.append((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    (call,) = spy.calls
    assert call["loss"].item() == pytest.approx(torch.stack(per_rollout).mean().item(), rel=1e-4)
