"""Loading a model to run it rather than train it: what `trl-esr evaluate` and `trl-esr suggest-k` share.

Both commands take TRL's `ModelConfig` (`--model_name_or_path`, `--model_revision`, `--dtype`,
`--attn_implementation`, `--load_in_4bit` / `--load_in_8bit` and the bitsandbytes options), the arguments TRL's
scripts load models from, and turn it into `from_pretrained` arguments the way TRL's scripts do
(`trl.get_quantization_config` included). Two things differ because nothing is trained:

- `dtype` defaults to `"auto"`, the checkpoint's own dtype, where TRL's default is float32 (master weights for an
  optimizer). A 4-bit model then computes in bfloat16.
- the quantization applies to every model the command loads (suggest-k's teacher too): TRL's "works only with LoRA"
  is about training.

Models go to this machine's GPU when it has one (bitsandbytes quantizes while loading, on the device), else the CPU.
"""

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, get_quantization_config


@dataclass
class InferenceModelConfig(ModelConfig):
    """TRL's [`~trl.ModelConfig`], with the defaults and help of a command that only runs the models (see the module
    docstring). Every other field, and its help, is TRL's."""

    dtype: str | None = field(
        default="auto",
        metadata={
            "help": "dtype to load the models in; 'auto' (the default) keeps the checkpoint's own. 4-bit models "
            "compute in it ('auto': bfloat16).",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    load_in_8bit: bool = field(
        default=False, metadata={"help": "Load the models in 8 bits with bitsandbytes (needs a GPU)."}
    )
    load_in_4bit: bool = field(
        default=False,
        metadata={"help": "Load the models in 4 bits with bitsandbytes (`--bnb_4bit_quant_type`, NF4 by default)."},
    )


def model_init_kwargs(model_args: ModelConfig) -> dict:
    """`from_pretrained` keyword arguments for `model_args`, as TRL's scripts build them, placed on this machine's
    GPU if it has one. The revision is the caller's: `model_args.model_revision` is the main model's only."""
    compute_dtype = "bfloat16" if model_args.dtype in (None, "auto") else model_args.dtype
    quantization = get_quantization_config(dataclasses.replace(model_args, dtype=compute_dtype))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    kwargs = dict(dtype=model_args.dtype, attn_implementation=model_args.attn_implementation, device_map={"": device})
    if quantization is not None:
        kwargs["quantization_config"] = quantization
    return kwargs


def load_causal_lm(name_or_path: str, model_args: ModelConfig, revision: str | None = None) -> PreTrainedModel:
    """A causal LM in eval mode. A folder holding a PEFT adapter is loaded on its base model, and merged into it
    unless the base is quantized (merging into k-bit weights rounds them)."""
    kwargs = model_init_kwargs(model_args)
    if (Path(name_or_path).expanduser() / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(name_or_path, revision=revision, **kwargs)
        if "quantization_config" not in kwargs:
            model = model.merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, revision=revision, **kwargs)
    return model.eval()


def load_tokenizer(name_or_path: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a model (or with an adapter), given a pad token if it has none: EOS, as TRL does
    (padding is masked, so its id never matters)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer
