"""Distillation across tokenizers: align a student rollout with the teacher's tokenization of the same text.

When teacher and student tokenize differently (another family, or the same vocabulary size with another token->string
mapping), the teacher cannot score the student's token ids. Following the paper's authors, each student rollout is
turned into text, re-tokenized by the teacher, and the two tokenizations are aligned by position in that text:

- student position t (which predicts token t) sits at the end of the text of tokens < t; teacher position j at the end
  of teacher tokens < j. Student position t is trained when the teacher has a position at the same place: both then
  predict "what comes next" from the same prefix;
- both next-token distributions are restricted to the *shared vocabulary* (token ids of the two tokenizers that append
  the same bytes, plus same-named added tokens) and renormalised there; the loss is the same reverse KL as on the
  fast path.

Exactness on byte-level BPE (Llama-3, Qwen, GPT-2 style), where the naive approach fails:

- The student's text is built from bytes: each token's *appended bytes* are computed once per tokenizer (a table over
  the vocabulary), a rollout's text is their concatenation. Linear in the rollout length, no clean-up of spaces, and
  a boundary inside a multi-byte character is simply not a character boundary (never trained).
- The teacher reports character offsets; for the partial-byte tokens of one character (`'ĠðŁ' (1,3)`, `'İ' (2,3)`,
  `'ī' (2,3)` for "a 🎉 b") every token gets the whole character's offsets. A teacher boundary therefore counts only
  where the next token does not start before it (the last partial token of a character is the one that ends it).
- A teacher whose normaliser applies a Unicode normal form (Qwen: NFC) would tokenize other text than the student
  wrote. The text is normalised here first, segment by segment (a boundary before an ASCII character is stable under
  every normal form), and student boundaries inside a segment that normalisation changed are dropped: "Cafe" + U+0301
  is never paired with the teacher's "Café".
- Every stop id of the student (TRL stops on the whole generation-config EOS list, e.g. Llama-3-Instruct's 128001,
  128008 and 128009) ends the text; its position is paired once with the teacher's position after the full text.
  Literal special-token text the student writes ("<|im_end|>" as characters) is tokenized as text, not as the
  teacher's special token.

In the trainer this is one component, [`CrossTokenizer`] (a `trl_esr.pairing.TokenizerPairing`): it re-tokenizes
and aligns each rollout batch, runs the teacher on its own tokens and hands TRL's `_compute_loss` the teacher's hidden
state at each aligned student position, and restricts both heads to the shared rows. The loss itself is TRL's (through
`trl_esr.loss.DivergenceLoss`): its chunked kernel, logit scales and soft-capping, head-device check and the
student's multimodal inputs all apply unchanged.

Example: "w1 w12" is `w1 | w12` for a word-level student and `w | 1 | Ġw | 12` for a byte-level BPE teacher. The
student's boundaries are 0, 2 and 6 (after the end: its EOS position); the teacher's 0, 1, 2, 4 and 6; every student
position is aligned. Swap the roles and the BPE student's positions at 1 and 4 (inside a word) have no teacher match.
"""

import json
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import partial
from itertools import accumulate

import torch
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode

from ._trl_compat import LOSS_MASK_KEY
from .loss import DivergenceLoss
from .pairing import TokenizerPairing


logger = logging.getLogger(__name__)


_NORMAL_FORMS = ("NFC", "NFD", "NFKC", "NFKD")
_NON_ASCII_RUN = re.compile(r"[\x00-\x7f]?[^\x00-\x7f]+")  # with the ASCII character a combining mark may follow
_BYTE_FALLBACK = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _component_types(tokenizer: PreTrainedTokenizerBase, component: str) -> list[str]:
    """The `type`s of a fast tokenizer's `"decoder"` or `"normalizer"`, flattened through `Sequence`s."""

    def walk(node):
        if not node:
            return []
        children = node.get("decoders") or node.get("normalizers") or []
        return [node["type"]] + [t for child in children for t in walk(child)]

    part = getattr(getattr(tokenizer, "backend_tokenizer", None), component, None)
    return walk(json.loads(part.__getstate__())) if part is not None else []


