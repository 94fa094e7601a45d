"""The cross-tokenizer code on real vocabularies (Llama-3, Qwen2.5, Qwen3, Qwen3.5, Mistral, Gemma 2/3), built offline
from pinned packages (the `vocabularies` fixture, in conftest.py; Qwen3.5's, Mistral's and Gemma's own tests are in
test_qwen35.py, test_sentencepiece.py and test_gemma.py).

Every alignment check here is independent of the code under test: it decodes token prefixes with the tokenizers' own
decoders and compares the texts (the teacher's NFC-normalised for Qwen, whose normaliser is NFC).
"""

import time
import unicodedata

import pytest
import torch
from datasets import Dataset
from helpers import record_batches
from real_tokenizers import GEMMA_STOP_IDS, LLAMA3_STOP_IDS, QWEN_HEAD_ROWS, TEXTS, qwen_tokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

from trl_esr import ESRDistillTrainer
from trl_esr.cross_tokenizer import Aligner, SharedVocabulary
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained


def _rollouts(tokenizer, text: str) -> dict[str, list[int]]:
    """The student's own tokenization, and a non-canonical one a sampler can produce: single-byte tokens (every
    multi-byte character split into partial-character tokens)."""
    canonical = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]  # as written
    if tokenizer.convert_tokens_to_ids("<0x41>") != tokenizer.unk_token_id:  # SentencePiece: byte pieces
        single = tokenizer.convert_tokens_to_ids([f"<0x{b:02X}>" for b in text.encode()])
    else:  # byte-level BPE: one character per byte
        alphabet = bytes_to_unicode()
        single = tokenizer.convert_tokens_to_ids([alphabet[b] for b in text.encode()])
    return {"canonical": canonical, "bytes": single}


def _decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize(
    "student_name, teacher_name",
    [("llama3", "qwen3"), ("qwen2.5", "llama3"), ("qwen3", "qwen3.5"), ("qwen3.5", "llama3"), ("mistral", "qwen3"),
     ("llama3", "mistral"), ("gemma2", "gemma3"), ("gemma2", "qwen3"), ("qwen3", "gemma3"), ("gemma3", "llama3")],
)  # fmt: skip
def test_every_aligned_pair_has_the_same_text_prefix(vocabularies, student_name, teacher_name):
    student, teacher = vocabularies[student_name], vocabularies[teacher_name]
    nfc = teacher_name.startswith("qwen")  # Qwen's normaliser is NFC; Llama-3 has none
    aligner = Aligner(student, teacher)
    stop_lists = {"llama3": LLAMA3_STOP_IDS, "gemma2": GEMMA_STOP_IDS["2"], "gemma3": GEMMA_STOP_IDS["3"]}
    stop_ids = stop_lists.get(student_name, [student.eos_token_id])
    stop = stop_ids[0]  # Llama-3: <|end_of_text|>, Gemma: <eos>, not the tokenizer's EOS
    teacher_specials = {i for i, token in teacher.added_tokens_decoder.items() if token.special}
    for name, text in TEXTS.items():
        for kind, ids in _rollouts(student, text).items():
            response = ids + [stop]
            out = aligner(torch.tensor([response]), torch.ones(1, len(response), dtype=torch.long), stop_ids)
            teacher_ids = out["teacher_response_ids"][0].tolist()
            positions = out["teacher_positions"][0].tolist()
            # the teacher reads the student's text exactly (normalised its way), with no special token inside (Qwen3's
            # `<think>` is an added token but not a special one: the teacher's own tokenizer reads it as such)
            written = _decode(student, ids)  # a Qwen student's own tokenization is NFC already
            expected_text = unicodedata.normalize("NFC", written) if nfc else written
            assert _decode(teacher, teacher_ids[:-1]) == expected_text, (name, kind)
            assert not teacher_specials & set(teacher_ids[:-1]), (name, kind)
            for t, j in enumerate(positions):
                if j < 0:
                    continue
                student_prefix, teacher_prefix = _decode(student, response[:t]), _decode(teacher, teacher_ids[:j])
                assert "\ufffd" not in student_prefix + teacher_prefix, (name, kind, t, j)  # no split character
                if nfc:
                    student_prefix = unicodedata.normalize("NFC", student_prefix)
                assert student_prefix == teacher_prefix, (name, kind, t, j)
                assert student_prefix.encode() == teacher_prefix.encode()
            assert positions[-1] == len(teacher_ids) - 1, (name, kind)  # the stop token: once, after the full text
            if kind == "canonical" and name in ("prose", "code", "latex", "numbers", "spacing"):
                assert sum(j >= 0 for j in positions) >= 0.6 * len(positions), (name, positions)


