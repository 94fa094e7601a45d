"""Every bad set-up in docs/reliability.md fails when the trainer is built, with an error naming problem and fix."""

import copy
import logging

import pytest
from datasets import Dataset

from trl_esr.demo.tiny_models import build_tiny_causal_lm, build_word_tokenizer, save_pretrained


def chat(text):
    return [{"role": "user", "content": text}]


@pytest.mark.parametrize(
    "rows, message",
    [
        ({"question": ["w1 w2"] * 4}, r"no `prompt` column \(columns: \['question'\]\)"),
        ({"messages": [chat("w1") + [{"role": "assistant", "content": "w2"}]] * 4}, r"has a `messages` column"),
        ({"prompt": ["w1 w2", "   ", "w3", "w4"]}, r"Prompt 1 of the training dataset is empty"),
        ({"prompt": [chat("w1"), [], chat("w2"), chat("w3")]}, r"Prompt 1 .* must be a non-empty string or"),
        ({"prompt": [chat("w1"), [{"text": "w2"}], chat("w2"), chat("w3")]}, r"Prompt 1 .* malformed message"),
        ({"prompt": [chat("w1"), chat(" "), chat("w2"), chat("w3")]}, r"Prompt 1 .* only empty messages"),
        ({"prompt": [chat("w1")]}, r"has 1 prompts, fewer than one generation batch .* = 2\)"),
    ],
)
def test_bad_datasets(rows, message, make_trainer, make_args):
    with pytest.raises(ValueError, match=message):
        make_trainer(make_args(), train_dataset=Dataset.from_dict(rows))


def test_chat_prompts_need_a_chat_template(make_trainer, tokenizer, make_args):
    no_template = copy.deepcopy(tokenizer)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="has no chat template"):
        make_trainer(make_args(), processing_class=no_template)


def test_tokenizer_needs_an_eos_token(make_trainer, tokenizer, make_args):
    no_eos = copy.deepcopy(tokenizer)
    no_eos.eos_token = None
    dataset = Dataset.from_dict({"prompt": ["w1 w2", "w3 w4"]})
    with pytest.raises(ValueError, match="has no EOS token"):
        make_trainer(make_args(generation_kwargs=None), train_dataset=dataset, processing_class=no_eos)


def test_prompts_longer_than_the_context(make_trainer, make_args):
    long_prompt = " ".join(["w1"] * 500)  # + 24 completion tokens > the tiny student's 512 positions
    dataset = Dataset.from_dict({"prompt": ["w1 w2", long_prompt, "w3"]})
    with pytest.raises(ValueError, match=r"1 prompt\(s\) are too long: prompt 1 has 500 tokens.*context of 512"):
        make_trainer(make_args(), train_dataset=dataset)


def test_teacher_sharing_too_little_vocabulary(make_trainer, make_args, tmp_path):
    other = build_word_tokenizer([f"x{i}" for i in range(100)])  # shares only special tokens and chat markers
    teacher = save_pretrained(build_tiny_causal_lm(other, "llama"), other, tmp_path / "other")
    with pytest.raises(ValueError, match=r"`.*other` share only 13\.0% of the student's vocabulary .* 20%"):
        make_trainer(make_args(min_shared_vocab_fraction=0.2), teacher_model=teacher)


def test_teacher_chat_template_mismatch_warns(make_trainer, tokenizer, make_args, tmp_path, caplog):
    teacher_tokenizer = copy.deepcopy(tokenizer)
    teacher_tokenizer.chat_template = teacher_tokenizer.chat_template.replace("<|assistant|>", "<|system|>")
    teacher = build_tiny_causal_lm(teacher_tokenizer, "llama")
    teacher_path = save_pretrained(teacher, teacher_tokenizer, tmp_path / "teacher")
    with caplog.at_level(logging.WARNING, logger="trl_esr.validation"):
        make_trainer(make_args(), teacher_model=teacher_path)
    assert "renders the first prompt differently" in caplog.text

    caplog.clear()
    same_template = save_pretrained(build_tiny_causal_lm(tokenizer, "llama"), tokenizer, tmp_path / "same")
    with caplog.at_level(logging.WARNING, logger="trl_esr.validation"):
        make_trainer(make_args(), teacher_model=same_template)
    assert "renders the first prompt differently" not in caplog.text


