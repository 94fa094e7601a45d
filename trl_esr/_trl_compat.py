"""Every use of TRL's private API in trl_esr, in one place.

TRL does not promise these names across releases. `tests/test_trl_contract.py` checks each of them (signature and
behaviour) against the installed TRL, so an upgrade that moves one fails in our test suite, not in a user's run.
Tested with TRL 1.16 (see `pyproject.toml` for the pinned range).

What we rely on:

- `DistillationTrainer._generate_and_score_completions(inputs)` returns the training batch: `prompt_ids`,
  `completion_ids`, `completion_mask`, the optional per-token loss mask `tool_mask`, and `num_items_in_batch`, the loss
  normaliser that `compute_loss` divides by the process count.
- `DistillationTrainer._compute_loss(unwrapped_student, inputs, num_items_in_batch)` computes the divergence by calling
  the module-level `_chunked_divergence_loss`, which it looks up at call time.
- `DistillationTrainer._get_last_hidden_state(unwrapped_model, input_ids, attention_mask, logits_to_keep, **mm)` runs
  a backbone and returns the hidden states of the last `logits_to_keep` positions; `_compute_loss` calls it for the
  student, then (through `_forward_redirection`) for the unwrapped teacher, with the same `input_ids`, and hands both
  results to the divergence as they are (the teacher's may come from other tokens, one hidden state per completion
  position), with the heads' weights, biases, logit scales and soft-capping.
- `trainer.generation_config` is the `GenerationConfig` HF `generate` samples with (the config's sampling settings,
  `generation_kwargs`, TRL's EOS list and pad id).
- Rollout length is read from `trainer.generation_config.max_new_tokens` (HF generate; `trainer.generation_kwargs`
  overrides the model's own generation config), from `trainer.vllm_generation.max_completion_length` (vLLM, read on
  every call), and from `trainer.max_completion_length` (the tool-calling loop's budget). Sampled ids are restricted
  through `trainer.generation_config.suppress_tokens` (HF) and `trainer.vllm_generation.generation_kwargs` (vLLM).
- `trl.trainer.utils.get_config_model_id(config)` is the name TRL gives a model instance (its config's
  `_name_or_path`), and `trl.trainer.utils.pad` left- or right-pads a list of tensors.
- `DistillationTrainer._tokenize_prompts` renders chat prompts with `tools=trainer.tools or None`,
  `chat_template=trainer.chat_template` (a prefix-preserving training template when tools are given, else `None`) and
  `**trainer.chat_template_kwargs` (`args.chat_template_kwargs`, e.g. `enable_thinking=False`).
- `trainer._tokenizer` is the text tokenizer (the processing class itself, or a processor's tokenizer), with the pad
  token TRL defaults to EOS.
- For a teacher TRL would refuse (another head size), `load_teacher` / `prepare_teacher` repeat what
  `DistillationTrainer.__init__` does with a teacher: `create_model_from_path` with `teacher_model_init_kwargs`, then
  `prepare_deepspeed` or `accelerator.prepare_model(evaluation_mode=True)`.
- `trainer._metrics[mode]` is the dict of lists that `DistillationTrainer.log` averages and logs.
- With `use_vllm=True, vllm_mode="colocate"`, `DistillationTrainer.__init__` builds the vLLM engine
  (`VLLMGeneration._init_vllm`); `trainer.vllm_generation.generation_kwargs` is merged into every request's sampling
  parameters (`SamplingParams` in colocate mode, the request body in server mode).

Upstream proposal (it would remove the one module-global swap, `replace_divergence_loss`): `_compute_loss` looks up
`_chunked_divergence_loss` as a module global, so the only way to change the divergence is to swap that global for the
duration of each call. If `DistillationTrainer` called it through an overridable method with the same signature,

    def _divergence_loss(self, student_hidden_states, teacher_hidden_states, ..., temperature):
        return _chunked_divergence_loss(student_hidden_states, teacher_hidden_states, ..., temperature=temperature)

(as GRPO exposes `_compute_loss` and SFT `compute_loss`), `ESRDistillTrainer` would override that method instead, with
no global state and no context manager, and a subclass of ours could override it again. The same seam would let a
cross-tokenizer subclass restrict the heads to shared rows without touching TRL's loop.
"""

