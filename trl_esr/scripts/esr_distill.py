"""
On-policy distillation with Early Stopping Rollout, in the shape of TRL's `trl/scripts/distillation.py`.

Run it as `trl-esr train ...`, `python examples/scripts/esr_distill.py ...`, or under `accelerate launch` / `torchrun`
with the same arguments. Any option can also come from a YAML file given with `--config` (see `examples/configs/`);
command-line options override the file. `examples/scripts/esr_distill.py` shows full, LoRA and multi-GPU command
lines; for QLoRA (student `--load_in_4bit`, teacher `--teacher_load_in_4bit`) on one 24 GB GPU:

```bash
trl-esr train --config examples/configs/qwen3_1.7b_from_qwen3_8b_qlora.yaml
```
"""

import dataclasses
import difflib
import os
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

from .. import validation
from ..config import ESRConfig
from ..data import load_prompt_dataset, to_prompt_dataset
from ..trainer import ESRDistillTrainer


@dataclass
class ESRScriptArguments(ScriptArguments):
    """
    TRL's [`~trl.ScriptArguments`] plus local dataset files, prompt building and teacher quantization.

    Args:
        dataset_files (`list[str]`, *optional*):
            Local `.json`/`.jsonl`/`.parquet` files to train on, instead of `dataset_name`. They form one `"train"`
            split, which `dataset_train_split` may slice (e.g. `"train[:1000]"`).
        prompt_column (`str`, *optional*, defaults to `"prompt"`):
            Column holding the prompt (a string or chat messages). If the dataset lacks it, prompts are taken from a
            `messages` column without its final assistant turn.
        system_prompt (`str`, *optional*):
            System message put before every prompt that has none (a string prompt becomes the user turn).
        teacher_load_in_4bit (`bool`, *optional*, defaults to `False`):
            Load the teacher in 4 bits (bitsandbytes; `bnb_4bit_quant_type`, `use_bnb_nested_quant` and `dtype` as
            for the student).
        teacher_load_in_8bit (`bool`, *optional*, defaults to `False`):
            Load the teacher in 8 bits (bitsandbytes).
        boxed_eval_dataset_name (`str`, *optional*):
            Problems with reference answers (MATH-500 style) whose `\\boxed{}` scores are logged during training as
            `boxed/avg@1`, `boxed/multi_box`, `boxed/median_tokens`, ... ([`BoxedAccuracyCallback`]: greedy, up to
            `max_completion_length` tokens, the training system prompt).
        boxed_eval_dataset_split (`str`, *optional*, defaults to `"test[:100]"`), boxed_eval_problem_column (`str`,
        *optional*, defaults to `"problem"`), boxed_eval_answer_column (`str`, *optional*, defaults to `"answer"`):
            Which rows and columns of it.
        boxed_eval_steps (`int`, *optional*, defaults to `25`):
            Measure every this many optimizer steps.
    """

    dataset_files: list[str] | None = field(
        default=None,
        metadata={
            "help": "Local .json/.jsonl/.parquet files to train on, instead of `dataset_name`. They form one 'train' "
            "split, which `dataset_train_split` may slice (e.g. 'train[:1000]')."
        },
    )
    prompt_column: str = field(
        default="prompt",
        metadata={
            "help": "Column holding the prompt (a string or chat messages), e.g. 'problem' for NuminaMath-CoT. "
            "Without it, prompts come from a 'messages' column minus its final assistant turn."
        },
    )
    system_prompt: str | None = field(
        default=None,
        metadata={
            "help": "System message put before every prompt that has none (a string prompt becomes the user turn)."
        },
    )
    teacher_load_in_4bit: bool = field(
        default=False,
        metadata={
            "help": "Load the teacher in 4 bits (bitsandbytes). TRL loads it unquantized: a quantized teacher gives a "
            "slightly different target distribution, traded for memory."
        },
    )
    teacher_load_in_8bit: bool = field(
        default=False,
        metadata={"help": "Load the teacher in 8 bits (bitsandbytes)."},
    )
    boxed_eval_dataset_name: str | None = field(
        default=None,
        metadata={
            "help": "Problems with reference answers (a Hub dataset such as HuggingFaceH4/MATH-500, a local folder or "
            "a .json/.jsonl/.parquet file) whose `\\boxed{}` scores are logged every `boxed_eval_steps` steps: "
            "boxed/avg@1, boxed/multi_box, boxed/median_tokens, ... (greedy, up to `max_completion_length` tokens, "
            "HF `generate` even with vLLM rollouts: a slice of a few dozen problems keeps it cheap)."
        },
    )
    boxed_eval_dataset_split: str = field(
        default="test[:100]", metadata={"help": "Split of `boxed_eval_dataset_name`, with slicing."}
    )
    boxed_eval_problem_column: str = field(default="problem", metadata={"help": "Its column holding the problem."})
    boxed_eval_answer_column: str = field(default="answer", metadata={"help": "Its column holding the answer."})
    boxed_eval_steps: int = field(
        default=25, metadata={"help": "Measure the `\\boxed{}` scores every this many optimizer steps."}
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start a new run in an `output_dir` that holds checkpoints of an earlier one (its checkpoint-N "
            "folders are overwritten as the new run saves). Without it, such a run stops before loading anything and "
            "says how to resume."
        },
    )

    def __post_init__(self):
        validation.cli_none(self, "system_prompt")  # `--system_prompt None`: no system message
        if self.teacher_load_in_4bit and self.teacher_load_in_8bit:
            raise ValueError("`teacher_load_in_4bit` and `teacher_load_in_8bit` are exclusive: choose one.")
        if self.boxed_eval_steps <= 0:
            raise ValueError(f"`boxed_eval_steps` must be a positive integer, got {self.boxed_eval_steps}.")


