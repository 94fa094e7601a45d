"""Prompt datasets for on-policy distillation: load a Hub dataset or local files and turn each row into a prompt.

On-policy distillation needs prompts only: the student writes the responses. Real datasets rarely ship a `prompt`
column, though. Chat datasets carry `messages` whose final assistant turn is a reference answer (dropped here, the
student replaces it), and problem sets such as NuminaMath-CoT keep the question in a column like `problem`. The
functions below produce TRL's prompt-only format, a `prompt` column holding either a string or a list of chat messages,
optionally preceded by a system message (the paper's prompts ask for step-by-step reasoning and a final `\\boxed{}`).
"""

from pathlib import Path

from datasets import Dataset, IterableDataset, load_dataset


# `datasets` builder for each local file extension we accept
_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}


def load_prompt_dataset(
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    dataset_files: list[str] | None = None,
    split: str = "train",
    streaming: bool = False,
) -> Dataset | IterableDataset:
    """Load one split of a Hub dataset (`dataset_name`, optionally `dataset_config`) or of local json/jsonl/parquet
    files (`dataset_files`, all of one format). `split` takes `datasets`' slicing syntax, e.g. `"train[:3200]"`."""
    if (dataset_name is None) == (not dataset_files):
        raise ValueError(
            "Give exactly one dataset source: `--dataset_name` (a Hub dataset or a local dataset folder) or "
            f"`--dataset_files` (local json/jsonl/parquet files); got dataset_name={dataset_name!r}, "
            f"dataset_files={dataset_files!r}."
        )
    if dataset_name is not None:
        return load_dataset(dataset_name, name=dataset_config, split=split, streaming=streaming)
    builders = {_FILE_BUILDERS.get(Path(file).suffix.lower()) for file in dataset_files}
    if None in builders or len(builders) != 1:
        raise ValueError(
            f"`--dataset_files` must all be .json/.jsonl or all .parquet files; got {dataset_files}. Convert them to "
            "one of these formats."
        )
    # Local files form a single "train" split; `split` may still slice it ("train[:100]").
    return load_dataset(builders.pop(), data_files={"train": list(dataset_files)}, split=split, streaming=streaming)


def to_prompt_dataset(
    dataset: Dataset | IterableDataset, prompt_column: str = "prompt", system_prompt: str | None = None
) -> Dataset | IterableDataset:
    """Return `dataset` with a `prompt` column TRL's distillation trainers accept.

    The prompt comes from `prompt_column` when the dataset has it (a string or a list of chat messages), otherwise,
    for the default `"prompt"` only, from a `messages` column without its final assistant turn (a column named on
    purpose and missing, a typo such as `--prompt_column problme`, is an error, not a silent switch to `messages`).
    With `system_prompt`, every prompt becomes a conversation that starts with that system message (a string prompt
    becomes the user turn), unless it already starts with a system message. The source column is replaced; other
    columns are kept (the trainer drops them).
    """
    columns = dataset.column_names
    if prompt_column in columns:
        source = prompt_column
    elif "messages" in columns and prompt_column == "prompt":
        source = "messages"
    elif prompt_column != "prompt":
        raise ValueError(
            f"The dataset has no {prompt_column!r} column (`--prompt_column`); its columns are {columns}. Check the "
            "spelling, or leave `--prompt_column` unset to use a 'prompt' or 'messages' column."
        )
    else:
        raise ValueError(
            f"The dataset has no {prompt_column!r} column and no 'messages' column to build prompts from; its columns "
            f"are {columns}. Point `--prompt_column` at the column holding the prompt (e.g. `--prompt_column problem` "
            "for NuminaMath-CoT)."
        )

    def convert(example: dict) -> dict:
        prompt = example[source]
        if source == "messages":
            prompt = prompt_from_messages(prompt)
        return {"prompt": with_system_prompt(prompt, system_prompt) if system_prompt else prompt}

    remove = [source] if source != "prompt" else []
    if "prompt" in columns and source != "prompt":
        remove.append("prompt")  # replaced by the converted column
    return dataset.map(convert, remove_columns=remove)


def prompt_from_messages(messages: list[dict]) -> list[dict]:
    """The conversation up to (without) its final assistant turn: the turns the student must answer."""
    if messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise ValueError(
            f"A `messages` conversation must end with a user turn once its final assistant turn is dropped; got roles "
            f"{[m['role'] for m in messages]}."
        )
    return messages


def with_system_prompt(prompt: str | list[dict], system_prompt: str) -> list[dict]:
    """`prompt` as a conversation starting with `system_prompt` (kept as is if it already has a system message)."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": system_prompt}, *messages]
