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
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config, get_quantization_config

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

    def __post_init__(self):
        if self.teacher_load_in_4bit and self.teacher_load_in_8bit:
            raise ValueError("`teacher_load_in_4bit` and `teacher_load_in_8bit` are exclusive: choose one.")


def make_parser() -> TrlParser:
    return TrlParser((ESRScriptArguments, ESRConfig, ModelConfig), prog="trl-esr train")


def main(argv: list[str] | None = None) -> None:
    script_args, training_args, model_args = make_parser().parse_args_and_config(args=argv)
    train(script_args, training_args, model_args)


def train(script_args: ESRScriptArguments, training_args: ESRConfig, model_args: ModelConfig) -> None:
    import transformers
    from packaging.version import Version

    if training_args.teacher_model_name_or_path is None:
        raise ValueError("A teacher model is required. Set it with `--teacher_model_name_or_path`.")
    if model_args.model_name_or_path is None:
        raise ValueError("A student model is required. Set it with `--model_name_or_path`.")

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

    def prompts(split: str):
        dataset = load_prompt_dataset(
            dataset_name=script_args.dataset_name,
            dataset_config=script_args.dataset_config,
            dataset_files=script_args.dataset_files,
            split=split,
            streaming=script_args.dataset_streaming,
        )
        return to_prompt_dataset(dataset, script_args.prompt_column, script_args.system_prompt)

    trainer = ESRDistillTrainer(
        model=model_args.model_name_or_path,
        teacher_model=training_args.teacher_model_name_or_path,
        args=training_args,
        train_dataset=prompts(script_args.dataset_train_split),
        eval_dataset=prompts(script_args.dataset_test_split) if training_args.eval_strategy != "no" else None,
        quantization_config=quantization_config,
        peft_config=get_peft_config(model_args),
    )

    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
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