def shares_student_ids(student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase) -> bool:
    """Whether every student token has the same id (and decodes the same way) in the teacher's tokenizer.

    True for identical tokenizers and for a teacher whose tokenizer only adds tokens, like Qwen3 over Qwen2.5
    (151,669 vs 151,665 tokens: `<tool_response>`, `</tool_response>`, `<think>`, `</think>`). Such a teacher can score
    the student's ids directly: TRL's fast path applies.
    """
    return student.get_vocab().items() <= teacher.get_vocab().items() and _component_types(
        student, "decoder"
    ) == _component_types(teacher, "decoder")


def token_bytes(tokenizer: PreTrainedTokenizerBase) -> list[bytes]:
    """The bytes each token id appends to a text, for every id of `tokenizer` (one pass over the vocabulary).

    Byte-level BPE: the token's characters map back to bytes (GPT-2's byte alphabet), so partial characters are exact.
    Other tokenizers: the text an id adds after an anchor token (SentencePiece decoders drop a leading space on the
    first token, so decoding an id alone is not enough), without clean-up of spaces; byte-fallback pieces `<0xE2>` are
    their byte. Special tokens append their content; other added tokens what the decoder writes for them (Gemma's
    newline and whitespace runs are added tokens: `▁▁▁▁` writes four spaces).
    """
    added = {i: token.content for i, token in tokenizer.added_tokens_decoder.items()}
    if "ByteLevel" in _component_types(tokenizer, "decoder"):
        to_latin1 = {ord(char): byte for byte, char in bytes_to_unicode().items()}  # then one byte per character
        pieces = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
        return [
            added[i].encode() if i in added else (piece or "").translate(to_latin1).encode("latin-1")
            for i, piece in enumerate(pieces)
        ]
    anchor = tokenizer.eos_token_id
    prefix = tokenizer.decode([anchor], skip_special_tokens=False, clean_up_tokenization_spaces=False)
    decoded = tokenizer.batch_decode(
        [[anchor, i] for i in range(len(tokenizer))], skip_special_tokens=False, clean_up_tokenization_spaces=False
    )
    pieces = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    table = []
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    for i, (text, piece) in enumerate(zip(decoded, pieces, strict=True)):
        fallback = _BYTE_FALLBACK.fullmatch(piece or "")
        if i in special or (i in added and not text.startswith(prefix)):
            table.append(added[i].encode())
        elif fallback:
            table.append(bytes([int(fallback.group(1), 16)]))
        else:
            table.append(text[len(prefix) :].encode() if text.startswith(prefix) else b"")
    return table


def _text_keys(tokenizer: PreTrainedTokenizerBase, table: list[bytes] | None) -> list[bytes | None]:
    """What each id appends as a pairing key: its bytes, or None for special tokens (paired by name) and ids that add
    nothing. Bytes, not text: a partial character (`'ðŁ'`, the first two bytes of 🎉) is paired with the teacher's
    token that adds the same two bytes, or a byte-fallback piece `<0xF0>` with a byte-level `'ð'`. Added tokens that
    are not special are text a model writes (Gemma's `\n`, Qwen3's `<think>`): keyed by their bytes too, after the
    pairing by name."""
    table = token_bytes(tokenizer) if table is None else table
    special = {i for i, token in tokenizer.added_tokens_decoder.items() if token.special}
    return [data if data and token_id not in special else None for token_id, data in enumerate(table)]


def leading_strip(tokenizer: PreTrainedTokenizerBase, table: list[bytes]) -> bytes:
    """The space the tokenizer's decoder drops at the start of a text (b" "), or b"" if it drops none.

    SentencePiece tokenizers with a dummy prefix (Llama 2, Mistral, Phi-3: a `Strip` or `Metaspace` decoder) mark
    each word start with `▁`, and a response's first token is such a word start (`▁The`), but its text is `The`: the
    decoder removes the first space of every decoded text. Measured, not read from the decoder's type: decoding a
    space-led token alone gives its bytes less one space exactly when this happens.
    """
    added = set(tokenizer.added_tokens_decoder)
    for token_id, data in enumerate(table):
        if len(data) > 1 and data.startswith(b" ") and not data[1:].startswith(b" ") and token_id not in added:
            alone = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            return b" " if alone.encode() == data[1:] else b""
    return b""