class StrictTrlParser(TrlParser):
    """`TrlParser` that reports unknown keys of a `--config` file first, before the dataclasses are built: otherwise
    a typo (`esr_kk: 4`) surfaces as an error about the default it failed to override."""

    def set_defaults_with_config(self, **kwargs) -> list[str]:
        known = {action.dest for action in self._actions}
        unknown = [key for key in kwargs if key not in known]
        if unknown:
            hints = [
                f"{key!r} (did you mean {match[0]!r}?)" if (match := difflib.get_close_matches(key, known, n=1))
                else repr(key)
                for key in unknown
            ]  # fmt: skip
            raise ValueError(
                f"Unknown key(s) in the `--config` file: {', '.join(hints)}. Fix or remove them; `{self.prog} --help` "
                "lists every option."
            )
        return super().set_defaults_with_config(**kwargs)


def make_parser() -> TrlParser:
    return StrictTrlParser((ESRScriptArguments, ESRConfig, ModelConfig), prog="trl-esr train")


# Deprecation warnings that TRL's generation helper (`unwrap_model_for_generation`) triggers in transformers 5 at
# every rollout, whatever the user set: not theirs to act on.
_TRL_DEPRECATIONS = r"`(is_gradient_checkpointing|gradient_checkpointing_(enable|disable))` is deprecated"


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("ignore", message=_TRL_DEPRECATIONS, category=FutureWarning)
    try:  # a bad option or input: one line naming it, before any model is loaded
        script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
        resume = check_arguments(script_args, training_args, model_args)
    except (ValueError, OSError) as error:
        _exit_with(error)
    try:
        train(script_args, training_args, model_args, resume_from_checkpoint=resume)
    except InputError as error:  # a bad dataset, read before any model loads
        _exit_with(error)


class InputError(ValueError):
    """A bad input found by `train` before any model is loaded (the datasets): reported in one line by `main`."""


def _exit_with(error: Exception):
    print(f"trl-esr train: error: {error}", file=sys.stderr)
    raise SystemExit(2) from None


