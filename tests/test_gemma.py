"""Gemma 2's and Gemma 3's real vocabularies through the aligned path: the paper's cross-family pair is a Gemma-2-2B
student <- Gemma-3-4B teacher, whose vocabularies differ (256,000 vs 262,144 pieces; `\\n` is id 108 in one, 107 in the
other). Both are SentencePiece BPE without a dummy prefix, and their newlines (`\\n` ... `\\n` x 31), whitespace runs
(`▁▁` ... `▁` x 31), tabs and `<unusedN>` are added tokens that are not special. The bug that hid there: added tokens
were all keyed by name and appended their content, so a Gemma student's `▁▁▁▁` reached the teacher as four `▁`
characters (code indentation), and its newline was paired with no teacher token (a Gemma teacher's with its byte
piece `<0x0A>`, which it never writes). Each check below is independent of the code under test: a tokenizer's own
encoding, or a pairing built from the pieces' strings. The files come from scripts/fetch_vocabularies.sh (npm).
"""

import pytest
import torch
from gemma_models import gemma_models, sentencepiece_string_pairs, shared_vocabulary_kl
from helpers import cross_tokenizer_step

from trl_esr.cross_tokenizer import SharedVocabulary, token_bytes


def _pairs(student, teacher) -> dict[int, int]:
    shared = SharedVocabulary.build(student, teacher)
    assert shared.first_student_ids is None  # no dummy prefix on either side: one vocabulary for every position
    return dict(zip(shared.student_ids.tolist(), shared.teacher_ids.tolist(), strict=True))


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_added_text_tokens_append_what_the_decoder_writes(vocabularies, name):
    """Gemma's decoder writes `▁` as a space (then byte fallback): every added token that is not special appends its
    content so rewritten, specials their content as it is."""
    tokenizer = vocabularies[name]
    table = token_bytes(tokenizer)
    added = tokenizer.added_tokens_decoder
    for token_id, token in added.items():
        expected = token.content if token.special else token.content.replace("▁", " ")
        assert table[token_id] == expected.encode(), (token_id, token.content)
    assert sum(not token.special for token in added.values()) > 140  # newlines, whitespace runs, tabs, <unusedN>


PAIRS = [("gemma2", "gemma3"), ("gemma2", "qwen3"), ("qwen3", "gemma3"), ("gemma3", "llama3")]


@pytest.mark.parametrize("student_name, teacher_name", PAIRS)
def test_newlines_and_indentation_pair_with_the_token_each_side_writes(vocabularies, student_name, teacher_name):
    student, teacher = vocabularies[student_name], vocabularies[teacher_name]
    pairs = _pairs(student, teacher)
    for text in ["\n", "\n\n", "\n\n\n", "\t", "  ", "    ", " " * 8]:
        (student_id,) = student(text, add_special_tokens=False)["input_ids"]
        (teacher_id,) = teacher(text, add_special_tokens=False)["input_ids"]
        assert pairs.get(student_id) == teacher_id, (repr(text), student_id, teacher_id)


def test_the_papers_cross_family_pair_shares_the_vocabulary_its_pieces_spell(vocabularies):
    """Gemma-2 <- Gemma-3: the shared vocabulary is exactly the one built from the pieces' strings (70.6 % of
    Gemma 2's, 180,762 pairs; only 51 pieces keep their id), and a word is paired across its two ids."""
    student, teacher = vocabularies["gemma2"], vocabularies["gemma3"]
    pairs = _pairs(student, teacher)
    assert pairs == sentencepiece_string_pairs(student, teacher)
    assert 0.70 < len(pairs) / len(student) < 0.71
    for word in ["▁The", "▁answer", "▁boxed", "\n"]:
        assert pairs[student.convert_tokens_to_ids(word)] == teacher.convert_tokens_to_ids(word), word
    assert student.convert_tokens_to_ids("\n") != teacher.convert_tokens_to_ids("\n")  # 108 vs 107