def test_nfd_prefix_is_never_paired_with_the_composed_character(vocabularies):
    student, teacher = vocabularies["llama3"], vocabularies["qwen3"]
    response = student("Cafe\u0301 au lait", add_special_tokens=False)["input_ids"]
    assert student.convert_ids_to_tokens(response)[:3] == ["C", "afe", "Ìģ"]  # "Cafe" + U+0301
    text, boundaries = Aligner(student, teacher).student_text(response, set())
    assert text == "Café au lait"  # composed, as the teacher reads it
    assert boundaries[:3] == [0, 1, -1]  # after "Cafe": inside the composed "é", never trained


def test_shared_vocabulary_is_one_to_one(vocabularies):
    """Qwen2.5 (EOS `<|endoftext|>`) <- Qwen3 (EOS `<|im_end|>`): each teacher id is used once, specials by name."""
    student, teacher = vocabularies["qwen2.5"], vocabularies["qwen3"]
    shared = SharedVocabulary.build(student, teacher)
    pairs = dict(zip(shared.student_ids.tolist(), shared.teacher_ids.tolist(), strict=True))
    assert len(set(pairs.values())) == len(pairs)
    assert pairs == {i: i for i in range(len(student))}  # a superset tokenizer: the identity
    across = SharedVocabulary.build(vocabularies["llama3"], teacher)
    assert len(set(across.teacher_ids.tolist())) == len(across.teacher_ids)
    across_pairs = dict(zip(across.student_ids.tolist(), across.teacher_ids.tolist(), strict=True))
    assert across_pairs[vocabularies["llama3"].eos_token_id] == teacher.eos_token_id  # <|eot_id|> -> <|im_end|>
    hello = vocabularies["llama3"].convert_tokens_to_ids("Ġhello")
    assert across_pairs[hello] == teacher.convert_tokens_to_ids("Ġhello")
    assert 0.5 < across.fraction < 1.0


def _qwen_model(tokenizer, architecture: str, seed: int, hidden_size: int = 32):
    model = build_tiny_causal_lm(tokenizer, architecture, hidden_size=hidden_size, seed=seed)
    if model.config.vocab_size != QWEN_HEAD_ROWS:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model.resize_token_embeddings(QWEN_HEAD_ROWS, mean_resizing=False)
    return model


@pytest.fixture(scope="module")
def qwen_pair(vocabularies, tmp_path_factory):
    """Tiny Qwen2.5-style student and Qwen3-style teacher, both with 151,936-row heads like the paper's pair."""
    root = tmp_path_factory.mktemp("qwen")
    student = _qwen_model(vocabularies["qwen2.5"], "qwen2", seed=0)
    teacher = _qwen_model(vocabularies["qwen3"], "llama", seed=1, hidden_size=48)
    return {
        "student": save_pretrained(student, vocabularies["qwen2.5"], root / "student"),
        "teacher": save_pretrained(teacher, vocabularies["qwen3"], root / "teacher"),
    }


@pytest.fixture(scope="module")
def chat_prompts():
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + {i + 1}?"}] for i in range(8)]})