@dataclass
class SharedVocabulary:
    """Index tensors of the tokens both tokenizers share: `student_ids[i]` and `teacher_ids[i]` add the same bytes.

    The pairing is one-to-one, so restricting both distributions to it and renormalising compares like with like. In
    order: added tokens by name (`<|endoftext|>` with `<|endoftext|>`: identical models then give a KL of 0 whatever
    each side calls its EOS), the student's EOS with the teacher's EOS when neither is paired yet (end of response maps
    to end of response across families), then tokens by appended bytes (the teacher's first id for them).

    A tokenizer whose decoder drops a text's first space ([`leading_strip`]: SentencePiece's dummy prefix) spells a
    word differently at the first response position: a Mistral student's `▁The` there is "The", a byte-level teacher's
    `The`, not its ` The`; a Mistral teacher reads "The" as its `▁The`. `first_student_ids` / `first_teacher_ids` are
    the pairing for that position when either side strips (`None` otherwise): space-led tokens by their bytes less the
    space (a stripping student's other tokens, text glued to the prompt, unpaired there; a stripping teacher's other
    pieces too, since it starts every response with a space-led piece or an added token).
    """

    student_ids: torch.Tensor  # (M,)
    teacher_ids: torch.Tensor  # (M,)
    fraction: float  # M / student vocabulary size
    first_student_ids: torch.Tensor | None = None  # (M0,)
    first_teacher_ids: torch.Tensor | None = None  # (M0,)

    @classmethod
    def build(
        cls,
        student: PreTrainedTokenizerBase,
        teacher: PreTrainedTokenizerBase,
        student_table: list[bytes] | None = None,
    ) -> "SharedVocabulary":
        student_table = token_bytes(student) if student_table is None else student_table
        teacher_table = token_bytes(teacher)
        # each side's ids in pairing order, computed once (one pass over the vocabulary: ~0.2 s for Gemma 3's)
        student_order, teacher_order = _byte_fallback_last(student), _byte_fallback_last(teacher)
        teacher_by_key = _first_id_by_key(teacher_order, _text_keys(teacher, teacher_table))
        pair = partial(_pair, student, teacher, student_order=student_order)
        student_ids, teacher_ids = pair(_text_keys(student, student_table), teacher_by_key)
        first_student_ids = first_teacher_ids = None
        student_strip, teacher_strip = leading_strip(student, student_table), leading_strip(teacher, teacher_table)
        if student_strip or teacher_strip:
            # What each side writes as the response's first token: a stripping side's `▁The` is "The" (ahead of a
            # teacher's own piece `The`, which it does not write there); a teacher id keeps one key. A stripping
            # teacher's first token is always a space-led piece or an added token ("3 apples" is `▁`, `3`, ...): its
            # other pieces are not paired there, or a student's first `3` would be trained toward the teacher's
            # probability of a spelling it never reads.
            first_student = _lstrip(student_table, student_strip) if student_strip else student_table
            first_teacher = _first_id_by_key(teacher_order, _text_keys(teacher, _lstrip(teacher_table, teacher_strip)))
            taken = set(first_teacher.values())
            written_first = set(teacher.added_tokens_decoder) if teacher_strip else None  # None: any token
            for key, teacher_id in teacher_by_key.items():
                if teacher_id not in taken and (written_first is None or teacher_id in written_first):
                    first_teacher.setdefault(key, teacher_id)
            first_student_ids, first_teacher_ids = pair(_text_keys(student, first_student), first_teacher)
        fraction = len(student_ids) / len(student)
        return cls(student_ids, teacher_ids, fraction, first_student_ids, first_teacher_ids)

    def to(self, device) -> "SharedVocabulary":
        first = (self.first_student_ids, self.first_teacher_ids)
        first = [ids.to(device) if ids is not None else None for ids in first]
        return SharedVocabulary(self.student_ids.to(device), self.teacher_ids.to(device), self.fraction, *first)


def _first_id_by_key(order: list[int], keys: list[bytes | None]) -> dict[bytes, int]:
    """Each key's first id in `order` (byte-fallback pieces last: [`_byte_fallback_last`])."""
    by_key = {}
    for token_id in order:
        if keys[token_id] is not None:
            by_key.setdefault(keys[token_id], token_id)
    return by_key


def _lstrip(table: list[bytes], strip: bytes) -> list[bytes]:
    """The table's space-led entries less `strip`; the others empty (not keys). `strip` empty: nothing (no keys)."""
    return [data[len(strip) :] if strip and data.startswith(strip) else b"" for data in table]


