"""The ESR section of the model card: what a reader needs to reproduce or judge the distillation run.

TRL's card (written by `_BaseTrainer.create_model_card` from the trainer's `_name`, `_paper` and `_tag_names`) names
the student base model, the dataset, the framework versions and the citation. It does not know about the teacher or
ESR's settings, so `ESRDistillTrainer.create_model_card` inserts this section before TRL's "Framework versions".
"""

from pathlib import Path

from transformers.trainer_utils import SchedulerType

from ._trl_compat import model_id


_ANCHOR = "### Framework versions"


def esr_details(trainer, dataset_name: str | None = None) -> str:
    """Markdown describing the teacher, the dataset, the rollout horizon and the key hyperparameters of the run."""
    from . import __version__

    args = trainer.args
    teacher = model_id(trainer.accelerator.unwrap_model(trainer.teacher_model))
    revision = trainer._teacher_revision  # the branch, tag or commit a teacher given by name was loaded from
    if args.esr_k is None:
        horizon = f"full rollouts (ESR off), up to `max_completion_length={args.max_completion_length}` tokens"
    elif args.esr_k_schedule == "linear":
        horizon = (f"k grows linearly from {args.esr_k_start} to **{args.esr_k}** tokens over "
                   f"{args.esr_k_warmup_steps} steps (`esr_mode=\"{args.esr_mode}\"`)")  # fmt: skip
    else:
        horizon = f'training rollouts stop after the first **k = {args.esr_k}** tokens (`esr_mode="{args.esr_mode}"`)'
    rows = {
        "teacher": (f"`{teacher}`" + (f" (revision `{revision}`)" if revision else ""))
        if teacher
        else "a local model",
        **_vocabulary_row(trainer._pairing),
        "dataset": f"`{dataset_name}`" if dataset_name else "not given",
        "rollout horizon": horizon,
        "divergence": f"generalized JSD with beta={args.beta} (1.0 = reverse KL, KL(student ‖ teacher))",
        "loss": f'`loss_normalization="{args.loss_normalization}"`, `loss_temperature={args.loss_temperature}`',
        "sampling": f"temperature {args.temperature}, top-p {args.top_p}, top-k {args.top_k}",
        "optimisation": (
            f"learning rate {args.learning_rate} ({SchedulerType(args.lr_scheduler_type).value}, warm-up "
            f"{args.warmup_steps}), {args.per_device_train_batch_size} prompts/device x "
            f"{args.gradient_accumulation_steps} accumulation steps, grad-clip {args.max_grad_norm}, "
            f"{trainer.state.global_step} steps"
        ),  # fmt: skip
        "trl_esr": __version__,
    }
    table = "\n".join(f"| {name} | {value} |" for name, value in rows.items())
    return (
        "### Early Stopping Rollout\n\n"
        "This student was distilled on-policy from the teacher with Early Stopping Rollout "
        "(trl_esr, arXiv 2605.27028): the student samples its own responses, "
        "the teacher scores their first k tokens, and the student minimises the reverse KL to the teacher there.\n\n"
        f"| setting | value |\n|---|---|\n{table}\n\n"
    )


def _vocabulary_row(pairing) -> dict[str, str]:
    """How the teacher read the student's tokens, where it did not simply read its ids: the KL was then over part of
    a vocabulary, which a reader comparing runs needs to know."""
    if pairing.mode == "padded":
        rows = f"the KL over the {pairing.vocab_size} head rows both models use"
        return {"vocabulary": f"one vocabulary, heads of different sizes: {rows}"}
    if pairing.mode == "aligned":
        shared = f"{pairing.shared.fraction:.1%} of the student's vocabulary"
        how = "rollouts re-tokenized for the teacher, aligned by characters"
        return {"vocabulary": f"another tokenizer: {how}, the KL over the {shared} both tokenizers spell alike"}
    return {}


def add_esr_details(readme: str | Path, trainer, dataset_name: str | None = None) -> None:
    """Insert the ESR section into the model card at `readme`, before TRL's framework versions (or at the end), and
    mend TRL's template where it assumes Hub ids: a local student (TRL's `base_model` is then `None`) and a run not
    pushed to the Hub (`hub_model_id` is `None`) would read `[None](https://huggingface.co/None)` and
    `model="None"`."""
    readme = Path(readme)
    card, section = readme.read_text(), esr_details(trainer, dataset_name)
    card = card.replace(_ANCHOR, section + _ANCHOR, 1) if _ANCHOR in card else card + "\n" + section
    student = model_id(trainer.model)
    local = f"the local model `{student}`" if student else "a model"
    card = card.replace("[None](https://huggingface.co/None)", local)
    card = card.replace('model="None"', f'model="{trainer.hub_model_id or trainer.args.output_dir}"')
    readme.write_text(card)