# Hardening (issue 13)


def test_teacher_sharing_only_special_tokens_is_refused(make_trainer, make_args, tmp_path):
    """13 % of the student's vocabulary is shared (above the default 10 %), but only special tokens and chat markers:
    it used to train silently."""
    other = build_word_tokenizer([f"x{i}" for i in range(100)])
    teacher = save_pretrained(build_tiny_causal_lm(other, "llama"), other, tmp_path / "other")
    with pytest.raises(ValueError, match=r"Apart from special and added tokens, .* share only 3 of the student's 43"):
        make_trainer(make_args(), teacher_model=teacher)
    # a teacher sharing most words goes through the aligned path
    close = build_word_tokenizer([f"w{i}" for i in range(30)] + [f"x{i}" for i in range(10)])
    teacher = save_pretrained(build_tiny_causal_lm(close, "llama"), close, tmp_path / "close")
    assert make_trainer(make_args(), teacher_model=teacher)._pairing.mode == "aligned"


def test_no_teacher_fails_at_construction(make_trainer, make_args):
    with pytest.raises(ValueError, match="`teacher_model` is None"):
        make_trainer(make_args(), teacher_model=None)


def test_student_built_from_config_needs_its_tokenizer(make_trainer, tokenizer, make_args):
    student = build_tiny_causal_lm(tokenizer, "qwen2")  # no `name_or_path` to load a tokenizer from
    with pytest.raises(ValueError, match="Pass the tokenizer as `processing_class=`"):
        make_trainer(make_args(), model=student, processing_class=None)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [({"temperature": 0.0}, "`temperature` must be > 0"), ({"top_p": 0.0}, "`top_p` must be in")],
)
def test_sampling_options_fail_at_config_time(make_args, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_args(**overrides)


def test_a_tokenizer_folder_is_a_valid_teacher_tokenizer_path(tokenizer, tmp_path):
    """`tokenizer.save_pretrained` writes no config.json; AutoTokenizer loads the folder, so the check accepts it."""
    from transformers import AutoTokenizer

    from trl_esr.validation import check_model_path

    tokenizer.save_pretrained(tmp_path / "tokenizer")
    assert AutoTokenizer.from_pretrained(tmp_path / "tokenizer").get_vocab() == tokenizer.get_vocab()
    check_model_path("teacher_tokenizer_name_or_path", str(tmp_path / "tokenizer"), tokenizer=True)
    with pytest.raises(ValueError, match="is a folder but not a model"):
        check_model_path("teacher_model_name_or_path", str(tmp_path / "tokenizer"))


def test_none_on_the_command_line_is_none_not_the_string(tmp_path):
    """`--system_prompt None` used to become a system message reading "None" (YAML's `null` was the only way)."""
    from trl_esr.diagnostics.cli import make_parser as suggest_k_parser
    from trl_esr.scripts.esr_distill import make_parser as train_parser
    from trl_esr.scripts.evaluate_boxed import make_parser as evaluate_parser

    nones = ["--system_prompt", "None", "--teacher_chat_template", "null"]
    script, config, _ = train_parser().parse_args_and_config(
        ["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "False", *nones,
         "--teacher_tokenizer_name_or_path", "None"])  # fmt: skip
    assert (script.system_prompt, config.teacher_chat_template, config.teacher_tokenizer_name_or_path) == (None,) * 3
    evaluate_args, _ = evaluate_parser().parse_args_and_config(["--model_name_or_path", "m", *nones[:2]])
    assert evaluate_args.system_prompt is None
    suggest_args, _ = suggest_k_parser().parse_args_and_config(["--model_name_or_path", "m", *nones])
    assert (suggest_args.system_prompt, suggest_args.teacher_chat_template) == (None, None)
    kept, _ = evaluate_parser().parse_args_and_config(["--model_name_or_path", "m", "--system_prompt", "None of it."])
    assert kept.system_prompt == "None of it."