def check_arguments(script_args: ESRScriptArguments, training_args: ESRConfig, model_args: ModelConfig) -> str | None:
    """Check everything that needs no model: models and datasets exist, outputs can be written, the Hub can be reached
    for `--push_to_hub`. Returns the checkpoint to resume from (a path) or `None`. Raises `ValueError` naming the
    option and the fix."""
    if training_args.teacher_model_name_or_path is None:
        raise ValueError("A teacher model is required. Set it with `--teacher_model_name_or_path`.")
    if model_args.model_name_or_path is None:
        raise ValueError("A student model is required. Set it with `--model_name_or_path`.")
    validation.check_model_path(
        "model_name_or_path", model_args.model_name_or_path, adapter=True, revision=model_args.model_revision
    )
    teacher_revision = training_args.teacher_model_revision
    validation.check_model_path(
        "teacher_model_name_or_path", training_args.teacher_model_name_or_path, revision=teacher_revision
    )
    validation.check_model_path(
        "teacher_tokenizer_name_or_path", training_args.teacher_tokenizer_name_or_path, tokenizer=True
    )
    script_args.dataset_name, script_args.dataset_files = validation.resolve_dataset_source(
        script_args.dataset_name, script_args.dataset_files
    )
    if (
        training_args.eval_strategy != "no"
        and script_args.dataset_files
        and script_args.dataset_test_split.split("[")[0] != "train"
    ):
        raise ValueError(
            f"`--eval_strategy {training_args.eval_strategy}` evaluates on `--dataset_test_split` "
            f"{script_args.dataset_test_split!r}, but local `--dataset_files` form a single 'train' split. Hold out a "
            "slice of it: `--dataset_train_split 'train[:90%]' --dataset_test_split 'train[90%:]'`."
        )
    validation.check_output_dir("output_dir", training_args.output_dir)
    if training_args.push_to_hub:
        _check_hub_access(training_args.hub_token)
    return _checkpoint_to_resume(training_args, script_args.overwrite_output_dir)


def _checkpoint_to_resume(training_args: ESRConfig, overwrite: bool) -> str | None:
    """The checkpoint folder to resume from: `--resume_from_checkpoint PATH`, or the latest checkpoint-N in
    `output_dir` for a bare `--resume_from_checkpoint` (or `True`). An `output_dir` that holds checkpoints is never
    silently trained over from step 0."""
    from transformers.trainer_utils import get_last_checkpoint

    output_dir, resume = training_args.output_dir, training_args.resume_from_checkpoint
    latest = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if isinstance(resume, str) and resume.lower() in ("false", "none", ""):
        resume = None
    if resume is True or (isinstance(resume, str) and resume.lower() in ("true", "latest")):
        if latest is None:
            raise ValueError(
                f"`--resume_from_checkpoint` without a path resumes from the latest checkpoint-N in `--output_dir` "
                f"{output_dir!r}, but it holds none. Give a checkpoint path, or drop the option to start a new run."
            )
        return latest
    if resume is not None:
        if not os.path.isfile(os.path.join(resume, "trainer_state.json")):
            what = "not found" if not os.path.exists(resume) else "is not a checkpoint (no trainer_state.json)"
            raise ValueError(
                f"`--resume_from_checkpoint` {resume!r} {what}. Give a checkpoint-N folder of an earlier run, or "
                f"pass the option without a value to resume from the latest one in `--output_dir`."
            )
        return resume
    if latest is not None and not overwrite:
        raise ValueError(
            f"`--output_dir` {output_dir!r} already holds {os.path.basename(latest)} from an earlier run. Resume it "
            "with `--resume_from_checkpoint` (no value: the latest checkpoint), or start over with "
            "`--overwrite_output_dir` or another `--output_dir`."
        )
    return None


def _check_hub_access(token: str | None) -> None:
    """`--push_to_hub` fails only after training otherwise (or with a long network traceback when the trainer is
    built): check the network and the token now."""
    import huggingface_hub
    import transformers.trainer
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalTokenNotFoundError

    # the Trainer's own client since transformers 5.11 (its endpoint and headers); before, huggingface_hub's default
    hub_api = getattr(transformers.trainer, "hf_api", huggingface_hub.HfApi)
    try:
        hub_api().whoami(token=token)
    except LocalTokenNotFoundError:
        if constants.HF_HUB_OFFLINE:
            raise ValueError(_offline_push_message()) from None
        raise ValueError(
            "`--push_to_hub` needs a Hub token: log in with `hf auth login`, set HF_TOKEN, or pass `--hub_token`."
        ) from None
    except Exception as error:  # network errors come from several libraries (httpx, requests, huggingface_hub)
        if constants.HF_HUB_OFFLINE:
            raise ValueError(_offline_push_message()) from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(
            f"`--push_to_hub`: cannot reach the Hub ({type(error).__name__}: {reason}). Check the network and the "
            "token, or train without `--push_to_hub` and upload `output_dir` later with `hf upload`."
        ) from None


