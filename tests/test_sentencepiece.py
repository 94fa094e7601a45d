"""A real SentencePiece vocabulary through the aligned path: Mistral-7B-v0.3's (tests/real_tokenizers.py).

SentencePiece tokenizers (Llama 2, Mistral, Phi-3, Gemma) differ from the byte-level BPE ones the other real-vocabulary
tests use: spaces are part of the following piece (`▁The`), bytes without a piece are `<0xNN>` pieces, and with a dummy
prefix the decoder drops the first space of a text (a response's `▁The` reads `The`). Two bugs hid there, each
checked below against a computation that does not use the code under test:

- Pieces were paired with the other vocabulary in id order, so the byte piece `<0x33>` (id 54) took the teacher's
  `3` and the piece `3` (id 29,538), the one a model writes, stayed out of the KL: every digit of a math answer.
- The response's text kept the first piece's space: the teacher read " The cat" after its prompt, and at the first
  position the student's `▁The` was compared with the teacher's ` The`, a token it does not write there.
"""

import pytest
import sentencepiece
import torch
from helpers import cross_tokenizer_step
from real_tokenizers import TEXTS, mistral_model_data
from transformers.convert_slow_tokenizer import bytes_to_unicode

from trl_esr.cross_tokenizer import SharedVocabulary


WORDS = ["▁The", "▁the", "▁cat", "▁sat", "▁on", "▁mat"]  # one piece each; Qwen has "The", " The", " cat", ...


def test_the_tokenizer_encodes_as_sentencepiece_itself(vocabularies):
    """transformers' conversion gives SentencePiece's own ids and text, except on runs of spaces, where the converted
    BPE merges differently (the same text either way; TRL samples with the converted tokenizer)."""
    tokenizer = vocabularies["mistral"]
    reference = sentencepiece.SentencePieceProcessor(model_proto=mistral_model_data())
    for name, text in TEXTS.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        decoded = tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        assert decoded == reference.decode(reference.encode(text)) == text, name
        if "  " not in text:
            assert ids == reference.encode(text), name


def _pairs(student, teacher) -> tuple[dict[int, int], dict[int, int]]:
    shared = SharedVocabulary.build(student, teacher)
    first = (shared.first_student_ids, shared.first_teacher_ids) if shared.first_student_ids is not None else ([], [])
    as_dict = lambda ids: dict(zip(*(torch.as_tensor(i).tolist() for i in ids), strict=True))  # noqa: E731
    return as_dict((shared.student_ids, shared.teacher_ids)), as_dict(first)


@pytest.mark.parametrize("student_name, teacher_name", [("mistral", "qwen3"), ("llama3", "mistral")])
def test_pieces_pair_with_the_token_a_model_writes_not_a_byte_piece(vocabularies, student_name, teacher_name):
    """Every digit and ASCII letter is paired with the other vocabulary's token of that character (its own piece in
    SentencePiece, not the byte piece `<0xNN>` that adds the same byte)."""
    student, teacher = vocabularies[student_name], vocabularies[teacher_name]
    pairs, _ = _pairs(student, teacher)
    for char in "0123456789abcdefxyzABCXYZ":
        assert pairs.get(student.convert_tokens_to_ids(char)) == teacher.convert_tokens_to_ids(char), char
    newline = "<0x0A>" if student_name == "mistral" else "Ċ"  # Mistral has no piece for "\n": its byte piece is it
    assert teacher.convert_ids_to_tokens(pairs[student.convert_tokens_to_ids(newline)]) == (
        "Ċ" if student_name == "mistral" else "<0x0A>")  # fmt: skip


def test_the_first_position_pairs_word_starts_without_their_space(vocabularies):
    """A Mistral student's response starts with `▁The`, which reads `The`: at the first position it is paired with the
    teacher's `The`, later with ` The`. Checked by the student decoder's own text for every paired piece."""
    student, teacher = vocabularies["mistral"], vocabularies["qwen3"]
    pairs, first = _pairs(student, teacher)
    the = student.convert_tokens_to_ids("▁The")
    assert teacher.convert_ids_to_tokens([pairs[the], first[the]]) == ["ĠThe", "The"]
    assert student.convert_tokens_to_ids("The") not in first  # glued to the prompt: not a response's first token
    specials = set(student.added_tokens_decoder) | {student.eos_token_id}
    alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
    for student_id, teacher_id in first.items():
        if student_id in specials:
            continue
        alone = student.decode([student_id])  # the decoder drops the first space
        assert bytes(alphabet[c] for c in teacher.convert_ids_to_tokens(teacher_id)) == alone.encode(), student_id
    assert len(first) > 8000  # Mistral's word-start pieces


def test_a_stripping_teacher_is_read_at_the_first_position_as_it_tokenizes_a_response(vocabularies):
    """A Llama-3 student <- Mistral teacher: the teacher tokenizes a response "The cat" as `▁The ▁cat` (its dummy
    prefix), so at the first position the student's `The` is paired with `▁The`, later with the piece `The`. Checked
    against the teacher's own tokenization of each word as a whole response."""
    student, teacher = vocabularies["llama3"], vocabularies["mistral"]
    pairs, first = _pairs(student, teacher)
    for word in ["The", "What", "Hello", "cat", "(", "."]:
        (student_id,) = student(word, add_special_tokens=False)["input_ids"]
        (teacher_first, *_) = teacher(word, add_special_tokens=False)["input_ids"]
        assert first[student_id] == teacher_first, word
        assert teacher.convert_ids_to_tokens(teacher_first).startswith("▁"), word
        assert teacher.convert_ids_to_tokens(pairs[student_id]) == word, word  # mid-text: the piece without `▁`
    assert student.convert_tokens_to_ids("ĠThe") not in first  # `▁The` is taken by "The" there
    assert len(first) > 8000


