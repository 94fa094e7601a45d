"""`ESRDistillTrainer`: TRL's on-policy distillation with Early Stopping Rollout."""

import logging
import os
import textwrap

import torch
from trl import DistillationTrainer

from . import validation
from ._trl_compat import (
    LOSS_MASK_KEY,
    building_vllm_engine,
    cap_rollout_length,
    load_teacher,
    metrics,
    model_id,
    prepare_teacher,
    replace_divergence_loss,
    stop_token_ids,
    suppress_ids_above,
    tokenizer_of,
)
from .config import ESRConfig
from .cross_tokenizer import align_batch
from .guards import CheckpointOnInterrupt, NonFiniteUpdateGuard
from .horizon_guard import ESRHorizonGuard
from .loss import aligned_divergence_loss, logit_postprocessor, make_divergence_loss
from .model_card import add_esr_details
from .pairing import TokenizerPairing
from .schedule import esr_k_at_step
from .teacher_view import TeacherPromptRenderer, teacher_inputs


logger = logging.getLogger(__name__)


class ESRDistillTrainer(DistillationTrainer):
    """
    Trainer for on-policy distillation with Early Stopping Rollout (ESR), as introduced in [Less is More: Early
    Stopping Rollout for On-Policy Distillation](https://huggingface.co/papers/2605.27028).

    The student's training rollouts stop after their first k tokens (`ESRConfig.esr_k`, 100 by default): the teacher
    scores only those tokens and the student minimises the reverse KL on them. Early tokens are where the teacher's
    guidance is reliable; the further a student rollout drifts, the worse the teacher's token-level signal.

    What changes w.r.t. [`~trl.DistillationTrainer`]:

    - `_generate_and_score_completions`: during training, rollouts are capped at the current k (`esr_mode="stop"`) or
      trained on their first k tokens only (`esr_mode="mask"`); `num_items_in_batch` counts what is actually trained
      (tokens or rollouts, per `loss_normalization`); `esr/*` metrics are logged. Evaluation is not capped.
    - `_compute_loss`: the divergence uses `loss_temperature` (not the sampling temperature) and the
      `loss_normalization` reduction.
    - `_get_last_hidden_state`: with `teacher_chat_template` / `teacher_chat_template_kwargs`, the teacher's forward
      pass sees its own rendering of the prompt before the shared response tokens (off by default).
    - `create_model_card`: TRL's card plus a section naming the teacher, k and the key hyperparameters.

    It also checks the set-up before any model is loaded or step is run (`trl_esr.validation`), skips updates whose
    gradients are not finite, and checkpoints on SIGINT/SIGTERM (`trl_esr.guards`). With `esr_horizon_guard`, it stops
    training or grows k when the measured KL beyond k rises (`trl_esr.horizon_guard`).

    Everything else (model, PEFT and quantized loading, HF and vLLM generation, DeepSpeed/FSDP, logging,
    checkpointing, the constructor's arguments) is inherited unchanged.

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
        if args is None:
            model_name = model if isinstance(model, str) else model_id(model)
            args = ESRConfig(f"{model_name.split('/')[-1]}-ESR")
        elif not isinstance(args, ESRConfig):
            raise TypeError(
                f"`args` must be an `ESRConfig`, got `{type(args).__name__}`. `ESRConfig` takes every field of "
                "`DistillationConfig` plus the `esr_*` ones: build it with the same keyword arguments."
            )
        validation.check_models(model, teacher_model, processing_class)
        validation.check_dataset(train_dataset, args, num_processes=args.world_size)  # before loading any model
        self._pairing = TokenizerPairing.detect(args, model, teacher_model, processing_class, teacher_processing_class)
        validation.check_shared_vocabulary(self._pairing, args.min_shared_vocab_fraction)
        own_teacher = load_teacher(args, teacher_model) if self._pairing.loads_teacher_itself else None
        with building_vllm_engine(args):  # a CPU engine must keep its weights for TRL's weight sync
            super().__init__(
                model,
                teacher_model if own_teacher is None else None,  # TRL refuses a teacher with another head size
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
        if own_teacher is not None:
            self.teacher_model = prepare_teacher(self, own_teacher)
        if self._pairing.mode == "padded":  # a student head with extra rows must not sample ids the teacher lacks
            suppress_ids_above(self, self._pairing.vocab_size)
        self._teacher_renderer = TeacherPromptRenderer.from_config(
            args, self._pairing, tokenizer_of(self), train_dataset
        )
        self._validate_loaded(train_dataset)
        self._teacher_prompt = None  # set by `_compute_loss` for `_get_last_hidden_state`
        self._horizon_guard = None  # set by `_add_diagnostics` with `esr_horizon_guard`
        self._divergence_loss = make_divergence_loss(
            args.loss_normalization, args.loss_temperature, vocab_size=self._pairing.vocab_size
        )
        self.add_callback(NonFiniteUpdateGuard(self, args.max_consecutive_nonfinite_steps))
        if args.save_on_interrupt:
            self.add_callback(CheckpointOnInterrupt(self))
        if args.esr_diagnostics_steps > 0:
            self._add_diagnostics(args)

    def _add_diagnostics(self, args) -> None:
        """The `esr/kl_within_k` / `esr/kl_beyond_k` callback, where its full-vocabulary scoring applies."""
        from .diagnostics import callback  # an optional layer: imported only when it is used

        reason = "the tokenizers or head sizes differ" if self._pairing.mode != "same" else None
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
        validation.check_prompt_lengths(tokenizer, train_dataset, self.args.max_completion_length, context)
        if self._teacher_renderer is None:  # the teacher scores the student's rendering of the prompt
            validation.warn_if_teacher_renders_differently(tokenizer, self._pairing.teacher_tokenizer, train_dataset)

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
        if self._pairing.mode == "aligned":  # train only positions the teacher's tokenization also has
            loss_mask = completion_mask * batch.get(LOSS_MASK_KEY, 1)
            batch.update(align_batch(self._pairing.aligner, completion_ids, loss_mask, stop_token_ids(self)))
            batch[LOSS_MASK_KEY] = (batch["teacher_positions"] >= 0).long()
        if self.model.training:
            self._count_trained(batch, k, loss_mask=completion_mask * batch.get(LOSS_MASK_KEY, 1))
        return batch

    def _count_trained(self, batch: dict, k: int | None, loss_mask: torch.Tensor) -> None:
        """Set the loss normaliser to what is actually trained across the generation batch and processes, and log
        the `esr/*` metrics."""
        completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]  # (B, C)
        horizon = k if k is not None else self.args.max_completion_length
        within_k = torch.arange(completion_ids.size(1), device=completion_ids.device) < horizon  # (C,)

        eos_ids = torch.tensor(stop_token_ids(self), device=completion_ids.device)
        ended_within_k = (torch.isin(completion_ids, eos_ids) & completion_mask.bool() & within_k).any(dim=1)  # (B,)
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
        if self._pairing.mode == "aligned":
            logged["esr/aligned_fraction"].append((trained / alignable.clamp(min=1)).item())
            logged["esr/shared_vocab_fraction"].append(self._pairing.shared.fraction)

    def _compute_loss(self, unwrapped_student, inputs, num_items_in_batch):
        if self._pairing.mode == "aligned":
            return self._aligned_loss(unwrapped_student, inputs, num_items_in_batch)
        if "teacher_prompt_ids" in inputs:
            self._teacher_prompt = (inputs["teacher_prompt_ids"], inputs["teacher_prompt_mask"])
        try:
            with replace_divergence_loss(self._divergence_loss):
                return super()._compute_loss(unwrapped_student, inputs, num_items_in_batch)
        finally:
            self._teacher_prompt = None

    def _aligned_loss(self, unwrapped_student, inputs, num_items_in_batch):
        """The loss for a teacher with another tokenizer (see `trl_esr.cross_tokenizer`)."""
        completion_width = inputs["completion_ids"].size(1)  # C
        student_hidden = self._get_last_hidden_state(
            unwrapped_student,
            torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1),
            torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1),
            completion_width,
        )  # (B, C, H_s)
        self.teacher_model.eval()
        unwrapped_teacher = self.accelerator.unwrap_model(self.teacher_model)
        with torch.no_grad():
            teacher_hidden = self._forward_redirection(
                self.teacher_model,
                unwrapped_teacher,
                self._get_last_hidden_state,
                unwrapped_teacher,
                torch.cat([inputs["teacher_prompt_ids"], inputs["teacher_response_ids"]], dim=1),
                torch.cat([inputs["teacher_prompt_mask"], inputs["teacher_response_mask"]], dim=1),
                inputs["teacher_response_ids"].size(1),
            )  # (B, J, H_t)
        student_head = unwrapped_student.get_output_embeddings()
        return aligned_divergence_loss(
            student_hidden.to(student_head.weight.device),
            teacher_hidden.to(student_head.weight.device),
            inputs["teacher_positions"],
            student_head,
            unwrapped_teacher.get_output_embeddings(),
            self._pairing.shared.to(student_head.weight.device),
            logit_postprocessor(unwrapped_student.config),
            logit_postprocessor(unwrapped_teacher.config),
            self.args.loss_temperature,
            self.args.loss_normalization,
            num_items_in_batch,
        )

    def _get_last_hidden_state(self, unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs):
        # With a teacher view, the teacher's forward pass gets its own prompt before the shared completion.
        if self._teacher_prompt is not None and unwrapped_model is self.accelerator.unwrap_model(self.teacher_model):
            input_ids, attention_mask = teacher_inputs(self._teacher_prompt, input_ids, attention_mask, logits_to_keep)
        return super()._get_last_hidden_state(unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs)

    def create_model_card(self, model_name=None, dataset_name=None, tags=None):
        # TRL's card links `dataset_name` to the Hub; local files are named in the ESR section only.
        hub_dataset = None if dataset_name is None or os.path.exists(dataset_name.split(", ")[0]) else dataset_name
        super().create_model_card(model_name=model_name, dataset_name=hub_dataset, tags=tags)
        if self.is_world_process_zero():
            add_esr_details(os.path.join(self.args.output_dir, "README.md"), self, dataset_name)
