"""Checks that run when `ESRDistillTrainer` is built, so a wrong set-up fails before any GPU time is spent.

Each failure raises one `ValueError` that names the problem and the fix. Checks that only need the config and the
dataset run before the models are loaded; the ones that need the tokenizer and the model's context run right after.
"""

import logging

from datasets import Dataset
from transformers import PreTrainedTokenizerBase


logger = logging.getLogger(__name__)


def check_dataset(dataset, args, num_processes: int) -> None:
    """The `prompt` column exists and is well-formed, and the dataset fills at least one generation batch."""
    if dataset is None:
        return
    columns = dataset.column_names or list(next(iter(dataset)))  # `None` for a stream with unknown features
    if "prompt" not in columns:
        hint = (
            " It has a `messages` column: turn each conversation into a prompt by dropping its final assistant turn, "
            'e.g. `dataset.map(lambda row: {"prompt": row["messages"][:-1]})` (`trl-esr train` does this for you).'
            if "messages" in columns
            else ""
        )
        raise ValueError(
            f"The training dataset has no `prompt` column (columns: {columns}). ESR generates the responses itself, "
            f"so it needs prompts only: plain strings or lists of chat messages.{hint}"
        )
    rows = dataset["prompt"] if isinstance(dataset, Dataset) else [next(iter(dataset))["prompt"]]
    for index, prompt in enumerate(rows):
        _check_prompt(index, prompt)
    generation_batch = args.per_device_train_batch_size * args.gradient_accumulation_steps * num_processes
    if isinstance(dataset, Dataset) and len(dataset) < generation_batch:
        raise ValueError(
            f"The training dataset has {len(dataset)} prompts, fewer than one generation batch "
            f"(per_device_train_batch_size {args.per_device_train_batch_size} x gradient_accumulation_steps "
            f"{args.gradient_accumulation_steps} x {num_processes} processes = {generation_batch}), so no step would "
            "run. Add prompts or lower `per_device_train_batch_size` / `gradient_accumulation_steps`."
        )


def _check_prompt(index: int, prompt) -> None:
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError(f"Prompt {index} of the training dataset is empty. Remove empty prompts before training.")
        return
    if not isinstance(prompt, list) or not prompt:
        raise ValueError(
            f"Prompt {index} of the training dataset is {prompt!r}; a prompt must be a non-empty string or a "
            'non-empty list of messages like [{"role": "user", "content": "..."}].'
        )
    for message in prompt:
        # Arrow fills a missing key of one row with None when other rows have it.
        if not isinstance(message, dict) or message.get("role") is None or message.get("content") is None:
            raise ValueError(
                f"Prompt {index} of the training dataset has a malformed message {message!r}: each message needs a "
                '"role" and a "content", e.g. {"role": "user", "content": "..."}.'
            )
    if not any(str(message["content"]).strip() for message in prompt):
        raise ValueError(f"Prompt {index} of the training dataset has only empty messages. Remove it before training.")


def check_tokenizer(tokenizer: PreTrainedTokenizerBase, dataset) -> None:
    """An end-of-sequence token exists (rollouts must be able to end), and chat prompts have a template to render."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer of `{tokenizer.name_or_path}` has no EOS token, so a rollout could never end before its "
            "length cap. Set one, e.g. `tokenizer.eos_token = '<|endoftext|>'`, and pass it as `processing_class`."
        )
    if dataset is not None and _is_conversational(dataset) and tokenizer.chat_template is None:
        raise ValueError(
            f"The training prompts are chat messages, but the tokenizer of `{tokenizer.name_or_path}` has no chat "
            "template to render them. Use an instruct/chat tokenizer, set `tokenizer.chat_template`, or give plain-"
            "text prompts."
        )


def check_prompt_lengths(tokenizer: PreTrainedTokenizerBase, dataset, max_completion_length: int, context: int):
    """Every prompt plus a full-length completion (evaluation generates up to `max_completion_length`) fits the
    student's context window."""
    if not isinstance(dataset, Dataset):
        return
    prompts = list(dataset["prompt"])
    if _is_conversational(dataset):
        ids = tokenizer.apply_chat_template(prompts, add_generation_prompt=True, tokenize=True, return_dict=True)
    else:
        ids = tokenizer(prompts)
    lengths = [len(row) for row in ids["input_ids"]]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + max_completion_length > context:
        too_long = sum(length + max_completion_length > context for length in lengths)
        raise ValueError(
            f"{too_long} prompt(s) are too long: prompt {longest} has {lengths[longest]} tokens, and with "
            f"`max_completion_length` {max_completion_length} it exceeds the model's context of {context} tokens. "
            "Filter or shorten those prompts, or lower `max_completion_length`."
        )


def warn_if_teacher_renders_differently(student_tokenizer, teacher_tokenizer, dataset) -> None:
    """The teacher scores the student's token ids as they are, rendered with the student's chat template. If the
    teacher's own template renders the same conversation differently, its scores are biased: warn."""
    if teacher_tokenizer is None or teacher_tokenizer.chat_template is None or dataset is None:
        return
    if not _is_conversational(dataset):
        return
    prompt = next(iter(dataset))["prompt"]
    student_text = student_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    teacher_text = teacher_tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    if student_text != teacher_text:
        logger.warning(
            "The teacher's chat template renders the first prompt differently from the student's:\n"
            f"  student: {student_text!r}\n  teacher: {teacher_text!r}\n"
            "The teacher will score the student's rendering, which biases its guidance. Prefer a pair whose templates "
            "agree, or set `teacher_chat_template='teacher'` so the teacher sees its own rendering."
        )


def _is_conversational(dataset) -> bool:
    return isinstance(next(iter(dataset))["prompt"], list)
