"""`ESRDistillTrainer`: TRL's on-policy distillation with Early Stopping Rollout."""

import logging
import os
import textwrap

import torch
from transformers.trainer_utils import get_last_checkpoint
from trl import DistillationTrainer

from . import validation
from ._trl_compat import (
    LOSS_MASK_KEY,
    building_vllm_engine,
    cap_rollout_length,
    chat_template_options,
    metrics,
    model_id,
    replace_divergence_loss,
    stop_token_ids,
    teacher_revision,
    tokenizer_of,
)
from .config import ESRConfig
from .guards import CheckpointOnInterrupt, NonFiniteUpdateGuard
from .horizon_guard import ESRHorizonGuard
from .model_card import add_esr_details
from .pairing import TokenizerPairing
from .schedule import esr_k_at_step
from .teacher_view import TeacherPromptRenderer


logger = logging.getLogger(__name__)


class ESRDistillTrainer(DistillationTrainer):
    """
    Trainer for on-policy distillation with Early Stopping Rollout (ESR), as introduced in [Less is More: Early
    Stopping Rollout for On-Policy Distillation](https://huggingface.co/papers/2605.27028).

    The student's training rollouts stop after their first k tokens (`ESRConfig.esr_k`, 100 by default): the teacher
    scores only those tokens and the student minimises the reverse KL on them. Early tokens are where the teacher's
    guidance is reliable; the further a student rollout drifts, the worse the teacher's token-level signal.

    What changes w.r.t. [`~trl.DistillationTrainer`], override by override:

    - `__init__`: takes one more argument, `teacher_processing_class` (the teacher's tokenizer, when it cannot be
      loaded from the teacher's path), and `args` must be an [`ESRConfig`]. Before any model is loaded it checks the
      set-up (`trl_esr.validation`) and reads how the teacher's tokenizer relates to the student's
      (`trl_esr.pairing`); it loads a teacher TRL would refuse (another head size) itself, as TRL would. It adds the
      callbacks below.
    - `_generate_and_score_completions`: during training, rollouts are capped at the current k (`esr_mode="stop"`) or
      trained on their first k tokens only (`esr_mode="mask"`); `num_items_in_batch` counts what is actually trained
      (tokens or rollouts, per `loss_normalization`); `esr/*` metrics are logged. Evaluation is not capped. With a
      teacher view of the prompt it adds the teacher's rendering, and for a teacher with another tokenizer the
      re-tokenized, aligned response.
    - `_compute_loss`: TRL's, with ESR's divergence (`trl_esr.loss`): `loss_temperature` instead of the sampling
      temperature, the `loss_normalization` reduction, and both heads restricted to the rows both tokenizers share
      where the pair differs.
    - `_get_last_hidden_state`: for the teacher's forward pass inside `_compute_loss`, the teacher's own view of the
      sequence: its rendering of the prompt before the shared response tokens (`teacher_chat_template`, off by
      default), or, for a teacher with another tokenizer, its own tokens, read back at the aligned positions.
    - `train`: an `output_dir` that already holds checkpoints is never trained over from step 0 by accident: without
      `resume_from_checkpoint`, it raises before any rollout, naming the latest checkpoint (transformers 5 has no
      `overwrite_output_dir`; `resume_from_checkpoint=False` starts over on purpose).
    - `create_model_card`: TRL's card plus a section naming the teacher, k and the key hyperparameters.

    The callbacks skip updates whose gradients are not finite and checkpoint on SIGINT/SIGTERM (`trl_esr.guards`),
    log the KL before and after k (`esr_diagnostics_steps`, `trl_esr.diagnostics`), and with `esr_horizon_guard`
    stop training or grow k when the measured KL beyond k rises (`trl_esr.horizon_guard`).

    Everything else (model, PEFT and quantized loading, HF and vLLM generation, DeepSpeed/FSDP, logging,
    checkpointing, TRL's other constructor arguments) is inherited unchanged.

    Example:

    ```python
    >>> from trl_esr import ESRConfig, ESRDistillTrainer

    >>> trainer = ESRDistillTrainer(
    ...     model="Qwen/Qwen2.5-Math-1.5B",
    ...     teacher_model="Qwen/Qwen3-1.7B",
    ...     args=ESRConfig(output_dir="qwen-esr", esr_k=100),
    ...     train_dataset=dataset,
    ... )
    >>> trainer.train()
    ```
    """

    _tag_names = ["trl", "trl-esr", "distillation"]
    _name = "ESR Distillation"
    _paper = {
        "title": "Less is More: Early Stopping Rollout for On-Policy Distillation",
        "id": "2605.27028",
        # docstyle-ignore
        "citation": textwrap.dedent("""\
            @article{zhou2026esr,
                title        = {{Less is More: Early Stopping Rollout for On-Policy Distillation}},
                author       = {Zhou and Li and Tang and Wu and Terzopoulos},
                year         = 2026,
                eprint       = {arXiv:2605.27028},
            }"""),
    }

    _loss_inputs = None  # the micro-batch `_compute_loss` is on, for the teacher's forward pass
    _horizon_guard = None  # set with `esr_horizon_guard`

    def __init__(
        self,
        model,
        teacher_model=None,
        args: ESRConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        tools=None,
        teacher_processing_class=None,
    ):
        args = _esr_config(args, model)
        validation.check_models(model, teacher_model, processing_class)
        validation.check_dataset(train_dataset, args, num_processes=args.world_size)  # before loading any model
        text_only = not validation.has_image_column(train_dataset, eval_dataset)
        self._pairing = TokenizerPairing.detect(
            args, model, teacher_model, processing_class, teacher_processing_class, text_only
        )
        validation.check_shared_vocabulary(self._pairing, args.min_shared_vocab_fraction)
        own_teacher = self._pairing.load_teacher(args, teacher_model)  # None: TRL loads it
        with building_vllm_engine(args):  # a CPU engine must keep its weights for TRL's weight sync
            super().__init__(
                model,
                teacher_model if own_teacher is None else None,
                args=args,
                train_dataset=train_dataset,
                eval_dataset=eval_dataset,
                processing_class=self._pairing.processing_class,
                callbacks=callbacks,
                optimizers=optimizers,
                quantization_config=quantization_config,
                peft_config=peft_config,
                tools=tools,
            )
        self._pairing.attach(self, own_teacher)
        self._teacher_revision = teacher_revision(args, teacher_model)  # what TRL loaded it from, for the model card
        self._teacher_renderer = TeacherPromptRenderer.from_config(
            args, self._pairing, tokenizer_of(self), train_dataset
        )
        self._validate_loaded(train_dataset)
        self._divergence_loss = self._pairing.divergence_loss(args)
        self._add_callbacks(args)

    def _add_callbacks(self, args) -> None:
        guard = NonFiniteUpdateGuard(self, args.max_consecutive_nonfinite_steps)
        self.add_callback(guard)
        if args.save_on_interrupt:
            self.add_callback(CheckpointOnInterrupt(self, save_vetoed=guard.vetoes_save))
        if args.esr_diagnostics_steps > 0:
            self._add_diagnostics(args)

    def _add_diagnostics(self, args) -> None:
        """The `esr/kl_within_k` / `esr/kl_beyond_k` callback, where its full-vocabulary scoring applies."""
        from .diagnostics import callback  # an optional layer: imported only when it is used

        reason = "the tokenizers or head sizes differ" if not self._pairing.full_vocabulary else None
        reason = reason or callback.unavailable_reason(self)
        if reason is not None:
            if args.esr_horizon_guard is not None:
                raise ValueError(f"`esr_horizon_guard` watches the ESR diagnostics, which cannot run here: {reason}. "
                                 "Set `esr_horizon_guard=None`.")  # fmt: skip
            logger.warning(f"ESR diagnostics (`esr_diagnostics_steps`) are off for this run: {reason}.")
            return
        diagnostics = callback.ESRDiagnosticsCallback(
            self, args.esr_diagnostics_steps, args.esr_diagnostics_num_rollouts
        )
        self.add_callback(diagnostics)
        if args.esr_horizon_guard is not None:  # after the diagnostics: it reads their measurement at the same step
            self._horizon_guard = ESRHorizonGuard(self, diagnostics)
            self.add_callback(self._horizon_guard)

    @property
    def teacher_prompt_renderer(self) -> TeacherPromptRenderer | None:
        """How the teacher's forward pass renders each prompt (`ESRConfig.teacher_chat_template`, or its own template
        for a teacher with another tokenizer); `None` when it reads the student's rendering."""
        return self._teacher_renderer

    def _k_at_step(self, global_step: int) -> int | None:
        """The horizon of rollouts generated at `global_step`: the k schedule's, grown by the horizon guard if any."""
        k = esr_k_at_step(self.args, global_step)
        return k if self._horizon_guard is None else self._horizon_guard.k(k)

    def _validate_loaded(self, train_dataset) -> None:
        """The checks that need the tokenizer and the student's context window (see `trl_esr.validation`)."""
        tokenizer = tokenizer_of(self)
        validation.check_tokenizer(tokenizer, train_dataset)
        context = self.model.config.get_text_config().max_position_embeddings
        options = chat_template_options(self)  # as TRL renders the prompts: `chat_template_kwargs`, tools
        validation.check_prompt_lengths(tokenizer, train_dataset, self.args.max_completion_length, context, **options)
        if self._teacher_renderer is None:  # the teacher scores the student's rendering of the prompt
            validation.warn_if_teacher_renders_differently(
                tokenizer, self._pairing.teacher_tokenizer, train_dataset, **options
            )

    def _generate_and_score_completions(self, inputs):
        k = self._k_at_step(self.state.global_step) if self.model.training else None
        with cap_rollout_length(self, k if self.args.esr_mode == "stop" else None):
            batch = super()._generate_and_score_completions(inputs)  # evaluation: up to `max_completion_length`
        completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]  # (B, C)
        if k is not None and completion_ids.size(1) > k:  # only "mask" mode generates past k
            within_k = torch.arange(completion_ids.size(1), device=completion_ids.device) < k  # (C,)
            batch[LOSS_MASK_KEY] = batch.get(LOSS_MASK_KEY, torch.ones_like(completion_mask)) * within_k
        if self._teacher_renderer is not None:
            prompts = [example["prompt"] for example in inputs]
            batch["teacher_prompt_ids"], batch["teacher_prompt_mask"] = self._teacher_renderer(
                prompts, self.accelerator.device
            )
        self._pairing.prepare_batch(batch, stop_token_ids(self))  # a teacher with another tokenizer: aligned here
        if self.model.training:
            self._count_trained(batch, k, loss_mask=completion_mask * batch.get(LOSS_MASK_KEY, 1))
        return batch

    def _count_trained(self, batch: dict, k: int | None, loss_mask: torch.Tensor) -> None:
        """Set the loss normaliser to what is actually trained across the generation batch and processes, and log
        the `esr/*` metrics."""
        completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]  # (B, C)
        horizon = k if k is not None else self.args.max_completion_length
        within_k = torch.arange(completion_ids.size(1), device=completion_ids.device) < horizon  # (C,)

        # A rollout ended within k iff its last token is a stop token and it is no longer than k: with tool calls an
        # EOS also ends each assistant turn before a tool result, so "an EOS within k" would miscount those.
        eos_ids = torch.tensor(stop_token_ids(self), device=completion_ids.device)
        lengths = completion_mask.sum(dim=1)  # (B,) completions are right-padded
        last_token = completion_ids.gather(1, (lengths - 1).clamp(min=0).unsqueeze(1)).squeeze(1)  # (B,)
        ended_within_k = torch.isin(last_token, eos_ids) & (lengths > 0) & (lengths <= horizon)  # (B,)
        trained_per_rollout = loss_mask.sum(dim=1)  # (B,)
        counts = torch.stack(
            [
                completion_mask.sum(),  # tokens generated
                trained_per_rollout.sum(),  # tokens trained
                (trained_per_rollout > 0).sum(),  # rollouts trained
                (~ended_within_k).sum(),  # rollouts that hit k before EOS
                torch.tensor(completion_ids.size(0), device=completion_ids.device),  # rollouts
                (completion_mask * within_k).sum(),  # positions that could be trained before alignment
            ]
        ).float()
        totals = self.accelerator.gather(counts).view(-1, 6).sum(0)
        generated, trained, rollouts_trained, capped, rollouts, alignable = totals

        per_token = self.args.loss_normalization == "token"
        batch["num_items_in_batch"] = trained if per_token else rollouts_trained

        logged = metrics(self, "train")
        logged["esr/k"].append(float(horizon))
        logged["esr/tokens_generated"].append(generated.item())
        logged["esr/tokens_trained"].append(trained.item())
        logged["esr/capped_fraction"].append((capped / rollouts).item())
        for name, value in self._pairing.metrics(trained, alignable).items():
            logged[name].append(value)

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        self._loss_inputs = inputs  # for the teacher's forward pass, which TRL runs through `_get_last_hidden_state`
        try:
            with replace_divergence_loss(self._divergence_loss):
                return super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
        finally:
            self._loss_inputs = None

    def _get_last_hidden_state(self, unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs):
        forward = super()._get_last_hidden_state
        if self._loss_inputs is None or unwrapped_model is not self.accelerator.unwrap_model(self.teacher_model):
            return forward(unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs)
        # The teacher's forward pass: its own view of the sequence (its prompt rendering, its tokens), per pairing.
        return self._pairing.teacher_hidden_states(
            forward, unwrapped_model, self._loss_inputs, input_ids, attention_mask, logits_to_keep, **kwargs
        )

    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        if resume_from_checkpoint is None:
            _refuse_to_train_over_checkpoints(self.args.output_dir)
        try:
            return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)
        finally:  # `on_train_end` is skipped when training raises: the signal handlers go back all the same
            for callback in self.callback_handler.callbacks:
                if isinstance(callback, CheckpointOnInterrupt):
                    callback.restore()

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        # TRL's card links `dataset_name` to the Hub; local files are named in the ESR section only.
        hub_dataset = None if dataset_name is None or os.path.exists(dataset_name.split(", ")[0]) else dataset_name
        super().create_model_card(model_name=model_name, dataset_name=hub_dataset, tags=tags)
        if self.is_world_process_zero():
            add_esr_details(os.path.join(self.args.output_dir, "README.md"), self, dataset_name)