def test_a_gemma2_student_with_a_gemma3_teacher_gives_the_kl_computed_by_hand(vocabularies, make_args, tmp_path):
    """The paper's cross-family pair, tiny models of its architectures with the real vocabularies, rollouts of k
    space-led pieces: the loss is the mean over rollouts of the mean over k positions of KL(student || teacher) on the
    shared vocabulary built from the pieces' strings, each model's soft-capped logits from its own forward on its own
    tokens (`helpers.cross_tokenizer_step`)."""
    student_tokenizer, teacher_tokenizer, k = vocabularies["gemma2"], vocabularies["gemma3"], 5
    words = ["▁The", "▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁answer", "▁is"]
    allowed = {student_tokenizer.convert_tokens_to_ids(word) for word in words}
    models = gemma_models(student_tokenizer, teacher_tokenizer)
    loss, rollouts = cross_tokenizer_step(student_tokenizer, teacher_tokenizer, allowed, k, make_args, tmp_path,
                                          models=models)  # fmt: skip
    for _, student_logits, teacher_logits in rollouts:
        assert len(teacher_logits) == k  # whole words: one teacher token per student piece
        assert student_logits.abs().max() <= 30.0  # soft-capped
    pairs = sentencepiece_string_pairs(student_tokenizer, teacher_tokenizer)
    assert loss == pytest.approx(shared_vocabulary_kl(rollouts, pairs), rel=1e-4)


