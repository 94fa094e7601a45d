"""Distillation across tokenizers: align a student rollout with the teacher's tokenization by character offsets.

When teacher and student tokenize differently (another family, or the same vocabulary size with another token->string
mapping), the teacher cannot score the student's token ids. Following the paper's authors, each student rollout is
decoded to text, re-tokenized by the teacher, and the two tokenizations are aligned by character offsets:

- a *boundary* is the character position where a token prefix ends: student position t (which predicts token t) sits at
  the end of the text of tokens < t; teacher position j at the end of teacher tokens < j;
- student position t is trained when the teacher has a position at the same boundary: both then predict "the text
  that comes next" from the same prefix;
- both next-token distributions are restricted to the *shared vocabulary* (token ids of the two tokenizers whose
  appended text is identical) and renormalised there; the loss is the same reverse KL as on the fast path.

Example: "w1 w12" is `w1 | w12` for a word-level student and `w | 1 | Ġw | 12` for a byte-level BPE teacher. The
student's boundaries are 0, 2 and 6 (after the end: its EOS position); the teacher's 0, 1, 2, 4 and 6; every student
position is aligned. Swap the roles and the BPE student's positions at 1 and 4 (inside a word) have no teacher match.
"""

from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase


_REPLACEMENT = "\ufffd"  # what a partial UTF-8 byte sequence decodes to


def tokenizers_agree(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> bool:
    """Whether both map the same tokens to the same ids (extra padding rows in a model's head don't matter)."""
    return student.get_vocab() == teacher.get_vocab()


def appended_texts(tokenizer: PreTrainedTokenizerBase) -> list[str | None]:
    """The text each token id adds when it follows other text, or None when that text is not well defined or the id is
    a special token (those are paired by their own name, see `SharedVocabulary.build`).

    Decoding an id alone is not enough: SentencePiece decoders drop a leading space on the first token. Every id is
    decoded after the same anchor token (EOS) and the anchor's text is removed.
    """
    anchor = tokenizer.eos_token_id
    prefix = tokenizer.decode([anchor], skip_special_tokens=False)
    decoded = tokenizer.batch_decode([[anchor, i] for i in range(len(tokenizer))], skip_special_tokens=False)
    special, texts = set(tokenizer.all_special_ids), []
    for token_id, text in enumerate(decoded):
        added = text[len(prefix) :] if text.startswith(prefix) else None
        texts.append(added if added and _REPLACEMENT not in added and token_id not in special else None)
    return texts


@dataclass
class SharedVocabulary:
    """Index tensors of the tokens both tokenizers share: `student_ids[i]` and `teacher_ids[i]` add the same text."""

    student_ids: torch.Tensor  # (M,)
    teacher_ids: torch.Tensor  # (M,)
    fraction: float  # M / student vocabulary size

    @classmethod
    def build(cls, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> "SharedVocabulary":
        teacher_by_text = {}
        for teacher_id, text in enumerate(appended_texts(teacher)):
            if text is not None:
                teacher_by_text.setdefault(text, teacher_id)  # first id wins when several add the same text
        pairs = {student.eos_token_id: teacher.eos_token_id}  # end of response maps to end of response
        teacher_vocab = teacher.get_vocab()
        for token in student.all_special_tokens:  # e.g. a padding token both define under the same name
            if token in teacher_vocab:
                pairs.setdefault(student.convert_tokens_to_ids(token), teacher_vocab[token])
        for student_id, text in enumerate(appended_texts(student)):
            if text in teacher_by_text and student_id not in pairs:
                pairs[student_id] = teacher_by_text[text]
        student_ids = torch.tensor(sorted(pairs))
        teacher_ids = torch.tensor([pairs[i] for i in student_ids.tolist()])
        return cls(student_ids, teacher_ids, len(pairs) / len(student))

    def to(self, device) -> "SharedVocabulary":
        return SharedVocabulary(self.student_ids.to(device), self.teacher_ids.to(device), self.fraction)


def student_boundaries(tokenizer: PreTrainedTokenizerBase, response_ids: list[int]) -> tuple[str, list[int | None]]:
    """The response text and, for each student position t, the end of the text of tokens < t (None when that prefix
    does not decode to a prefix of the text, e.g. inside a multi-byte character). A final EOS is not part of the text:
    its position sits at the end."""
    ends_with_eos = bool(response_ids) and response_ids[-1] == tokenizer.eos_token_id
    text_ids = response_ids[:-1] if ends_with_eos else response_ids
    text = tokenizer.decode(text_ids, skip_special_tokens=False)
    prefixes = tokenizer.batch_decode([text_ids[:t] for t in range(len(text_ids))], skip_special_tokens=False)
    boundaries = [len(prefix) if text.startswith(prefix) else None for prefix in prefixes]
    if ends_with_eos:
        boundaries.append(len(text))
    return text, boundaries


def teacher_boundaries(offsets: list[tuple[int, int]]) -> list[int]:
    """For each teacher position j = 0..len(offsets), the end of the text of teacher tokens < j."""
    return [0] + [end for _, end in offsets]


def align(student: list[int | None], teacher: list[int]) -> list[int]:
    """For each student boundary, the first teacher position at the same character, or -1."""
    first_position = {}
    for position, boundary in enumerate(teacher):
        first_position.setdefault(boundary, position)
    return [first_position.get(boundary, -1) if boundary is not None else -1 for boundary in student]


def align_batch(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase,
    completion_ids: torch.Tensor,  # (B, C)
    loss_mask: torch.Tensor,  # (B, C), 1 = a position ESR trains
) -> dict[str, torch.Tensor]:
    """The teacher's tokens for a batch of student rollouts, and which teacher position each student position maps to.

    Returns `teacher_response_ids` / `teacher_response_mask` (B, J): the re-tokenized response, then one EOS slot (its
    hidden state predicts what follows the full response), right-padded; they follow the teacher's left-padded prompt,
    so the hidden states of the last J positions predict teacher tokens 0..J-1. And `teacher_positions` (B, C): the
    teacher position aligned with each student position, -1 where there is none or the position is not trained.
    """
    rows, positions = [], torch.full_like(completion_ids, -1)
    for b in range(completion_ids.size(0)):
        trained = loss_mask[b].nonzero().flatten()
        response = completion_ids[b, : int(trained.max()) + 1].tolist() if len(trained) else []
        text, boundaries = student_boundaries(student_tokenizer, response)
        encoding = teacher_tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        rows.append(encoding["input_ids"] + [teacher_tokenizer.eos_token_id])
        aligned = torch.tensor(align(boundaries, teacher_boundaries(encoding["offset_mapping"])), dtype=torch.long)
        positions[b, : len(aligned)] = aligned
    positions[loss_mask == 0] = -1
    width = max(len(row) for row in rows)
    pad_id = teacher_tokenizer.pad_token_id if teacher_tokenizer.pad_token_id is not None else 0
    response_ids = torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=completion_ids.device)
    response_mask = torch.tensor(
        [[1] * len(row) + [0] * (width - len(row)) for row in rows], device=completion_ids.device
    )
    return {
        "teacher_response_ids": response_ids,
        "teacher_response_mask": response_mask,
        "teacher_positions": positions,
    }
