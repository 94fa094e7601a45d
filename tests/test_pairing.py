"""`pair_kind`: which pairing the trainer (and `trl-esr suggest-k`) takes for a student-teacher pair, from the two
tokenizers and head sizes alone, on the paper's real Qwen pairs and on hand-made tokenizers whose relation is known by
construction."""

import copy

import pytest
from real_tokenizers import QWEN_HEAD_ROWS, llama3_tokenizer, qwen_tokenizer

from trl_esr.demo.tiny_models import build_tiny_causal_lm, build_word_tokenizer, save_pretrained
from trl_esr.model_card import _vocabulary_row
from trl_esr.pairing import PairKind, TokenizerPairing, head_size, pair_kind


QWEN25_MATH_7B_HEAD_ROWS = 152_064  # Qwen2.5-Math-7B's embedding rows: 128 more than Qwen3's
LLAMA3_HEAD_ROWS = 128_256


@pytest.fixture(scope="module")
def real():
    return {"qwen2.5": qwen_tokenizer("2.5"), "qwen3": qwen_tokenizer("3"), "llama3": llama3_tokenizer()}


@pytest.mark.parametrize(
    ("student", "student_rows", "teacher", "teacher_rows", "expected"),
    [
        # the paper's main pair: Qwen3's tokenizer only adds 4 tokens after Qwen2.5's, and both heads have 151,936 rows
        ("qwen2.5", QWEN_HEAD_ROWS, "qwen3", QWEN_HEAD_ROWS, PairKind("same", True)),
        # the same tokens, but Qwen2.5-Math-7B's head has 128 rows no token uses: both cut to Qwen3's 151,936
        ("qwen2.5", QWEN25_MATH_7B_HEAD_ROWS, "qwen3", QWEN_HEAD_ROWS, PairKind("padded", True, QWEN_HEAD_ROWS)),
        # the other way round, Qwen3's `<think>` has no id in Qwen2.5's tokenizer
        ("qwen3", QWEN_HEAD_ROWS, "qwen2.5", QWEN_HEAD_ROWS, PairKind("aligned", False)),
        # another family
        ("llama3", LLAMA3_HEAD_ROWS, "qwen3", QWEN_HEAD_ROWS, PairKind("aligned", False)),
    ],
)
def test_the_paper_pairs(real, student, student_rows, teacher, teacher_rows, expected):
    assert pair_kind(real[student], real[teacher], student_rows, teacher_rows) == expected
    # the consistency check of the aligned path runs on any pair
    assert pair_kind(real[student], real[teacher], student_rows, teacher_rows, "always").mode == "aligned"


WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="module")
def words():
    tokenizer = build_word_tokenizer(WORDS)
    extended = copy.deepcopy(tokenizer)
    extended.add_tokens(["w40"])  # every student id keeps its meaning
    swapped = WORDS.copy()
    swapped[0], swapped[1] = swapped[1], swapped[0]
    return {"student": tokenizer, "extended": extended, "swapped": build_word_tokenizer(swapped)}


def test_hand_made_pairs(words):
    student, n = words["student"], len(words["student"])
    assert pair_kind(student, student, n, n) == PairKind("same", True)
    assert pair_kind(student, None, n, n) == PairKind("same", True)  # None: the teacher uses the student's tokenizer
    assert pair_kind(student, words["extended"], n + 1, n + 1) == PairKind("same", True)
    assert pair_kind(student, student, n + 8, n) == PairKind("padded", True, n)  # a padded student head
    assert pair_kind(student, words["extended"], n, n + 9) == PairKind("padded", True, n)  # a padded teacher head
    # a teacher head one row short of the student's ids cannot score them all: re-tokenized
    assert pair_kind(student, student, n, n - 1) == PairKind("aligned", True)
    # the same size, but two words have each other's ids
    assert pair_kind(student, words["swapped"], n, n) == PairKind("aligned", False)
    assert pair_kind(student, student, n, n, "always") == PairKind("aligned", True)


def test_the_trainer_builds_the_pairing_of_that_kind(words, make_args, tmp_path):
    """`TokenizerPairing.detect` on checkpoints saved by path (head sizes read from their configs, tokenizers loaded
    as the trainer loads them) takes the mode `pair_kind` names, with the rows it names."""
    student = words["student"]
    paths = {"student": save_pretrained(build_tiny_causal_lm(student, "llama"), student, tmp_path / "student")}
    padded = build_tiny_causal_lm(student, "llama", seed=1)
    padded.resize_token_embeddings(len(student) + 8, mean_resizing=False)
    paths["padded"] = save_pretrained(padded, student, tmp_path / "padded")
    extended = words["extended"]
    paths["extended"] = save_pretrained(
        build_tiny_causal_lm(extended, "llama", seed=2), extended, tmp_path / "extended"
    )
    assert head_size(paths["padded"]) == len(student) + 8 == head_size(padded)
    args = make_args(min_shared_vocab_fraction=0.0)
    cases = {"student": ("same", None), "padded": ("padded", len(student)), "extended": ("padded", len(student))}
    for teacher, (mode, rows) in cases.items():
        pairing = TokenizerPairing.detect(args, paths["student"], paths[teacher], student, None)
        assert (pairing.mode, pairing.vocab_size) == (mode, rows), teacher
        # the model card says when the KL was over part of a head (the aligned case: tests/test_gemma.py)
        row = _vocabulary_row(pairing).get("vocabulary", "")
        assert (f"the KL over the {rows} head rows both models use" in row) if rows else row == "", teacher
