"""Prompts for diagnostics: taken from a dataset's `prompt` or `messages` column and tokenised with the student's
chat template, the way TRL's trainers see them."""

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from ..data import prompt_from_messages


def prompt_from_row(row: dict) -> str | list[dict]:
    """The prompt of a dataset row: its `prompt` (plain text or chat messages), or its `messages` without the final
    assistant turn (the reference answer a conversational dataset carries)."""
    if "prompt" in row:
        return row["prompt"]
    if "messages" in row:
        return prompt_from_messages(list(row["messages"]))
    raise ValueError(f"A row needs a `prompt` or a `messages` column to build a prompt from; it has {sorted(row)}.")


def tokenize_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str | list[dict]]) -> list[list[int]]:
    """Token ids of each prompt: chat messages go through the chat template with the generation prompt appended (as
    in TRL's `_tokenize_prompts`); plain text is tokenised as is."""
    ids = []
    for prompt in prompts:
        if isinstance(prompt, str):
            ids.append(tokenizer(prompt)["input_ids"])
        else:
            encoded = tokenizer.apply_chat_template(
                prompt, add_generation_prompt=True, tokenize=True, return_dict=True
            )
            ids.append(list(encoded["input_ids"]))
    return ids
