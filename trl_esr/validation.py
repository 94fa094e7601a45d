"""Checks that run when `ESRDistillTrainer` is built, so a wrong set-up fails before any GPU time is spent.

Each failure raises one `ValueError` that names the problem and the fix. Checks that only need the config and the
dataset run before the models are loaded; the ones that need the tokenizer and the model's context run right after.
The command-line checks at the end (model paths, dataset files, output paths) run before anything is loaded.
"""

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .jsonl import JSONLineError, json_lines


if TYPE_CHECKING:  # imported where used: `ESRConfig` runs the numeric checks, and must not import `datasets`
    from transformers import PreTrainedTokenizerBase


logger = logging.getLogger(__name__)


def has_image_column(*datasets) -> bool:
    """Whether any dataset (a `Dataset`, an `IterableDataset`, a dict of them for evaluation, or `None`) has TRL's
    `image` or `images` column."""
    for dataset in datasets:
        for part in dataset.values() if isinstance(dataset, dict) else [dataset]:
            columns = getattr(part, "column_names", None) or []
            if {"image", "images"} & set(columns):
                return True
    return False


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
    from datasets import Dataset

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


def check_tokenizer(tokenizer: "PreTrainedTokenizerBase", dataset) -> None:
    """An end-of-sequence token exists (rollouts must be able to end), and chat prompts have a template to render."""
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"The tokenizer of `{tokenizer.name_or_path}` has no EOS token, so a rollout could never end before its "
            "length cap. Set one, e.g. `tokenizer.eos_token = '<|endoftext|>'`, and pass it as `processing_class`."
        )
    if dataset is not None and _has_chat_prompts(dataset) and tokenizer.chat_template is None:
        raise ValueError(
            f"The training prompts are chat messages, but the tokenizer of `{tokenizer.name_or_path}` has no chat "
            "template to render them. Use an instruct/chat tokenizer, set `tokenizer.chat_template`, or give plain-"
            "text prompts."
        )


def check_prompt_lengths(
    tokenizer: "PreTrainedTokenizerBase", dataset, max_completion_length: int, context: int, **template_options
):
    """Every prompt plus a full-length completion (evaluation generates up to `max_completion_length`) fits the
    student's context window. `template_options`: the chat template's, as TRL renders the prompts with them
    (`trl_esr._trl_compat.chat_template_options`)."""
    from datasets import Dataset

    from .prompts import render_prompts

    if not isinstance(dataset, Dataset):
        return
    lengths = [len(row) for row in render_prompts(tokenizer, dataset["prompt"], **template_options)]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] + max_completion_length > context:
        too_long = sum(length + max_completion_length > context for length in lengths)
        raise ValueError(
            f"{too_long} prompt(s) are too long: prompt {longest} has {lengths[longest]} tokens, and with "
            f"`max_completion_length` {max_completion_length} it exceeds the model's context of {context} tokens. "
            "Filter or shorten those prompts, or lower `max_completion_length`."
        )


def warn_if_teacher_renders_differently(student_tokenizer, teacher_tokenizer, dataset, **template_options) -> None:
    """The teacher scores the student's token ids as they are, rendered with the student's chat template. If the
    teacher's own template renders the same conversation differently, its scores are biased: warn. `template_options`:
    the student's rendering options (`trl_esr._trl_compat.chat_template_options`); the teacher's template gets the
    same ones but its own template."""
    from .prompts import render_prompts

    if teacher_tokenizer is None or teacher_tokenizer.chat_template is None or dataset is None:
        return
    if not _has_chat_prompts(dataset):
        return
    prompt = next(iter(dataset))["prompt"]
    [student_text] = render_prompts(student_tokenizer, [prompt], tokenize=False, **template_options)
    teacher_options = {**template_options, "chat_template": None}
    [teacher_text] = render_prompts(teacher_tokenizer, [prompt], tokenize=False, **teacher_options)
    if student_text != teacher_text:
        logger.warning(
            "The teacher's chat template renders the first prompt differently from the student's:\n"
            f"  student: {student_text!r}\n  teacher: {teacher_text!r}\n"
            "The teacher will score the student's rendering, which biases its guidance. Prefer a pair whose templates "
            "agree, or set `teacher_chat_template='teacher'` so the teacher sees its own rendering."
        )


def _has_chat_prompts(dataset) -> bool:
    from .prompts import is_chat

    return is_chat(next(iter(dataset))["prompt"])