import contextlib
from collections.abc import Callable, Iterator

import torch
from trl.models import prepare_deepspeed
from trl.trainer import distillation_trainer as _distillation_module
from trl.trainer.utils import create_model_from_path, get_config_model_id
from trl.trainer.utils import pad as _pad

from ._vllm_compat import cpu_engine_keeps_weights


# TRL multiplies `completion_mask` by `inputs["tool_mask"]` to decide which completion tokens are trained (it masks
# tool results there). ESR's "mask" mode restricts training to the first k tokens through the same key.
LOSS_MASK_KEY = "tool_mask"

# TRL's memory-efficient generalized-JSD over hidden states and `lm_head` weights (never materialises full logits).
chunked_divergence_loss = _distillation_module._chunked_divergence_loss


@contextlib.contextmanager
def replace_divergence_loss(divergence_loss: Callable) -> Iterator[None]:
    """Make `DistillationTrainer._compute_loss` call `divergence_loss` instead of TRL's `_chunked_divergence_loss`."""
    original = _distillation_module._chunked_divergence_loss
    _distillation_module._chunked_divergence_loss = divergence_loss
    try:
        yield
    finally:
        _distillation_module._chunked_divergence_loss = original


@contextlib.contextmanager
def cap_rollout_length(trainer, max_new_tokens: int | None) -> Iterator[None]:
    """Limit every rollout generated inside the block to `max_new_tokens` (HF generate, vLLM and the tool loop).

    `None` leaves the trainer's `max_completion_length` in force. The previous limits are restored on exit, so
    evaluation generation keeps `max_completion_length`.
    """
    if max_new_tokens is None:
        yield
        return
    saved = (
        trainer.generation_config.max_new_tokens,
        trainer.generation_kwargs.get("max_new_tokens"),
        trainer.max_completion_length,
    )
    trainer.generation_config.max_new_tokens = max_new_tokens
    trainer.generation_kwargs["max_new_tokens"] = max_new_tokens
    trainer.max_completion_length = max_new_tokens
    if trainer.use_vllm:
        saved_vllm = trainer.vllm_generation.max_completion_length
        trainer.vllm_generation.max_completion_length = max_new_tokens
    try:
        yield
    finally:
        trainer.generation_config.max_new_tokens = saved[0]
        trainer.generation_kwargs["max_new_tokens"] = saved[1]
        trainer.max_completion_length = saved[2]
        if trainer.use_vllm:
            trainer.vllm_generation.max_completion_length = saved_vllm


def building_vllm_engine(args) -> contextlib.AbstractContextManager:
    """Wrap `DistillationTrainer.__init__`, which builds the colocated vLLM engine, with what that engine needs here
    (on a CPU-only machine: linear layers that keep their weights, so TRL's weight sync reaches them)."""
    return cpu_engine_keeps_weights(args.use_vllm and args.vllm_mode == "colocate")


def generation_config(trainer):
    """The `GenerationConfig` TRL's HF `generate` samples rollouts with: the config's temperature, top-p/k, min-p,
    repetition penalty and `generation_kwargs`, every stop id (`stop_token_ids`) and the pad id."""
    return trainer.generation_config


def model_id(model) -> str:
    """The name TRL gives a model instance (the path or Hub id it was loaded from; "" for one built in Python)."""
    return get_config_model_id(model.config)


def pad(tensors: list[torch.Tensor], padding_value: int = 0, padding_side: str = "right") -> torch.Tensor:
    """TRL's padding of a list of tensors to the longest along the first dimension (`padding_side`: "left" or
    "right"), as its trainers pad prompts."""
    return _pad(tensors, padding_value=padding_value, padding_side=padding_side)


def metrics(trainer, mode: str) -> dict[str, list[float]]:
    """The per-mode metric lists that `DistillationTrainer.log` averages and logs next to TRL's own."""
    return trainer._metrics[mode]


