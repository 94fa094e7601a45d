"""`trl_esr.prompts`: the one rendering path (chat template + generation prompt, or plain text as TRL tokenises it)
and the left padding, against token sequences written out by hand."""

import pytest
import torch
from real_tokenizers import llama3_tokenizer, qwen_tokenizer

from trl_esr.prompts import is_chat, left_pad, render_prompts


def ids_of(tokenizer, text: str) -> list[int]:
    """The word tokenizer's ids of a whitespace-separated string, looked up one token at a time."""
    return tokenizer.convert_tokens_to_ids(text.split())


CHATS = [
    [{"role": "user", "content": "w1 w2"}],
    [{"role": "system", "content": "w9"}, {"role": "user", "content": "w3"}],
]
# What tiny_models.CHAT_TEMPLATE writes for them, generation prompt included
CHAT_TEXTS = ["<|user|> w1 w2 <eos> <|assistant|>", "<|system|> w9 <eos> <|user|> w3 <eos> <|assistant|>"]


def test_chat_prompts_render_with_the_template_and_the_generation_prompt(tokenizer):
    assert render_prompts(tokenizer, CHATS, tokenize=False) == CHAT_TEXTS
    assert render_prompts(tokenizer, CHATS) == [ids_of(tokenizer, text) for text in CHAT_TEXTS]


def test_a_chat_template_and_template_kwargs_replace_the_tokenizers(tokenizer):
    template = "{% for m in messages %}{{ m['content'] }} {% endfor %}{% if flag %}w39{% endif %}"
    assert render_prompts(tokenizer, CHATS, chat_template=template, flag=True) == [
        ids_of(tokenizer, "w1 w2 w39"),
        ids_of(tokenizer, "w9 w3 w39"),
    ]


def test_plain_text_is_tokenised_as_is(tokenizer):
    assert render_prompts(tokenizer, ["w1 w2", "w3"]) == [ids_of(tokenizer, "w1 w2"), ids_of(tokenizer, "w3")]
    assert render_prompts(tokenizer, ["w1 w2"], tokenize=False) == ["w1 w2"]
    assert render_prompts(tokenizer, []) == []


def test_real_llama3_chat_prompt_gets_one_bos():
    """Llama-3's template writes `<|begin_of_text|>` itself: the tokenizer must not add a second one."""
    tokenizer = llama3_tokenizer()
    bos = tokenizer.convert_tokens_to_ids("<|begin_of_text|>")
    text = (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    [ids] = render_prompts(tokenizer, [[{"role": "user", "content": "Hi there"}]])
    assert ids == tokenizer.encode(text, add_special_tokens=False) and ids.count(bos) == 1 and ids[0] == bos


def test_real_qwen3_non_thinking_mode():
    tokenizer = qwen_tokenizer("3")
    chat = [[{"role": "user", "content": "1+1?"}]]
    plain = "<|im_start|>user\n1+1?<|im_end|>\n<|im_start|>assistant\n"
    assert render_prompts(tokenizer, chat, tokenize=False) == [plain]
    non_thinking = render_prompts(tokenizer, chat, tokenize=False, enable_thinking=False)
    assert non_thinking == [plain + "<think>\n\n</think>\n\n"]
    think = tokenizer.convert_tokens_to_ids(["<think>", "</think>"])
    [ids] = render_prompts(tokenizer, chat, enable_thinking=False)
    assert [i for i in ids if i in think] == think  # the added tokens, each one id


@pytest.mark.parametrize(
    "prompt, expected",
    [("w1 w2", False), ([{"role": "user", "content": "w1"}], True), ({"role": "user", "content": "w1"}, False)],
)
def test_is_chat(prompt, expected):
    assert is_chat(prompt) is expected


def test_left_pad_right_aligns_each_row():
    ids, mask = left_pad([[5, 6, 7], [8], []], pad_token_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 0, 0]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 0, 0]]
    assert ids.dtype == mask.dtype == torch.long