def check_models(model, teacher_model, processing_class) -> None:
    """A teacher is given; a student built in Python (no path to load a tokenizer from) comes with its tokenizer."""
    if teacher_model is None:
        raise ValueError(
            "`teacher_model` is None: on-policy distillation needs a teacher to score the student's rollouts. Pass "
            "`teacher_model=` (a Hub id, a local folder or a loaded model)."
        )
    from transformers import PreTrainedModel

    from ._trl_compat import model_id  # TRL is loaded by now: the trainer calls this

    if processing_class is None and isinstance(model, PreTrainedModel) and not model_id(model):
        raise ValueError(
            "The student was built in Python (its config has no `name_or_path`), so there is no folder to load its "
            "tokenizer from. Pass the tokenizer as `processing_class=`."
        )


# Command-line inputs: checked before any model or dataset is loaded.

# Extensions that mark a `--dataset_name` (or a model id) as a local file rather than a Hub id.
_DATA_FILE_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".txt", ".arrow")


def _looks_like_path(name: str) -> bool:
    """A Hub id is `name` or `org/name`; anything else (`./x`, `/abs`, `~/x`, `a/b/c`, `x.jsonl`) is a local path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith(("~", ".")) or Path(name).suffix.lower() in _DATA_FILE_SUFFIXES:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def check_model_path(
    option: str, name: str | None, adapter: bool = False, revision: str | None = None, tokenizer: bool = False
) -> None:
    """`name` (the value of `--option`) is a model folder, or has the form of a Hub id (cached at `revision`, when
    offline).

    With `adapter`, a PEFT adapter folder (`adapter_config.json`) is accepted too; with `tokenizer`, the folder need
    only hold a tokenizer (`tokenizer.save_pretrained` writes no config.json)."""
    if name is None:
        return
    path = Path(name).expanduser()
    markers = ("config.json", "adapter_config.json") if adapter else ("config.json",)
    markers = ("tokenizer_config.json", "tokenizer.json") if tokenizer else markers
    what = "tokenizer" if tokenizer else "model"
    if path.is_file():
        raise ValueError(f"`--{option}` {name!r} is a file; give the folder that holds the {what}'s {markers[0]}.")
    if path.is_dir():
        if not any((path / marker).is_file() for marker in markers):
            raise ValueError(
                f"`--{option}` {name!r} is a folder but not a {what}: it holds no {' or '.join(markers)}. Point it at "
                "the folder `save_pretrained` wrote (for a training run, `output_dir` or one of its checkpoint-N)."
            )
        return
    if _looks_like_path(name):
        raise ValueError(
            f"`--{option}` {name!r} not found: there is no such folder, and it is not a Hub id ('name' or "
            "'org/name'). Check the spelling."
        )
    from huggingface_hub import constants, try_to_load_from_cache

    if constants.HF_HUB_OFFLINE and not isinstance(try_to_load_from_cache(name, markers[0], revision=revision), str):
        at = "" if revision in (None, "main") else f" at revision {revision!r}"
        raise ValueError(
            f"`--{option}` {name!r} not found: no local folder of that name, and the Hub model{at} is not in the "
            "cache while HF_HUB_OFFLINE=1. Check the spelling, give a local folder, or download it with the network "
            "on."
        )


def resolve_dataset_source(dataset_name: str | None, dataset_files: list[str] | None):
    """`(dataset_name, dataset_files)` with a local file given as `--dataset_name` moved to `--dataset_files`; every
    file exists and is not empty. A `--dataset_name` that is a path must exist."""
    if dataset_name is not None and not dataset_files:
        path = Path(dataset_name).expanduser()
        if path.is_file():
            logger.info(f"`--dataset_name` {dataset_name!r} is a local file: loading it as `--dataset_files`.")
            dataset_name, dataset_files = None, [str(path)]
        elif not path.is_dir() and _looks_like_path(dataset_name):
            raise ValueError(
                f"`--dataset_name` {dataset_name!r} not found: there is no such file or folder, and it is not a Hub "
                "dataset id ('name' or 'org/name'). Check the spelling; local files go in `--dataset_files`."
            )
    for file in dataset_files or []:
        path = Path(file).expanduser()
        if not path.exists():
            raise ValueError(f"`--dataset_files`: {file!r} not found. Check the path.")
        if path.is_dir():
            raise ValueError(
                f"`--dataset_files`: {file!r} is a folder; list its .json/.jsonl/.parquet files, or pass the "
                "folder as `--dataset_name`."
            )
        if path.stat().st_size == 0:
            raise ValueError(f"`--dataset_files`: {file!r} is empty. It needs one prompt per line (JSONL).")
    return dataset_name, dataset_files


def explain_dataset_error(dataset_files: list[str] | None, error: Exception) -> Exception:
    """A clearer error for a local JSON Lines file that `datasets` failed to read: the file and line that is not JSON.
    Returns `error` itself when no such line is found."""
    for file in dataset_files or []:
        if Path(file).suffix.lower() not in (".json", ".jsonl"):
            continue
        with open(file, encoding="utf-8", errors="replace") as f:
            if f.read(1) == "[":  # one JSON array: `datasets` reads it whole
                continue
        try:
            for number, line, row in json_lines(file, errors="replace"):  # explaining: an odd byte must not raise
                if not isinstance(row, dict):
                    return ValueError(
                        f"`--dataset_files`: {file} line {number} is a JSON {type(row).__name__}, not an object: "
                        f'{line[:80]!r}. Each line must be one object, e.g. {{"prompt": "..."}}.'
                    )
        except JSONLineError as bad:
            return ValueError(
                f"`--dataset_files`: {file} line {bad.line_number} is not valid JSON ({bad.msg}): "
                f"{bad.line[:80]!r}. Each line must be one JSON object."
            )
    return error


def explain_load_error(option: str, split: str, dataset_files: list[str] | None, error: Exception) -> Exception | None:
    """The clearer of the two errors above for a failed `load_dataset`: a local JSON Lines file's bad line, else a
    split that cannot be found (`--option`), else `error` itself as an input error; None for a `TypeError` that
    neither explains (a bug to see with its traceback). A bad line reaches us as `DatasetGenerationError` with current
    `datasets`, and as the bare `ValueError` or `TypeError` of its JSON reader with older ones (4.7)."""
    explained = explain_dataset_error(dataset_files, error)
    if explained is not error:
        return explained
    explained = explain_split_error(option, split, bool(dataset_files), error)
    return None if explained is error and isinstance(error, TypeError) else explained


def explain_split_error(option: str, split: str, local_files: bool, error: Exception) -> Exception:
    """A clearer error for a split that `datasets` cannot find or that selects nothing, naming `--option`."""
    message = str(error)
    if not ("split" in message.lower() or "corresponds to no data" in message):
        return error
    hint = (
        " Local `--dataset_files` form a single 'train' split: take a slice of it, e.g. 'train[:90%]' / 'train[90%:]'."
        if local_files
        else " Check the dataset's split names on its Hub page."
    )
    return ValueError(f"`--{option}` {split!r}: {message}{hint}")


def check_output_dir(option: str, path: str) -> None:
    """`path` can be a folder to write into (it may not exist yet): not a file, with a writable ancestor."""
    target = Path(path).expanduser()
    if target.exists() and not target.is_dir():
        raise ValueError(f"`--{option}` {path!r} is a file; give a folder to write into.")
    existing = next(parent for parent in [target, *target.absolute().parents] if parent.exists())
    if not os.access(existing, os.W_OK):
        raise ValueError(f"`--{option}` {path!r}: {existing} is not writable. Choose another folder.")


def check_output_file(option: str, path: str) -> None:
    """`path` can be written: its folder exists and is writable, and it is not a folder itself."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ValueError(f"`--{option}` {path!r} is a folder; give a file name, e.g. {Path(path) / 'results.jsonl'}.")
    folder = target.parent
    if not folder.is_dir():
        raise ValueError(f"`--{option}` {path!r}: the folder {str(folder)!r} does not exist. Create it first.")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise ValueError(f"`--{option}` {path!r} is not writable. Choose another path.")