def _qwen3_teacher(tokenizer):
    """A tiny Qwen3 in Qwen3-4B's class and head size (151,936 rows, tied embeddings)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(vocab_size=151_936, hidden_size=24, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=12, max_position_embeddings=512,
                         tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)  # fmt: skip
    with torch.random.fork_rng():
        torch.manual_seed(1)
        model = Qwen3ForCausalLM(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


RECIPES = {  # recipe: (teacher vocabulary, teacher class, shared pieces of Gemma 2's 256,000)
    "gemma2_2b_from_gemma3_4b.yaml": ("gemma3", "Gemma3ForConditionalGeneration", 180_762),
    "gemma2_2b_from_qwen3_4b_cross_family.yaml": ("qwen3", "Qwen3ForCausalLM", 97_677),
}


@pytest.mark.parametrize("recipe", RECIPES)
def test_the_gemma_recipes_train_end_to_end_at_tiny_shapes(vocabularies, tmp_path, recipe):
    """`trl-esr train --config examples/configs/<recipe>` with the Hub ids replaced by tiny checkpoints of the same
    classes and real tokenizers (saved folders, loaded by path as Hub ids are), a local dataset with the recipe's
    `problem` column, and CPU-sized overrides (one step, without the warm-up that would give it a learning rate of
    0): every other key is the recipe's (LoRA r=32 on all linear layers, the teacher's own chat template and its
    kwargs, gradient checkpointing, sequence normalisation)."""
    import json
    from pathlib import Path

    from peft import PeftModel
    from script_worker import run_script

    from trl_esr.demo.tiny_models import save_pretrained

    teacher_name, teacher_class, shared = RECIPES[recipe]
    student_tokenizer, teacher_tokenizer = vocabularies["gemma2"], vocabularies[teacher_name]
    models = gemma_models(student_tokenizer, vocabularies["gemma3"])
    if teacher_name == "qwen3":
        models["teacher"] = _qwen3_teacher(teacher_tokenizer)
    paths = {name: save_pretrained(models[name], tokenizer, tmp_path / name)
             for name, tokenizer in (("student", student_tokenizer), ("teacher", teacher_tokenizer))}  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    rows = [{"problem": f"What is {i} + {i + 1}?", "solution": f"\\boxed{{{2 * i + 1}}}"} for i in range(8)]
    (data / "train.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    out, k = tmp_path / "run", 4
    trainer = run_script([
        "--config", str(Path(__file__).parent.parent / "examples/configs" / recipe),
        "--model_name_or_path", paths["student"], "--teacher_model_name_or_path", paths["teacher"],
        "--dataset_name", str(data), "--output_dir", str(out),
        "--use_cpu", "--bf16", "False", "--dtype", "float32", "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--esr_k", str(k), "--max_completion_length", "8",
        "--save_strategy", "no", "--logging_steps", "1", "--warmup_steps", "0",
        "--generation_kwargs", json.dumps({"suppress_tokens": [1, student_tokenizer.eos_token_id, 107]}),
    ])  # fmt: skip
    assert trainer._pairing.mode == "aligned" and trainer.state.global_step == 1
    assert isinstance(trainer.model, PeftModel) and trainer.model.peft_config["default"].r == 32
    assert type(trainer.teacher_model).__name__ == teacher_class
    log = trainer.state.log_history[0]
    assert log["esr/k"] == k and log["esr/aligned_fraction"] > 0.5
    assert log["esr/shared_vocab_fraction"] == pytest.approx(shared / 256_000)
    weights = {n: p for n, p in trainer.model.named_parameters() if "lora_B" in n}
    assert weights and any(p.abs().max() > 0 for p in weights.values())  # PEFT starts B at zero: the step moved it
    card = (out / "README.md").read_text()
    assert (out / "adapter_model.safetensors").exists() and f"| teacher | `{paths['teacher']}` |" in card
    row = (
        "| vocabulary | another tokenizer: rollouts re-tokenized for the teacher, aligned by characters, the KL "
        f"over the {shared / 256_000:.1%} of the student's vocabulary both tokenizers spell alike |"
    )
    assert row in card


def test_a_gemma3_student_trains_on_text_prompts_through_its_processor(vocabularies, make_args, tmp_path):
    """Gemma-3-4B is a vision-language checkpoint whose folder has processor files: `AutoProcessor` loads a
    `Gemma3Processor` (no torchvision needed), which the trainer keeps as its processing class, and text prompts
    train through it against a teacher with another vocabulary (Gemma 2's), rollouts of k tokens, every one aligned."""
    import json
    from pathlib import Path

    from datasets import Dataset

    from trl_esr import BoxedAccuracyCallback, ESRDistillTrainer
    from trl_esr.demo.tiny_models import save_pretrained

    models = gemma_models(vocabularies["gemma2"], vocabularies["gemma3"])  # the pair, each used the other way round
    student = save_pretrained(models["teacher"], vocabularies["gemma3"], tmp_path / "student")
    teacher = save_pretrained(models["student"], vocabularies["gemma2"], tmp_path / "teacher")
    image = {"image_processor_type": "Gemma3ImageProcessor", "processor_class": "Gemma3Processor",
             "size": {"height": 28, "width": 28}, "image_mean": [0.5] * 3, "image_std": [0.5] * 3}  # fmt: skip
    Path(student, "preprocessor_config.json").write_text(json.dumps(image))  # the Hub's files, at the tiny size
    processor = {"image_seq_length": 4, "processor_class": "Gemma3Processor"}
    Path(student, "processor_config.json").write_text(json.dumps(processor))
    k = 4
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"What is {i} + 1?"}] for i in range(4)]})
    args = make_args(max_steps=1, esr_k=k, per_device_train_batch_size=4, esr_diagnostics_steps=0,
                     generation_kwargs={"suppress_tokens": [1, vocabularies["gemma3"].eos_token_id]})  # fmt: skip
    trainer = ESRDistillTrainer(model=student, teacher_model=teacher, args=args, train_dataset=prompts)
    assert type(trainer.processing_class).__name__ == "Gemma3Processor" and trainer._pairing.mode == "aligned"
    # the \boxed{} callback renders and tokenizes text prompts with the processor's tokenizer
    question = [{"role": "user", "content": "What is 2 + 2?"}]
    boxed = BoxedAccuracyCallback(trainer, [question[0]["content"]], ["4"], every_n_steps=1, max_new_tokens=6,
                                  system_prompt=None)  # fmt: skip
    trainer.add_callback(boxed)
    trainer.train()
    template = vocabularies["gemma3"].apply_chat_template(question, tokenize=False, add_generation_prompt=True)
    assert boxed.prompts == [template] and template.startswith("<bos><start_of_turn>user\nWhat is 2 + 2?")
    [[response]] = boxed.responses
    assert boxed.history[0][0] == 1 and 0 < response.num_tokens <= 6
    log = trainer.state.log_history[0]
    assert (log["esr/tokens_generated"], log["esr/capped_fraction"]) == (4 * k, 1.0)
    assert log["esr/aligned_fraction"] > 0.5 and log["esr/shared_vocab_fraction"] == pytest.approx(180_762 / 262_145)
