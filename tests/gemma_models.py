"""Tiny models of the paper's cross-family pair (a Gemma-2 student, a Gemma-3 teacher) in their Hub classes, and the
shared vocabulary of two SentencePiece tokenizers built from their pieces' strings: an independent computation the
aligned path's tests check against (tests/test_gemma.py; tests/vllm_engine/test_gemma_vllm.py on a real engine)."""

import torch


def sentencepiece_string_pairs(student, teacher) -> dict[int, int]:
    """Two SentencePiece vocabularies without a dummy prefix, paired from their token strings: added tokens by name,
    then EOS with EOS, then pieces whose text (`▁` a space; `<0xNN>` its byte) is the same, the teacher's first id for
    a text, its byte pieces after its other pieces; real student pieces before byte pieces; one-to-one."""

    def text(piece: str) -> bytes:
        if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            return bytes([int(piece[3:5], 16)])
        return piece.replace("▁", " ").encode()

    def is_byte(item):
        return len(item[0]) == 6 and item[0].startswith("<0x")

    teacher_vocab, specials = teacher.get_vocab(), {i for i, t in teacher.added_tokens_decoder.items() if t.special}
    teacher_by_text = {}
    for piece, i in sorted(teacher_vocab.items(), key=lambda item: (is_byte(item), item[1])):
        if i not in specials:
            teacher_by_text.setdefault(text(piece), i)
    pairs, used = {}, set()
    for student_id, token in sorted(student.added_tokens_decoder.items()):
        if teacher_vocab.get(token.content) is not None and teacher_vocab[token.content] not in used:
            pairs[student_id] = teacher_vocab[token.content]
            used.add(pairs[student_id])
    if student.eos_token_id not in pairs and teacher.eos_token_id not in used:
        pairs[student.eos_token_id] = teacher.eos_token_id
        used.add(teacher.eos_token_id)
    student_specials = {i for i, t in student.added_tokens_decoder.items() if t.special}
    for piece, i in sorted(student.get_vocab().items(), key=lambda item: (is_byte(item), item[1])):
        teacher_id = teacher_by_text.get(text(piece))
        if i not in pairs and i not in student_specials and teacher_id is not None and teacher_id not in used:
            pairs[i] = teacher_id
            used.add(teacher_id)
    return pairs


def gemma_models(student_tokenizer, teacher_tokenizer, student_shape=None) -> dict:
    """Tiny models of the paper's pair in their Hub classes: a Gemma-2 student (`Gemma2ForCausalLM`: final logits
    soft-capped at 30, attention logits at 50, alternating sliding-window layers, tied embeddings) and a Gemma-3
    teacher (`Gemma3ForConditionalGeneration`, a vision-language checkpoint with a one-layer vision tower, as
    Gemma-3-4B is; its head has 262,208 rows, more than the tokenizer's 262,145 ids, as the real one).
    `student_shape` overrides the student's widths (vLLM's CPU attention needs a head size of 32, 64, 80, ...)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3Config, Gemma3ForConditionalGeneration

    shape = dict(num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                 pad_token_id=0, eos_token_id=1, bos_token_id=2)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(0)
        widths = {**dict(hidden_size=16, intermediate_size=32, head_dim=8), **(student_shape or {})}
        student = Gemma2ForCausalLM(Gemma2Config(vocab_size=len(student_tokenizer), **widths, **shape))
        text = dict(vocab_size=262_208, hidden_size=24, intermediate_size=48, head_dim=12, **shape)
        vision = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28,
                      patch_size=14)  # fmt: skip
        teacher = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision,
                                                              mm_tokens_per_image=4))  # fmt: skip
    assert student.config.final_logit_softcapping == 30.0 and len(teacher_tokenizer) < 262_208
    for model, tokenizer in ((student, student_tokenizer), (teacher, teacher_tokenizer)):
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return {"student": student, "teacher": teacher}


def shared_vocabulary_kl(rollouts, pairs: dict[int, int]) -> float:
    """The mean over rollouts of the mean over positions of KL(student || teacher) on the vocabulary `pairs` shares,
    from `helpers.own_forward_logits`' rollouts (one teacher position per student token)."""
    student_ids = torch.tensor(sorted(pairs))
    teacher_ids = torch.tensor([pairs[i] for i in student_ids.tolist()])
    per_rollout = []
    for _, student_logits, teacher_logits in rollouts:
        assert len(teacher_logits) == len(student_logits)
        log_p = torch.log_softmax(student_logits[:, student_ids], dim=-1)
        log_q = torch.log_softmax(teacher_logits[:, teacher_ids], dim=-1)
        per_rollout.append((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    return torch.stack(per_rollout).mean().item()