def _offline_push_message() -> str:
    return (
        "`--push_to_hub` needs the network, but HF_HUB_OFFLINE=1. Unset HF_HUB_OFFLINE, or train without "
        "`--push_to_hub` and upload `output_dir` later with `hf upload`."
    )


def train(
    script_args: ESRScriptArguments,
    training_args: ESRConfig,
    model_args: ModelConfig,
    resume_from_checkpoint: str | None = None,
) -> None:
    """Build the trainer, train (resuming from `resume_from_checkpoint` if given), save the model, its card and the
    log history, and push them with `--push_to_hub`. `main` checks the arguments first (`check_arguments`)."""
    if training_args.teacher_model_name_or_path is None:
        raise ValueError("A teacher model is required. Set it with `--teacher_model_name_or_path`.")
    if model_args.model_name_or_path is None:
        raise ValueError("A student model is required. Set it with `--model_name_or_path`.")

    quantization_config = set_model_init_kwargs(script_args, training_args, model_args)
    train_dataset, eval_dataset = prompt_datasets(script_args, training_args)
    boxed_problems = _boxed_eval_problems(script_args)
    trainer = ESRDistillTrainer(
        model=model_args.model_name_or_path,
        teacher_model=training_args.teacher_model_name_or_path,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        quantization_config=quantization_config,
        peft_config=get_peft_config(model_args),
    )
    if boxed_problems is not None:
        trainer.add_callback(_boxed_eval_callback(trainer, script_args, *boxed_problems))
    train_save_and_push(trainer, script_args, training_args, resume_from_checkpoint)


def _boxed_eval_problems(script_args: ESRScriptArguments) -> tuple[list[str], list[str]] | None:
    """The `--boxed_eval_dataset_name` problems and answers (`None` without it); a bad one raises `InputError`, before
    any model loads."""
    from ..evaluation import load_problems

    if script_args.boxed_eval_dataset_name is None:
        return None
    try:
        return load_problems(
            script_args.boxed_eval_dataset_name, script_args.boxed_eval_dataset_split,
            script_args.boxed_eval_problem_column, script_args.boxed_eval_answer_column, option_prefix="boxed_eval_",
        )  # fmt: skip
    except ValueError as error:  # a missing column or an empty split: the message names the option
        raise InputError(error) from error
    except Exception as error:  # not found, unreadable: `datasets` raises several types
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"`--boxed_eval_dataset_name` {script_args.boxed_eval_dataset_name!r} (split "
            f"{script_args.boxed_eval_dataset_split!r}) could not be loaded: {type(error).__name__}: {reason}"
        ) from error


def _boxed_eval_callback(trainer: ESRDistillTrainer, script_args: ESRScriptArguments, problems, answers):
    """`BoxedAccuracyCallback` on the problems, with the training system prompt; a sharded student (which it cannot
    measure) stops the run here, after the models load but before any step."""
    from ..boxed_eval import BoxedAccuracyCallback

    try:
        return BoxedAccuracyCallback(trainer, problems, answers, script_args.boxed_eval_steps,
                                     system_prompt=script_args.system_prompt)  # fmt: skip
    except ValueError as error:
        raise InputError(f"`--boxed_eval_dataset_name`: {error} Or drop `--boxed_eval_dataset_name`.") from error


