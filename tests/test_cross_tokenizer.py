"""Teachers with another tokenizer: offset alignment, shared vocabulary, and training through the aligned path."""

import pytest
import torch
from helpers import DivergenceSpy, record_batches
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from trl_esr.cross_tokenizer import Aligner, SharedVocabulary
from trl_esr.demo.tiny_models import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_causal_lm, save_pretrained


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A byte-level BPE with whole-word tokens for " w0".." w9" but pieces (" w", "12") for rarer words."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    merges = [("Ġ", "w")] + [("Ġw", str(d)) for d in range(10)] + [("1", "2"), ("3", "9")]
    tokens = SPECIAL_TOKENS + sorted(alphabet) + ["".join(pair) for pair in merges]
    backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>", padding_side="left")  # fmt: skip
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def test_alignment_on_a_hand_made_string(bpe_tokenizer, tokenizer):
    # Student: byte-level BPE; teacher: word-level. "é" is two bytes for the student and unknown to the teacher.
    response = bpe_tokenizer("w1 w12 é w39", add_special_tokens=False)["input_ids"] + [bpe_tokenizer.eos_token_id]
    assert bpe_tokenizer.convert_ids_to_tokens(response) == \
        ["w", "1", "Ġw", "12", "Ġ", "Ã", "©", "Ġw", "39", "<eos>"]  # fmt: skip
    aligner = Aligner(bpe_tokenizer, tokenizer)
    text, student = aligner.student_text(response, {bpe_tokenizer.eos_token_id})
    assert text == "w1 w12 é w39"
    # positions:      w  1  Ġw 12  Ġ  Ã   ©  Ġw  39  <eos>
    assert student == [0, 1, 2, 4, 6, 7, -1, 8, 10, 12]  # after "Ã" alone: inside "é", no boundary
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert offsets == [(0, 2), (3, 6), (7, 8), (9, 12)]  # w1, w12, <unk> for "é", w39
    ones = torch.ones(1, len(response), dtype=torch.long)
    aligned = aligner(torch.tensor([response]), ones, [bpe_tokenizer.eos_token_id])
    assert aligned["teacher_positions"].tolist() == [[0, -1, 1, -1, 2, -1, -1, 3, -1, 4]]
    assert aligned["teacher_response_ids"].tolist() == [tokenizer(text, add_special_tokens=False)["input_ids"] + [1]]


def test_shared_vocabulary(bpe_tokenizer, tokenizer):
    shared = SharedVocabulary.build(bpe_tokenizer, tokenizer)
    pairs = dict(zip(shared.student_ids.tolist(), shared.teacher_ids.tolist(), strict=True))
    # " w3" is one token in both; the BPE's " w" and "12" have no word-level counterpart
    assert pairs[bpe_tokenizer.convert_tokens_to_ids("Ġw3")] == tokenizer.convert_tokens_to_ids("w3")
    assert (
        bpe_tokenizer.convert_tokens_to_ids("Ġw") not in pairs
        and bpe_tokenizer.convert_tokens_to_ids("12") not in pairs
    )
    assert pairs[bpe_tokenizer.eos_token_id] == tokenizer.eos_token_id
    assert pairs[bpe_tokenizer.pad_token_id] == tokenizer.pad_token_id
    assert shared.fraction == len(pairs) / len(bpe_tokenizer)

    same = SharedVocabulary.build(tokenizer, tokenizer)
    assert same.student_ids.tolist() == same.teacher_ids.tolist() == list(range(len(tokenizer)))


@pytest.mark.parametrize("normalization", ["token", "sequence"])
def test_identical_tokenizers_through_the_aligned_path_match_the_fast_path(normalization, make_trainer, make_args):
    losses = {}
    for alignment in ("auto", "always"):
        args = make_args(max_steps=1, suppress_eos=False, esr_k=10, loss_normalization=normalization,
                         tokenizer_alignment=alignment, gradient_accumulation_steps=2)  # fmt: skip
        trainer = make_trainer(args)
        assert trainer._pairing.mode == ("same" if alignment == "auto" else "aligned")
        batches = record_batches(trainer)
        trainer.train()
        losses[alignment] = trainer.state.log_history[0]["loss"]
        if alignment == "always":  # every position aligned, the whole vocabulary shared
            assert all((b["teacher_positions"] >= 0).sum() == b["completion_mask"].sum() for b in batches)
            assert trainer.state.log_history[0]["esr/aligned_fraction"] == 1.0
            assert trainer.state.log_history[0]["esr/shared_vocab_fraction"] == 1.0
    assert losses["always"] == pytest.approx(losses["auto"], rel=1e-5)