def stop_token_ids(trainer) -> list[int]:
    """Every id that ends a rollout: TRL stops generation on the student's whole generation-config EOS list (plus the
    tokenizer's EOS), e.g. 128001, 128008 and 128009 for Llama-3-Instruct."""
    return trainer.eos_token_ids


def chat_template_options(trainer) -> dict:
    """The keyword arguments TRL renders the training prompts' chat template with (`trl_esr.prompts.render_prompts`
    takes them as they are): `tools`, `chat_template` and `args.chat_template_kwargs`. Anything else that starts from
    "the prompt the student sees" (the diagnostics' rollouts, the boxed-accuracy callback, the prompt-length check)
    renders with them, or a Qwen3 student trained with `enable_thinking=False` is measured in thinking mode."""
    return {"tools": trainer.tools or None, "chat_template": trainer.chat_template, **trainer.chat_template_kwargs}


def tokenizer_of(trainer):
    """The text tokenizer TRL resolved from `processing_class` (a processor's `.tokenizer` for vision-language
    models)."""
    return trainer._tokenizer


def model_revision(args, model) -> str | None:
    """The revision `DistillationTrainer.__init__` loads a student given by name from (`model_init_kwargs`'
    `revision`), and its processing class with it; `None` (the default branch) for an instance."""
    return (args.model_init_kwargs or {}).get("revision") if isinstance(model, str) else None


def teacher_revision(args, teacher_model) -> str | None:
    """The revision `DistillationTrainer.__init__` loads a teacher given by name from: `teacher_model_init_kwargs`'
    `revision`, else `teacher_model_revision`; `None` (the default branch) for an instance."""
    if not isinstance(teacher_model, str):
        return None
    return (args.teacher_model_init_kwargs or {}).get("revision") or args.teacher_model_revision


def load_teacher(args, teacher_model):
    """Load a teacher given by name or path as `DistillationTrainer.__init__` does; an instance is returned as is."""
    if not isinstance(teacher_model, str):
        return teacher_model
    kwargs = dict(args.teacher_model_init_kwargs or {})
    dtype = kwargs.get("dtype")
    kwargs["dtype"] = dtype if dtype in ["auto", None] else getattr(torch, dtype)
    if args.teacher_model_revision is not None:
        kwargs.setdefault("revision", args.teacher_model_revision)
    if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
        kwargs["device_map"] = None  # distributed training requires device_map=None
    kwargs.setdefault("trust_remote_code", args.trust_remote_code)
    return create_model_from_path(teacher_model, **kwargs)


def prepare_teacher(trainer, teacher_model):
    """Wrap the teacher for DeepSpeed or place it with accelerate, as `DistillationTrainer.__init__` does."""
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed(teacher_model, trainer.accelerator)
    return trainer.accelerator.prepare_model(teacher_model, evaluation_mode=True)


def suppress_ids_above(trainer, vocab_size: int) -> None:
    """Never sample token ids >= `vocab_size`: HF `generate` suppresses them (`suppress_tokens`), vLLM (colocate or
    server) samples only from `allowed_token_ids`, intersected with any the user set in `generation_kwargs`."""
    student_size = trainer.accelerator.unwrap_model(trainer.model).config.get_text_config().vocab_size
    extra = list(range(vocab_size, student_size))
    if not extra:
        return
    suppressed = list(trainer.generation_config.suppress_tokens or []) + extra
    trainer.generation_config.suppress_tokens = suppressed
    trainer.generation_kwargs["suppress_tokens"] = suppressed
    if trainer.use_vllm:
        # A new dict: TRL's vLLM kwargs may be the user's `args.generation_kwargs` object itself.
        vllm_kwargs = trainer.vllm_generation.generation_kwargs
        allowed = vllm_kwargs.get("allowed_token_ids") or range(vocab_size)
        allowed = [token_id for token_id in allowed if token_id < vocab_size]
        trainer.vllm_generation.generation_kwargs = {**vllm_kwargs, "allowed_token_ids": allowed}