def _refuse_to_train_over_checkpoints(output_dir: str) -> None:
    """`Trainer.train()` without `resume_from_checkpoint` starts at step 0 even where `output_dir` holds the
    checkpoints of an earlier run, and overwrites them as it saves: stop and say how to resume or start over."""
    latest = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    if latest is None:
        return
    raise ValueError(
        f"`output_dir` {output_dir!r} already holds {os.path.basename(latest)} from an earlier run, and "
        "`trainer.train()` would start over from step 0 and overwrite its checkpoints. Resume it with "
        "`trainer.train(resume_from_checkpoint=True)` (the latest checkpoint) or a checkpoint path; or start a new "
        "run in another `output_dir` (or delete its checkpoint-* folders). To start over here on purpose, call "
        "`trainer.train(resume_from_checkpoint=False)`."
    )


def _esr_config(args: ESRConfig | None, model) -> ESRConfig:
    """`args`, or TRL's default config named after the model; a plain `DistillationConfig` is refused."""
    if args is None:
        model_name = model if isinstance(model, str) else model_id(model)
        return ESRConfig(f"{model_name.split('/')[-1]}-ESR")
    if not isinstance(args, ESRConfig):
        raise TypeError(
            f"`args` must be an `ESRConfig`, got `{type(args).__name__}`. `ESRConfig` takes every field of "
            "`DistillationConfig` plus the `esr_*` ones: build it with the same keyword arguments."
        )
    return args
