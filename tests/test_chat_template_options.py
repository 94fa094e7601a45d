"""Everything that renders "the prompt the student sees" outside TRL's loop renders it as TRL does, with the config's
`chat_template_kwargs`: a Qwen3 student trained with `enable_thinking=False` must be measured, evaluated and length-
checked with that block too. The reference is TRL's own `_tokenize_prompts` on the same trainer."""

import copy

import pytest
from datasets import Dataset

from trl_esr import BoxedAccuracyCallback
from trl_esr._trl_compat import chat_template_options
from trl_esr.demo.tiny_models import CHAT_TEMPLATE, build_tiny_causal_lm, save_pretrained
from trl_esr.diagnostics import ESRDiagnosticsCallback


# Qwen3's switch, in the word vocabulary: `enable_thinking=False` writes an (empty) thinking block after the turn.
THINKING_TEMPLATE = CHAT_TEMPLATE.replace(
    "<|assistant|>{% endif %}", "<|assistant|>{% if enable_thinking is false %} w38 w39{% endif %}{% endif %}"
)
PROMPTS = [[{"role": "user", "content": "w1 w2 w3"}], [{"role": "user", "content": "w4 w5"}]]


@pytest.fixture
def thinking_tokenizer(tokenizer):
    thinking = copy.deepcopy(tokenizer)
    thinking.chat_template = THINKING_TEMPLATE
    return thinking


@pytest.fixture
def thinking_trainer(make_trainer, make_args, thinking_tokenizer):
    args = make_args(chat_template_kwargs={"enable_thinking": False}, esr_diagnostics_steps=0)
    return make_trainer(args, train_dataset=Dataset.from_dict({"prompt": PROMPTS * 2}),
                        processing_class=thinking_tokenizer)  # fmt: skip


def trl_prompt_ids(trainer, prompts) -> list[list[int]]:
    prompt_ids, _, _ = trainer._tokenize_prompts(prompts)  # TRL's own rendering of the training prompts
    return [list(ids) for ids in prompt_ids]


def test_diagnostics_rollouts_start_from_the_prompts_training_sees(thinking_trainer, thinking_tokenizer):
    callback = ESRDiagnosticsCallback(thinking_trainer, every_n_steps=1, num_rollouts=4)
    w38 = thinking_tokenizer.convert_tokens_to_ids("w38")
    expected = trl_prompt_ids(thinking_trainer, PROMPTS)
    assert all(w38 in ids for ids in expected)  # the switch is on in TRL's rendering
    assert sorted(callback.prompt_ids) == sorted(expected * 2)  # 4 of the 4 rows, in the callback's order


def test_boxed_accuracy_renders_the_problems_as_training_renders_its_prompts(thinking_trainer, thinking_tokenizer):
    callback = BoxedAccuracyCallback(thinking_trainer, ["w1 w2 w3"], ["1"], system_prompt=None)
    ids = thinking_tokenizer(callback.prompts, add_special_tokens=False)["input_ids"]
    assert ids == trl_prompt_ids(thinking_trainer, PROMPTS[:1])


def test_the_prompt_length_check_counts_the_template_options(make_trainer, make_args, thinking_tokenizer, tmp_path):
    """The longest prompt is 6 tokens bare and 8 with the thinking block; with 24 completion tokens a 31-token context
    fits the bare prompt only: the trainer refuses it only when the block is rendered, as TRL will render it."""
    student = build_tiny_causal_lm(thinking_tokenizer, "qwen2", max_position_embeddings=31, seed=0)
    path = save_pretrained(student, thinking_tokenizer, tmp_path / "short-context")
    dataset = Dataset.from_dict({"prompt": PROMPTS * 2})
    assert max(len(ids) for ids in thinking_tokenizer.apply_chat_template(PROMPTS, add_generation_prompt=True)
               ["input_ids"]) == 6  # fmt: skip
    make_trainer(make_args(max_completion_length=24), model=path, train_dataset=dataset,
                 processing_class=thinking_tokenizer)  # fmt: skip
    with pytest.raises(ValueError, match="prompt 0 has 8 tokens"):
        make_trainer(make_args(max_completion_length=24, chat_template_kwargs={"enable_thinking": False}), model=path,
                     train_dataset=dataset, processing_class=thinking_tokenizer)  # fmt: skip


def test_options_are_trls(thinking_trainer):
    assert chat_template_options(thinking_trainer) == {"tools": None, "chat_template": None, "enable_thinking": False}