def _trainer(pair, student_tokenizer, teacher_tokenizer, dataset, make_args, **overrides):
    args = make_args(max_steps=1, esr_k=6, generation_kwargs={"suppress_tokens": [student_tokenizer.eos_token_id]},
                     esr_diagnostics_steps=0, **overrides)  # fmt: skip
    return ESRDistillTrainer(
        model=pair["student"], teacher_model=pair["teacher"], args=args, train_dataset=dataset,
        processing_class=student_tokenizer, teacher_processing_class=teacher_tokenizer,
    )  # fmt: skip


def test_the_papers_pair_takes_the_fast_path(vocabularies, qwen_pair, chat_prompts, make_args):
    """Qwen2.5 <- Qwen3 shares every student id: the fast path, with exactly the losses of identical tokenizers, and
    the teacher's own non-thinking template (the paper's setup) on that path."""
    losses = {}
    for teacher_name in ("qwen3", "qwen2.5"):
        trainer = _trainer(qwen_pair, vocabularies["qwen2.5"], vocabularies[teacher_name], chat_prompts, make_args)
        assert trainer._pairing.mode == "same"
        trainer.train()
        losses[teacher_name] = trainer.state.log_history[0]["loss"]
    assert losses["qwen3"] == losses["qwen2.5"] and losses["qwen3"] > 0

    view = dict(teacher_chat_template="teacher", teacher_chat_template_kwargs={"enable_thinking": False})
    trainer = _trainer(qwen_pair, vocabularies["qwen2.5"], vocabularies["qwen3"], chat_prompts, make_args, **view)
    assert trainer._pairing.mode == "same"
    prompts = [example["prompt"] for example in chat_prompts.select(range(2))]
    ids, mask = trainer._teacher_renderer(prompts, torch.device("cpu"))
    think = [vocabularies["qwen3"].convert_tokens_to_ids(t) for t in ("<think>", "</think>")]
    assert think == [151667, 151668] and all(set(think) <= set(row.tolist()) for row in ids)
    trainer.train()
    assert trainer.state.log_history[0]["loss"] > 0


def _only_words(tokenizer) -> list[int]:
    """Every id but a few whole words and EOS: rollouts whose text re-tokenizes to the same tokens (a random student's
    token soup would be re-tokenized differently, which changes the teacher's context, not the pairing)."""
    allowed = set(tokenizer.convert_tokens_to_ids(["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat"])) | {tokenizer.eos_token_id}
    return [i for i in range(QWEN_HEAD_ROWS) if i not in allowed]


def test_identical_models_with_differently_named_eos_have_zero_loss(vocabularies, make_args, tmp_path, chat_prompts):
    """The aligned path on one vocabulary whose two copies name another EOS (`<|endoftext|>` vs `<|im_end|>`): with
    identical models every aligned KL is 0, the final (stop) position included."""
    student_tokenizer, teacher_tokenizer = qwen_tokenizer("3"), vocabularies["qwen3"]
    student_tokenizer.eos_token = "<|endoftext|>"
    assert (student_tokenizer.eos_token_id, teacher_tokenizer.eos_token_id) == (151643, 151645)
    model = _qwen_model(student_tokenizer, "qwen2", seed=0)
    path = save_pretrained(model, student_tokenizer, tmp_path / "model")
    only_words = {"suppress_tokens": _only_words(student_tokenizer)}
    args = make_args(max_steps=1, esr_k=12, tokenizer_alignment="always", esr_diagnostics_steps=0, learning_rate=0.0,
                     per_device_train_batch_size=4, generation_kwargs=only_words)  # fmt: skip
    trainer = ESRDistillTrainer(
        model=path,
        teacher_model=path,
        args=args,
        train_dataset=chat_prompts,
        processing_class=student_tokenizer,
        teacher_processing_class=teacher_tokenizer,
    )
    assert trainer._pairing.mode == "aligned"
    batches = record_batches(trainer)
    trainer.train()
    ended = [
        (row, mask)
        for b in batches
        for row, mask in zip(b["completion_ids"].tolist(), b["teacher_positions"].tolist(), strict=True)
        if 151643 in row
    ]
    assert ended, "no rollout ended with the student's EOS"
    for row, positions in ended:  # the stop position is trained, against the teacher's position after the text
        assert positions[row.index(151643)] >= 0
    assert trainer.state.log_history[0]["esr/aligned_fraction"] == 1.0
    assert abs(trainer.state.log_history[0]["loss"]) < 1e-6


