"""Prompts for diagnostics: taken from a dataset's `prompt` or `messages` column and tokenised with the student's
chat template, the way TRL's trainers see them (`trl_esr.prompts`)."""

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from ..data import prompt_from_messages
from ..prompts import render_prompts


def prompt_from_row(row: dict) -> str | list[dict]:
    """The prompt of a dataset row: its `prompt` (plain text or chat messages), or its `messages` without the final
    assistant turn (the reference answer a conversational dataset carries)."""
    if "prompt" in row:
        return row["prompt"]
    if "messages" in row:
        return prompt_from_messages(list(row["messages"]))
    raise ValueError(f"A row needs a `prompt` or a `messages` column to build a prompt from; it has {sorted(row)}.")


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | list[dict]], **template_options
) -> list[list[int]]:
    """Token ids of each prompt, as the trainer's rollouts start from them: chat messages through the chat template
    with the generation prompt appended, plain text as is (`trl_esr.prompts.render_prompts`). `template_options` are
    the chat template's (`chat_template`, `tools`, TRL's `chat_template_kwargs` such as `enable_thinking=False`): a
    trainer's are `trl_esr._trl_compat.chat_template_options(trainer)`."""
    return render_prompts(tokenizer, prompts, **template_options)