def _pair(student, teacher, student_keys: list[bytes | None], teacher_by_key: dict, student_order: list[int]):
    """One-to-one (student id, teacher id) pairs in [`SharedVocabulary`]'s order, as two aligned index tensors;
    the student's ids by bytes in `student_order` ([`_byte_fallback_last`])."""
    pairs, used = {}, set()

    def pair(student_id, teacher_id):
        unpaired = student_id not in pairs and teacher_id not in used
        if student_id is not None and teacher_id is not None and unpaired:
            pairs[student_id] = teacher_id
            used.add(teacher_id)

    teacher_vocab = teacher.get_vocab()
    for student_id, token in sorted(student.added_tokens_decoder.items()):
        pair(student_id, teacher_vocab.get(token.content))
    pair(student.eos_token_id, teacher.eos_token_id)
    for student_id in student_order:
        pair(student_id, teacher_by_key.get(student_keys[student_id]))
    student_ids = torch.tensor(sorted(pairs))
    return student_ids, torch.tensor([pairs[i] for i in student_ids.tolist()])


def _byte_fallback_last(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id, byte-fallback pieces (`<0x33>`) after the others: SentencePiece vocabularies hold both `<0x33>` and
    the piece `3`, which add the same byte, and a model writes the piece. Paired in id order, the low-id byte piece
    would take the other side's `3` and leave the digit a model actually samples outside the KL."""
    pieces = tokenizer.convert_ids_to_tokens(range(len(tokenizer)))
    fallback = [_BYTE_FALLBACK.fullmatch(piece or "") is not None for piece in pieces]
    return sorted(range(len(pieces)), key=fallback.__getitem__)  # stable: id order within each group


def _text_and_char_offsets(data: bytes) -> tuple[str, torch.Tensor]:
    """Decode UTF-8 `data`, cut before the first invalid or incomplete sequence (an ESR cap can end inside a
    character). Returns the text and, for each byte offset 0..len(data), the character offset there, or -1 where it
    is not a character boundary of the text."""
    try:
        text = data.decode()
    except UnicodeDecodeError as error:
        text = data[: error.start].decode()
    valid = len(text.encode())
    codes = torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else torch.zeros(0, dtype=torch.uint8)
    starts = torch.ones(len(data) + 1, dtype=torch.bool)
    starts[: len(data)] = (codes & 0xC0) != 0x80  # not a UTF-8 continuation byte
    starts[valid] = True  # the end of the decodable text
    starts[valid + 1 :] = False
    chars = torch.cumsum(starts.long(), 0) - 1  # (len(data) + 1,)
    return text, torch.where(starts, chars, -1)


def _normalise(text: str, form: str) -> tuple[str, list[tuple[int, int, int]]]:
    """`text` in Unicode normal `form`, normalised per segment, and the segments normalisation changed, as
    (start, end, length change) in `text`'s character offsets."""
    if text.isascii():
        return text, []
    pieces, changes, last = [], [], 0
    for match in _NON_ASCII_RUN.finditer(text):
        start, end = match.span()
        normalised = unicodedata.normalize(form, match.group())
        if normalised != match.group():
            pieces += [text[last:start], normalised]
            changes.append((start, end, len(normalised) - (end - start)))
            last = end
    return "".join(pieces) + text[last:], changes


def _shift(boundaries: list[int], changes: list[tuple[int, int, int]]) -> list[int]:
    """Move character boundaries (ascending, -1 = none) into the normalised text; inside a changed segment -> -1."""
    shifted, delta, index = [], 0, 0
    for boundary in boundaries:
        if boundary < 0:
            shifted.append(-1)
            continue
        while index < len(changes) and changes[index][1] <= boundary:
            delta += changes[index][2]
            index += 1
        inside = index < len(changes) and changes[index][0] < boundary < changes[index][1]
        shifted.append(-1 if inside else boundary + delta)
    return shifted


def _teacher_boundaries(offsets: list[tuple[int, int]]) -> dict[int, int]:
    """{character offset: first teacher position j whose prefix (tokens < j) ends there}. The prefix after token j-1
    ends at its end offset unless token j starts before it (token j-1 is then a partial character)."""
    first = {0: 0}
    for j in range(1, len(offsets) + 1):
        end = offsets[j - 1][1]
        if j == len(offsets) or offsets[j][0] >= end:
            first.setdefault(end, j)
    return first


class Aligner:
    """Re-tokenizes student rollouts for the teacher and maps student positions to teacher positions.

    Built once per trainer: the student's byte table and the teacher's normal form are computed here, so each batch
    costs one table lookup per student token and one (batched) teacher tokenization.
    """

    def __init__(self, student: PreTrainedTokenizerBase, teacher: PreTrainedTokenizerBase, student_table=None):
        self.teacher = teacher
        self.student_table = token_bytes(student) if student_table is None else student_table
        self.strip = leading_strip(student, self.student_table)  # the text is what the student's decoder writes
        forms = [form for form in _component_types(teacher, "normalizer") if form in _NORMAL_FORMS]
        self.normal_form = forms[0] if forms else None

    def student_text(self, response: list[int], stop_ids: set[int]) -> tuple[str, list[int]]:
        """The text of a rollout's tokens and, per student position, where its prefix ends in that text (-1 inside a
        character). The text ends at the first stop token, or at an id no token has (a padded head's extra rows):
        that position sits at the end of the text, later ones are not aligned."""
        known = len(self.student_table)
        end = next((t for t, token in enumerate(response) if token in stop_ids or token >= known), len(response))
        pieces = [self.student_table[i] for i in response[:end]]
        data = b"".join(pieces)
        stripped = len(self.strip) if self.strip and data.startswith(self.strip) else 0  # `▁The` at the start: "The"
        text, char_at = _text_and_char_offsets(data[stripped:])
        byte_offsets = [max(0, offset - stripped) for offset in accumulate((len(p) for p in pieces), initial=0)]
        positions = min(end + 1, len(response))  # the positions whose prefix is text
        boundaries = char_at[byte_offsets[:positions]].tolist() + [-1] * (len(response) - positions)
        if self.normal_form is not None:
            text, changes = _normalise(text, self.normal_form)
            boundaries = _shift(boundaries, changes)
        return text, boundaries

    def __call__(self, completion_ids: torch.Tensor, loss_mask: torch.Tensor, stop_ids) -> dict[str, torch.Tensor]:
        """The teacher's tokens for a batch of student rollouts, and which teacher position each student position maps
        to. `completion_ids` / `loss_mask` are (B, C), the mask 1 where ESR trains.

        Returns `teacher_response_ids` / `teacher_response_mask` (B, J): the re-tokenized response, then one EOS slot
        (its hidden state predicts what follows the full response), right-padded; they follow the teacher's
        left-padded prompt, so the hidden states of the last J positions predict teacher tokens 0..J-1. And
        `teacher_positions` (B, C): the teacher position aligned with each student position, -1 where there is none
        or the position is not trained.
        """
        stop_ids = set(stop_ids)
        texts, boundaries = [], []
        for b in range(completion_ids.size(0)):
            trained = loss_mask[b].nonzero().flatten()
            response = completion_ids[b, : int(trained.max()) + 1].tolist() if len(trained) else []
            text, student = self.student_text(response, stop_ids)
            texts.append(text)
            boundaries.append(student)
        encodings = self.teacher(
            texts, add_special_tokens=False, return_offsets_mapping=True, split_special_tokens=True
        )  # split_special_tokens: "<|im_end|>" written by the student is text, not the teacher's special token
        positions, rows = torch.full_like(completion_ids, -1), []
        for b, (ids, offsets) in enumerate(zip(encodings["input_ids"], encodings["offset_mapping"], strict=True)):
            teacher = _teacher_boundaries(offsets)
            aligned = [teacher.get(boundary, -1) if boundary >= 0 else -1 for boundary in boundaries[b]]
            positions[b, : len(aligned)] = torch.tensor(aligned, dtype=torch.long)
            rows.append(ids + [self.teacher.eos_token_id])
        positions[loss_mask == 0] = -1
        width = max(len(row) for row in rows)
        pad_id = self.teacher.pad_token_id if self.teacher.pad_token_id is not None else 0
        device = completion_ids.device
        return {
            "teacher_response_ids": torch.tensor([row + [pad_id] * (width - len(row)) for row in rows], device=device),
            "teacher_response_mask": torch.tensor(
                [[1] * len(row) + [0] * (width - len(row)) for row in rows], device=device
            ),
            "teacher_positions": positions,
        }


def align_batch(aligner: Aligner, completion_ids, loss_mask, stop_ids) -> dict[str, torch.Tensor]:
    """`aligner(completion_ids, loss_mask, stop_ids)`: a module-level seam the benchmark times."""
    return aligner(completion_ids, loss_mask, stop_ids)


class CrossTokenizer(TokenizerPairing):
    """A teacher with another tokenizer: each rollout is re-tokenized for the teacher, and student position t is
    trained against the teacher position aligned with it, both distributions restricted to the shared vocabulary.

    `prepare_batch` adds `teacher_response_ids` / `teacher_response_mask` (B, J) and `teacher_positions` (B, C) to
    the batch and trains only aligned positions; `teacher_hidden_states` runs the teacher on its own prompt and tokens
    and gathers its hidden state at each aligned position, so TRL's `_compute_loss` sees (B, C, H_t) as on the fast
    path; `divergence_loss` restricts both heads to the shared rows.
    """

    mode = "aligned"
    loads_teacher_itself = True  # TRL refuses a teacher whose head size differs
    full_vocabulary = False

    def __init__(self, processing_class, teacher_tokenizer, shared: SharedVocabulary, aligner: Aligner):
        super().__init__(processing_class, teacher_tokenizer)
        self.shared, self.aligner = shared, aligner

    @classmethod
    def build(cls, processing_class, student, teacher, min_fraction: float) -> "CrossTokenizer":
        """The pairing of `student` with `teacher` (both fast tokenizers), refused below `min_fraction` shared."""
        if not teacher.is_fast:
            raise ValueError(
                f"The teacher's tokenizer `{teacher.name_or_path}` differs from the student's and is a slow "
                "tokenizer, which cannot report the character offsets the alignment needs. Load its fast version "
                "(`use_fast=True`) and pass it as `teacher_processing_class`."
            )
        student_table = token_bytes(student)  # one pass over each vocabulary, shared by both uses below
        shared = SharedVocabulary.build(student, teacher, student_table=student_table)
        logger.info(f"The tokenizers differ: {shared.fraction:.1%} of the student's vocabulary is shared.")
        if shared.fraction < min_fraction:
            raise ValueError(
                f"The student's tokenizer `{student.name_or_path}` and the teacher's `{teacher.name_or_path}` share "
                f"only {shared.fraction:.1%} of the student's vocabulary (minimum `min_shared_vocab_fraction` = "
                f"{min_fraction:.0%}), too little for a meaningful KL. Pick a teacher whose vocabulary overlaps more, "
                "or lower `min_shared_vocab_fraction` if you know what you are doing."
            )
        return cls(processing_class, teacher, shared, Aligner(student, teacher, student_table=student_table))

    def divergence_loss(self, args):
        return DivergenceLoss(args.loss_normalization, args.loss_temperature, shared=self.shared)

    def prepare_batch(self, batch: dict, stop_ids: list[int]) -> None:
        """Train only the positions the teacher's tokenization also has (within ESR's k)."""
        loss_mask = batch["completion_mask"] * batch.get(LOSS_MASK_KEY, 1)
        batch.update(align_batch(self.aligner, batch["completion_ids"], loss_mask, stop_ids))
        batch[LOSS_MASK_KEY] = (batch["teacher_positions"] >= 0).long()

    def teacher_hidden_states(self, forward, teacher, batch, input_ids, attention_mask, logits_to_keep, **kwargs):
        """The teacher on its own prompt and re-tokenized response (text only: its tokens hold no image
        placeholders), then its hidden state at the position aligned with each student position: (B, C, H_t).
        Positions without a match get position 0's, which the loss mask leaves out."""
        response_ids, response_mask = batch["teacher_response_ids"], batch["teacher_response_mask"]  # (B, J)
        hidden = forward(
            teacher,
            torch.cat([batch["teacher_prompt_ids"], response_ids], dim=1),
            torch.cat([batch["teacher_prompt_mask"], response_mask], dim=1),
            response_ids.size(1),
        )  # (B, J, H_t): position j predicts re-tokenized response token j
        positions = batch["teacher_positions"].clamp(min=0).to(hidden.device)  # (B, C)
        return hidden.gather(1, positions.unsqueeze(-1).expand(-1, -1, hidden.size(-1)))

    def metrics(self, trained: torch.Tensor, alignable: torch.Tensor) -> dict[str, float]:
        return {
            "esr/aligned_fraction": (trained / alignable.clamp(min=1)).item(),
            "esr/shared_vocab_fraction": self.shared.fraction,
        }