def test_always_on_identical_real_tokenizers_matches_the_fast_path(vocabularies, chat_prompts, make_args, tmp_path):
    """`tokenizer_alignment="always"` with Qwen2.5's tokenizer on both sides and rollouts that re-tokenize to the same
    tokens: every position aligned, the fast path's loss (different models, so it is not 0). Heads of exactly the
    tokenizer's size: with Qwen's 271 padding rows the fast path would also spread probability over them, which the
    aligned path (token ids only) does not. Tolerance: both compute the KL in float32, a difference of two sums of
    ~12 nats over 151,665 ids for a KL of ~0.016 here, so float32 rounding alone is ~5e-5 relative (measured 2.3e-5).
    """
    tokenizer, losses = vocabularies["qwen2.5"], {}
    shapes = (("qwen2", 32, 0), ("llama", 48, 1))
    models = [build_tiny_causal_lm(tokenizer, arch, hidden_size=h, seed=seed) for arch, h, seed in shapes]
    student, teacher = (save_pretrained(m, tokenizer, tmp_path / str(i)) for i, m in enumerate(models))
    size = len(tokenizer)  # once: transformers 5.0 rebuilds the vocabulary on each `len` (151,665 of them here)
    suppressed = [i for i in _only_words(tokenizer) if i < size]
    for alignment in ("auto", "always"):
        args = make_args(max_steps=1, esr_k=12, tokenizer_alignment=alignment, esr_diagnostics_steps=0,
                         per_device_train_batch_size=4, generation_kwargs={"suppress_tokens": suppressed})  # fmt: skip
        trainer = ESRDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=chat_prompts,
                                    processing_class=tokenizer, teacher_processing_class=tokenizer)  # fmt: skip
        assert trainer._pairing.mode == ("same" if alignment == "auto" else "aligned")
        trainer.train()
        losses[alignment] = trainer.state.log_history[0]["loss"]
        if alignment == "always":
            assert trainer.state.log_history[0]["esr/aligned_fraction"] == 1.0
    assert losses["auto"] > 0 and losses["always"] == pytest.approx(losses["auto"], rel=1e-4)


def test_alignment_time_is_linear_in_the_rollout_length(vocabularies):
    """16 rollouts of 2,048 tokens align in at most ~20x the time of 16 of 128 (16x the tokens; the old prefix
    decoding was quadratic: 68 ms at 100 tokens, 13 s at 2,048). Best of 3 runs each, so a busy machine does not
    decide it."""
    student, teacher = vocabularies["llama3"], vocabularies["qwen3"]
    aligner = Aligner(student, teacher)
    corpus = student(" ".join(TEXTS.values()) * 40, add_special_tokens=False)["input_ids"]

    def best_time(length: int) -> float:
        ids = torch.tensor([corpus[i * 7 : i * 7 + length] for i in range(16)])
        mask = torch.ones_like(ids)
        times = []
        for _ in range(3):
            start = time.perf_counter()
            aligner(ids, mask, LLAMA3_STOP_IDS)
            times.append(time.perf_counter() - start)
        return min(times)

    assert len(corpus) > 2048 + 16 * 7
    assert best_time(2048) <= 20 * best_time(128)


def test_alignment_benchmark_runs(tmp_path, vocabularies):
    from benchmarks.alignment import main

    vocabularies["gemma3"]  # skips (or fails, in CI) without the fetched Gemma files: the benchmark would leave it out
    results = main(["--lengths", "16", "64", "--output_dir", str(tmp_path)])
    assert set(results["seconds"]) == {"llama3 <- qwen3", "qwen2.5 <- llama3", "qwen3 <- qwen3.5", "gemma2 <- gemma3"}
    assert all(set(seconds) == {16, 64} for seconds in results["seconds"].values())
    assert (tmp_path / "alignment.json").exists()