def test_a_stripping_teacher_is_paired_at_the_first_position_only_with_what_starts_its_responses(vocabularies):
    """A Mistral teacher starts every response with a space-led piece or an added token: "3 apples" is `▁`, `3`,
    `▁ap`, `ples`, so it never reads its piece `3` first. The student's first `3` was paired with that `3`, to which
    the teacher gives next to nothing there: digit-first (and newline-, CJK-first) answers were trained away. Now
    unpaired there, like the teacher's lone `▁`. Checked against the teacher's own tokenization of each text."""
    student, teacher = vocabularies["llama3"], vocabularies["mistral"]
    _, first = _pairs(student, teacher)
    for text in ["3 apples", "\nThe answer", "你好", "2 + 2 = 4"]:
        teacher_first = teacher(text, add_special_tokens=False)["input_ids"][0]
        assert teacher.convert_ids_to_tokens(teacher_first) == "▁", text  # the lone space, then the character
        student_first = student(text, add_special_tokens=False)["input_ids"][0]
        assert student_first not in first, (text, teacher.convert_ids_to_tokens(first.get(student_first)))
    added = set(teacher.added_tokens_decoder)
    pieces = teacher.convert_ids_to_tokens([teacher_id for teacher_id in first.values() if teacher_id not in added])
    assert all(len(piece) > 1 and piece.startswith("▁") for piece in pieces)
    assert len(pieces) > 8000  # the word-start pieces are all still there


def _string_pairs(student, teacher, first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The shared vocabulary from token strings: a SentencePiece piece's text is its string with `▁` for a space (at
    the first position: space-led pieces only, less that space), a byte piece `<0xNN>` the byte, a byte-level token's
    the bytes of its characters; added tokens by name, then EOS with EOS; each teacher token at most once, real pieces
    before byte pieces."""
    alphabet = {char: byte for byte, char in bytes_to_unicode().items()}
    added, teacher_vocab = set(student.added_tokens_decoder), teacher.get_vocab()
    teacher_added = teacher.added_tokens_decoder
    teacher_by_bytes = {}
    for token, i in sorted(teacher_vocab.items(), key=lambda item: item[1]):
        if i not in teacher_added:
            teacher_by_bytes.setdefault(bytes(alphabet[c] for c in token), i)
    pairs, used = {}, set()
    for student_id, token in sorted(student.added_tokens_decoder.items()):
        if token.content in teacher_vocab:
            pairs[student_id] = teacher_vocab[token.content]
            used.add(pairs[student_id])
    if student.eos_token_id not in pairs and teacher.eos_token_id not in used:
        pairs[student.eos_token_id] = teacher.eos_token_id
        used.add(teacher.eos_token_id)
    vocab = sorted(student.get_vocab().items(), key=lambda item: (item[0].startswith("<0x"), item[1]))
    for piece, i in vocab:
        if i in added or i in pairs:
            continue
        if piece.startswith("<0x") and len(piece) == 6:
            data = bytes([int(piece[3:5], 16)]) if not first else b""
        elif first:
            data = piece[1:].replace("▁", " ").encode() if piece.startswith("▁") else b""
        else:
            data = piece.replace("▁", " ").encode()
        teacher_id = teacher_by_bytes.get(data) if data else None
        if teacher_id is not None and teacher_id not in used:
            pairs[i] = teacher_id
            used.add(teacher_id)
    student_ids = sorted(pairs)
    return torch.tensor(student_ids), torch.tensor([pairs[i] for i in student_ids])


def test_a_mistral_student_with_a_qwen3_teacher_gives_the_kl_computed_by_hand(vocabularies, make_args, tmp_path):
    """Mistral student <- Qwen3 teacher, rollouts of k whole-word pieces starting with a space-led one: the loss is
    the mean over rollouts of the mean over k positions of KL(student || teacher) on the tokens both spell alike, the
    first position with the student's pieces read as its decoder writes them there. Computed from each model's own
    forward on its own tokens (`helpers.cross_tokenizer_step`)."""
    student_tokenizer, teacher_tokenizer, k = vocabularies["mistral"], vocabularies["qwen3"], 5
    allowed = {student_tokenizer.convert_tokens_to_ids(word) for word in WORDS}
    loss, rollouts = cross_tokenizer_step(student_tokenizer, teacher_tokenizer, allowed, k, make_args, tmp_path)
    pairs = _string_pairs(student_tokenizer, teacher_tokenizer, first=False)
    first_pairs = _string_pairs(student_tokenizer, teacher_tokenizer, first=True)
    per_rollout = []
    for completion, student_logits, teacher_logits in rollouts:
        assert student_tokenizer.convert_ids_to_tokens(completion[0]).startswith("▁")
        assert not student_tokenizer.decode(completion).startswith(" ")  # "The cat sat", not " The cat sat"
        assert len(teacher_logits) == k  # whole words: one teacher token per student piece
        kl = []
        for t in range(k):
            student_ids, teacher_ids = first_pairs if t == 0 else pairs
            log_p = torch.log_softmax(student_logits[t, student_ids], dim=-1)
            log_q = torch.log_softmax(teacher_logits[t, teacher_ids], dim=-1)
            kl.append((log_p.exp() * (log_p - log_q)).sum())
        per_rollout.append(torch.stack(kl).mean())
    assert loss == pytest.approx(torch.stack(per_rollout).mean().item(), rel=1e-4)