def test_a_teacher_with_another_tokenizer_trains(bpe_tokenizer, make_trainer, tokenizer, make_args, tmp_path):
    # BPE student (whose words split into pieces the word-level teacher doesn't have) <- word-level Llama teacher
    student = save_pretrained(build_tiny_causal_lm(bpe_tokenizer, "llama", seed=3), bpe_tokenizer, tmp_path / "bpe")
    k = 6
    args = make_args(max_steps=3, esr_k=k, learning_rate=1e-2, min_shared_vocab_fraction=0.02,
                     generation_kwargs={"suppress_tokens": [bpe_tokenizer.eos_token_id]})  # fmt: skip
    trainer = make_trainer(args, model=student, processing_class=bpe_tokenizer)
    assert trainer._pairing.mode == "aligned"
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    student_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    teacher_before = {n: p.detach().clone() for n, p in trainer.teacher_model.named_parameters()}
    trainer.train()

    # TRL's `_compute_loss` runs: the teacher's hidden state at each aligned position, both heads in full (the
    # divergence restricts them to the shared rows), only aligned positions trained
    assert len(spy.calls) == len(batches) == 3
    for call, batch in zip(spy.calls, batches, strict=True):
        assert batch["completion_mask"].sum(dim=1).tolist() == [k, k]  # the cap holds on the student side
        assert call["teacher_hidden_states"].shape[:2] == batch["completion_ids"].shape  # (B, C), not (B, J)
        aligned = (batch["teacher_positions"] >= 0).long().tolist()
        assert sorted(call["completion_mask"].tolist()) == sorted(aligned)  # TRL shuffles the rows of a batch
        assert call["teacher_lm_head_weight"].size(0) == len(tokenizer)
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert all(torch.isfinite(torch.tensor(entry["loss"])) and entry["loss"] > 0 for entry in logs)
    assert all(0 < entry["esr/aligned_fraction"] < 1 for entry in logs)  # pieces inside words are not trained
    assert logs[0]["esr/shared_vocab_fraction"] == pytest.approx(trainer._pairing.shared.fraction)
    assert any(not torch.equal(p, student_before[n]) for n, p in trainer.model.named_parameters())
    assert all(torch.equal(p, teacher_before[n]) for n, p in trainer.teacher_model.named_parameters())


def test_teacher_without_chat_template_is_refused(bpe_tokenizer, make_trainer, make_args, tmp_path):
    teacher_tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe_tokenizer.backend_tokenizer, eos_token="<eos>",
                                                pad_token="<pad>")  # fmt: skip
    teacher = save_pretrained(build_tiny_causal_lm(teacher_tokenizer, "llama"), teacher_tokenizer, tmp_path / "t")
    args = make_args(min_shared_vocab_fraction=0.0)
    with pytest.raises(ValueError, match="has no chat template to render the chat prompts"):
        make_trainer(args, teacher_model=teacher, teacher_processing_class=teacher_tokenizer)


@pytest.mark.parametrize("padded", ["teacher", "student"])
def test_same_tokenizer_with_a_padded_head(padded, make_trainer, tokenizer, make_args, tmp_path):
    """Same tokens, one head with extra unused rows (like Qwen2.5's 151,936 vs 152,064): the fast path runs with both
    heads cut to the rows tokens use, and a padded student never samples an id the teacher lacks."""
    models = {}
    for name, seed in (("student", 0), ("teacher", 1)):
        model = build_tiny_causal_lm(tokenizer, "llama", seed=seed)
        if name == padded:
            model.resize_token_embeddings(len(tokenizer) + 8)
        models[name] = save_pretrained(model, tokenizer, tmp_path / name)
    args = make_args(max_steps=2, suppress_eos=False)
    trainer = make_trainer(args, model=models["student"], teacher_model=models["teacher"])
    assert trainer._pairing.mode == "padded" and trainer._pairing.vocab_size == len(tokenizer)
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    trainer.train()
    assert all(
        call["student_lm_head_weight"].size(0) == len(tokenizer) + 8 * (padded == "student") for call in spy.calls
    )
    assert all(int(b["completion_ids"].max()) < len(tokenizer) for b in batches)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in trainer.state.log_history if "loss" in e)


def test_lora_student_through_the_aligned_path(make_trainer, make_args):
    from peft import LoraConfig

    args = make_args(max_steps=2, tokenizer_alignment="always", learning_rate=1e-2)
    trainer = make_trainer(args, peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert trainer._pairing.mode == "aligned" and changed and all("lora_" in n for n in changed)