def check_shared_vocabulary(pairing, min_fraction: float) -> None:
    """For a teacher with another tokenizer: enough *ordinary* tokens are shared. The pairing's own check counts
    special and added tokens too, which small or unrelated vocabularies share almost only (`<eos>`, chat markers): a
    KL over those alone trains nothing useful."""
    if pairing.mode != "aligned":
        return
    student = pairing.processing_class
    from transformers import ProcessorMixin

    student = student.tokenizer if isinstance(student, ProcessorMixin) else student
    special = set(student.all_special_ids) | set(student.added_tokens_decoder)
    ordinary = len(student) - len(special)
    shared = len(set(pairing.shared.student_ids.tolist()) - special)
    if shared < min_fraction * ordinary:
        raise ValueError(
            f"Apart from special and added tokens, the student's tokenizer `{student.name_or_path}` and the teacher's "
            f"`{pairing.teacher_tokenizer.name_or_path}` share only {shared} of the student's {ordinary} ordinary "
            f"tokens ({shared / max(ordinary, 1):.1%}; minimum `min_shared_vocab_fraction` = {min_fraction:.0%}): "
            "the KL would be computed almost only on special tokens. Pick a teacher whose vocabulary overlaps more, "
            "or lower `min_shared_vocab_fraction` if you know what you are doing."
        )