def set_model_init_kwargs(script_args: ESRScriptArguments, training_args: ESRConfig, model_args: ModelConfig):
    """Fill `training_args.model_init_kwargs` and `teacher_model_init_kwargs` from the model options (what the user
    put in them wins) and return the student's quantization config, which goes to the trainer as an argument."""
    # bitsandbytes quantizes while loading, so a k-bit model must load straight onto this process's GPU (on CPU, stay
    # on CPU). TRL overrides this with `device_map=None` under multi-GPU DDP/DeepSpeed.
    kbit_device_map = {"": training_args.local_process_index} if training_args.device.type == "cuda" else None

    # Student: as in TRL's distillation script; its quantization goes through the trainer's `quantization_config`
    # argument (TRL rejects it in `model_init_kwargs` as well).
    quantization_config = get_quantization_config(model_args)
    model_init_kwargs = dict(
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    if quantization_config is not None:
        model_init_kwargs["device_map"] = kbit_device_map
    model_init_kwargs.update(training_args.model_init_kwargs or {})
    training_args.model_init_kwargs = model_init_kwargs

    # Teacher: TRL leaves it unquantized; `--teacher_load_in_{4,8}bit` quantizes it with the student's bnb options.
    teacher_model_init_kwargs = dict(
        revision=training_args.teacher_model_revision,
        trust_remote_code=training_args.trust_remote_code,
        attn_implementation=model_args.attn_implementation,
        dtype=model_args.dtype,
    )
    teacher_quantization = get_quantization_config(
        dataclasses.replace(
            model_args,
            load_in_4bit=script_args.teacher_load_in_4bit,
            load_in_8bit=script_args.teacher_load_in_8bit,
        )
    )
    if teacher_quantization is not None:
        teacher_model_init_kwargs.update(quantization_config=teacher_quantization, device_map=kbit_device_map)
    teacher_model_init_kwargs.update(training_args.teacher_model_init_kwargs or {})
    training_args.teacher_model_init_kwargs = teacher_model_init_kwargs
    return quantization_config


def prompt_datasets(script_args: ESRScriptArguments, training_args: ESRConfig):
    """The training prompts and, when `--eval_strategy` is not "no", the evaluation prompts (else `None`). A bad
    dataset raises `InputError`, before any model loads."""
    train_dataset = _prompt_split(script_args, "dataset_train_split", script_args.dataset_train_split)
    if training_args.eval_strategy == "no":
        return train_dataset, None
    return train_dataset, _prompt_split(script_args, "dataset_test_split", script_args.dataset_test_split)


def _prompt_split(script_args: ESRScriptArguments, option: str, split: str):
    """One split as a prompt dataset; errors name `option` (the split's command-line option) and the fix."""
    from datasets.exceptions import DatasetGenerationError

    try:
        dataset = load_prompt_dataset(
            dataset_name=script_args.dataset_name,
            dataset_config=script_args.dataset_config,
            dataset_files=script_args.dataset_files,
            split=split,
            streaming=script_args.dataset_streaming,
        )
    except (DatasetGenerationError, ValueError, TypeError) as error:
        explained = validation.explain_load_error(option, split, script_args.dataset_files, error)
        if explained is None:
            raise
        raise InputError(explained) from error
    try:
        return to_prompt_dataset(dataset, script_args.prompt_column, script_args.system_prompt)
    except ValueError as error:  # no prompt column, a conversation that does not end with a user turn
        raise InputError(error) from error


def train_save_and_push(
    trainer: ESRDistillTrainer,
    script_args: ESRScriptArguments,
    training_args: ESRConfig,
    resume_from_checkpoint: str | None,
) -> None:
    """Train, save the model, its card and the log history, push them with `--push_to_hub`, finish the trackers."""
    import transformers
    from packaging.version import Version

    if resume_from_checkpoint is not None:
        trainer.accelerator.print(f"⏩ Resuming from {resume_from_checkpoint}.")
    # `False`, not None: `check_arguments` already refused (or was told to overwrite) an output_dir with checkpoints
    trainer.train(resume_from_checkpoint=resume_from_checkpoint or False)
    trainer.accelerator.print("✅ Training completed.")

    # Save the model, its card (naming the teacher, k and the dataset) and the log history (`trainer_state.json`).
    trainer.save_model(training_args.output_dir)
    trainer.save_state()
    dataset = script_args.dataset_name or ", ".join(script_args.dataset_files)  # the card names local files too
    trainer.create_model_card(model_name=Path(training_args.output_dir).name, dataset_name=dataset)
    trainer.accelerator.print(f"💾 Model saved to {training_args.output_dir}.")

    if training_args.push_to_hub:
        trainer.push_to_hub(dataset_name=dataset)
        trainer.accelerator.print(f"🤗 Model pushed to the Hub in https://huggingface.co/{trainer.hub_model_id}.")

    # Finish the trackers and destroy the process group
    if Version(transformers.__version__) >= Version("5.18.0"):
        trainer.end()


if __name__ == "__main__":
    main()