# Numeric fields of TRL's `DistillationConfig` and transformers' `TrainingArguments` that users commonly set. Each
# value below fails late (at the first generation, the optimizer's creation or the first evaluation), obscurely (a
# `TypeError` about `NoneType`, a torch message naming no field) or silently (`num_train_epochs=0` trains no step,
# `save_steps=0` never saves) without a check here; docs/reliability.md lists the sweep.


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_steps(strategy) -> bool:
    return str(getattr(strategy, "value", strategy)) == "steps"


# (field, test of its value, what it must be, the fix). The test sees the raw value, `None` included.
_POSITIVE_INT = (lambda v: _is_int(v) and v > 0, "a positive int")
_NUMERIC_FIELDS = [
    ("per_device_train_batch_size", *_POSITIVE_INT, ""),
    ("per_device_eval_batch_size", *_POSITIVE_INT, ""),
    ("gradient_accumulation_steps", *_POSITIVE_INT, ""),
    ("max_completion_length", *_POSITIVE_INT,
     "It caps evaluation rollouts (and training rollouts when `esr_k=None`); the paper uses 3584 for math."),
    ("eval_accumulation_steps", lambda v: v is None or (_is_int(v) and v > 0), "a positive int or None", ""),
    ("max_steps", lambda v: _is_int(v) and v != 0, "a positive int, or -1",
     "A positive value is the number of optimizer steps; -1 trains for `num_train_epochs` (0 trains one step)."),
    ("num_train_epochs", _is_number, "a number", ""),
    ("learning_rate", lambda v: _is_number(v) and v >= 0, "a number >= 0",
     "Distillation typically uses 1e-6 to 1e-4."),
    ("weight_decay", lambda v: _is_number(v) and v >= 0, "a number >= 0",
     "A negative decay grows the weights at every step; 0 turns it off."),
    ("adam_beta1", lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)", "AdamW's default is 0.9."),
    ("adam_beta2", lambda v: _is_number(v) and 0 <= v < 1, "in [0, 1)", "AdamW's default is 0.999."),
    ("adam_epsilon", lambda v: _is_number(v) and v > 0, "> 0",
     "AdamW divides by it where a gradient's second moment is 0, so 0 makes the weights NaN. The default is 1e-8."),
    ("max_grad_norm", lambda v: v is None or _is_number(v), "a number or None (0 or None: no clipping)", ""),
    ("warmup_steps", lambda v: _is_number(v) and v >= 0, "a number >= 0 (below 1: a fraction of the steps)", ""),
    ("seed", lambda v: _is_int(v) and 0 <= v < 2**32, "an int in [0, 2**32)", ""),
    ("data_seed", lambda v: v is None or (_is_int(v) and 0 <= v < 2**32), "an int in [0, 2**32) or None", ""),
    ("dataloader_num_workers", lambda v: _is_int(v) and v >= 0, "an int >= 0 (0: load in the main process)", ""),
    # Sampling: the generation backends check these only when the first rollout is generated.
    ("temperature", lambda v: _is_number(v) and v > 0, "> 0",
     "On-policy distillation samples the student's rollouts; the paper samples at 0.7. For greedy rollouts set "
     "`generation_kwargs={'do_sample': False}` instead."),
    ("top_p", lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]", "The paper uses 0.95; 1.0 turns it off."),
    ("top_k", lambda v: _is_int(v) and v >= 0, "an int >= 0", "0 turns top-k filtering off."),
    ("min_p", lambda v: v is None or (_is_number(v) and 0 <= v <= 1), "in [0, 1] or None",
     "Typical values are 0.01 to 0.2; None or 0 turns it off."),
    ("repetition_penalty", lambda v: _is_number(v) and v > 0, "> 0", "1.0 turns it off; above 1 discourages repeats."),
    ("beta", lambda v: _is_number(v) and 0 <= v <= 1, "in [0, 1]",
     "It selects the divergence: 0 is the forward KL, 0.5 the JSD, 1 the reverse KL (the paper's)."),
]  # fmt: skip
# Checked only when their strategy is "steps": at 0 or below, transformers reads them as a fraction of 0 steps and
# never saves (or logs or evaluates at odd steps), silently.
_STEP_FIELDS = [
    ("logging_steps", "logging_strategy", lambda v: _is_number(v) and v > 0, "Or set `logging_strategy='no'`."),
    (
        "save_steps",
        "save_strategy",
        lambda v: _is_number(v) and v > 0,
        "For no checkpoints, set `save_strategy='no'`.",
    ),
    ("eval_steps", "eval_strategy", lambda v: v is None or (_is_number(v) and v >= 0), "None or 0: `logging_steps`."),
]
_VLLM_FIELDS = [
    ("vllm_gpu_memory_utilization", lambda v: _is_number(v) and 0 < v <= 1, "in (0, 1]",
     "It is the share of GPU memory the colocated engine may take (TRL's default: 0.3)."),
    ("vllm_tensor_parallel_size", *_POSITIVE_INT, ""),
    ("vllm_max_model_length", lambda v: v is None or (_is_int(v) and v > 0), "a positive int or None", ""),
]  # fmt: skip


def _fail(name: str, value, rule: str, fix: str = ""):
    return ValueError(f"`{name}` must be {rule}, got {value!r}.{' ' + fix if fix else ''}")


def check_training_numbers(config) -> None:
    """Type and range checks of TRL's and transformers' numeric fields, run when an `ESRConfig` is built and before
    transformers' own `__post_init__` (whose checks fail on `None` with a `TypeError`). Without them, each value
    rejected here failed late (at the first generation, the optimizer's creation or the first evaluation), obscurely
    (a torch message naming no field) or silently (`num_train_epochs=0` trains no step, `save_steps=0` never saves);
    docs/reliability.md lists the sweep."""
    if config.top_k is None:  # HF generation reads None as "off", vLLM does not: give it one meaning for both
        config.top_k = 0
    for name, ok, rule, fix in _NUMERIC_FIELDS:
        if not ok(getattr(config, name)):
            raise _fail(name, getattr(config, name), rule, fix)
    for name, strategy, ok, fix in _STEP_FIELDS:
        if _is_steps(getattr(config, strategy)) and not ok(getattr(config, name)):
            raise _fail(name, getattr(config, name), f"> 0 with `{strategy}='steps'` (below 1: a fraction)", fix)
    for name, ok, rule, fix in _VLLM_FIELDS if config.use_vllm else []:
        if not ok(getattr(config, name)):
            raise _fail(name, getattr(config, name), rule, fix)
    if config.max_steps < 0 and config.num_train_epochs <= 0:
        raise ValueError(
            f"`num_train_epochs` must be > 0 when `max_steps` is {config.max_steps} (train by epochs), got "
            f"{config.num_train_epochs}: no step would run. Set `num_train_epochs` (e.g. 1) or a positive `max_steps`."
        )
    if config.learning_rate > 1:
        logger.warning(
            f"`learning_rate` is {config.learning_rate:g}, far above the usual 1e-6 to 1e-4: the first updates will "
            "likely overflow the weights, and the non-finite guard will then stop the run."
        )


def check_padding_number(config) -> None:
    """`pad_to_multiple_of`, once TRL has turned its string forms into an int or None (0 used to end the first step
    in a `ZeroDivisionError`, after the rollouts)."""
    value = config.pad_to_multiple_of
    if not (value is None or (_is_int(value) and value > 0)):
        raise _fail("pad_to_multiple_of", value, "a positive int or None", "None: no padding.")


def cli_none(config, *names: str) -> None:
    """Set each of `config`'s optional string fields given as "None" or "null" to `None`: a YAML `--config` can write
    `null`, but on the command line `--system_prompt None` is the string "None", which would become a system message
    (or a Jinja template) that reads "None"."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, str) and value.lower() in ("none", "null"):
            setattr(config, name, None)


def json_dict(option: str, value) -> dict | None:
    """A command-line option holding a JSON object (`--chat_template_kwargs '{"enable_thinking": false}'`), as a
    dict; a dict (from a YAML `--config`) or `None` as it is. Anything else raises one line naming the option."""
    import json

    if value is None or isinstance(value, dict):
        return value
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as error:
        raise ValueError(f"`--{option}` must be a JSON object, e.g. '{{\"enable_thinking\": false}}'; got {value!r} "
                         f"({error.msg}).") from None  # fmt: skip
    if not isinstance(parsed, dict):
        raise ValueError(f"`--{option}` must be a JSON object (keyword arguments), got {value!r}.")
    return parsed
