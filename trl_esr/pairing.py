"""How the teacher's tokenizer relates to the student's, decided once when the trainer is built, and what the trainer
does differently for it.

- "same" ([`TokenizerPairing`]): every student token has the same id in the teacher (identical tokenizers, or a
  teacher that only adds tokens, like Qwen3 over Qwen2.5) and both heads have the same rows. TRL's path, untouched:
  every hook below is a no-op.
- "padded" ([`PaddedHeads`]): the same, but one model's head has extra rows that no student token uses (e.g.
  Qwen2.5-Math-7B's 152,064 vs Qwen3's 151,936). TRL would refuse the pair; its path runs with both heads cut to the
  shared size, and a padded student never samples an id the teacher lacks.
- "aligned" (`trl_esr.cross_tokenizer.CrossTokenizer`): different tokenizers (another family, or the same size with
  another token->string mapping), or a teacher head too small for the ids the student can emit. Rollouts are
  re-tokenized for the teacher and aligned by position in the text.

Which of the three a pair is, [`pair_kind`] says from the two tokenizers and head sizes alone, without building
anything: the trainer's [`TokenizerPairing.detect`] and `trl-esr suggest-k` (which measures "same" pairs only) both
ask it.

The pairing is a *strategy object* the trainer holds, not a subclass of the trainer. Which relation applies is known
only inside the constructor, once both tokenizers and head sizes have been read from the arguments the user gave to
one class, `ESRDistillTrainer`: a trainer subclass per relation would need a factory or `__new__` dispatch, and would
not compose with a user's own subclass of `ESRDistillTrainer` (which would have to be written once per relation). As
a strategy, the trainer's overrides read the same for every pair and never ask which relation they serve; the
cross-tokenizer support is one object behind six small hooks, built and testable without a trainer:

- `load_teacher(args, teacher_model)` / `attach(trainer, own_teacher)`: around TRL's constructor (TRL refuses a
  teacher with another head size, so those pairs load it themselves, the way TRL would);
- `divergence_loss(args)`: the divergence TRL's `_compute_loss` calls (`trl_esr.loss.DivergenceLoss`);
- `prepare_batch(batch, stop_ids)`: after each rollout batch (the cross-tokenizer pairing re-tokenizes here);
- `teacher_hidden_states(forward, teacher, batch, ...)`: the teacher's forward pass inside TRL's `_compute_loss`;
- `metrics(trained, alignable)`: extra `esr/*` metrics of a training batch.
"""

import logging
from collections.abc import Callable
from typing import NamedTuple

import torch
from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin

from ._trl_compat import load_teacher, model_id, model_revision, prepare_teacher, suppress_ids_above, teacher_revision
from .loss import DivergenceLoss
from .teacher_view import teacher_inputs


logger = logging.getLogger(__name__)


class TokenizerPairing:
    """The teacher reads the student's token ids: TRL's path. The base of the other pairings, whose hooks default to
    TRL's behaviour."""

    mode = "same"
    loads_teacher_itself = False  # TRL refuses a teacher whose head size differs: these pairings load it themselves
    full_vocabulary = True  # the teacher scores the student's ids over one vocabulary (as the diagnostics do)
    vocab_size: int | None = None  # the head rows both models use, where they differ
    shared = None  # the cross-tokenizer pairing's `SharedVocabulary`

    def __init__(self, processing_class, teacher_tokenizer: PreTrainedTokenizerBase | None):
        self.processing_class = processing_class  # the student's, as given or loaded the way TRL loads it
        self.teacher_tokenizer = teacher_tokenizer

    def load_teacher(self, args, teacher_model):
        """The teacher model this pairing loads itself (by name, as TRL would), or `None`: TRL's constructor does."""
        return load_teacher(args, teacher_model) if self.loads_teacher_itself else None

    def attach(self, trainer, own_teacher) -> None:
        """After TRL's constructor: place the teacher loaded by `load_teacher`, as TRL places its own."""
        if own_teacher is not None:
            trainer.teacher_model = prepare_teacher(trainer, own_teacher)

    def divergence_loss(self, args) -> Callable:
        """The divergence, with the signature of TRL's `_chunked_divergence_loss`."""
        return DivergenceLoss(args.loss_normalization, args.loss_temperature, vocab_size=self.vocab_size)

    def prepare_batch(self, batch: dict, stop_ids: list[int]) -> None:
        """Complete a training or evaluation batch from `_generate_and_score_completions`, in place."""

    def teacher_hidden_states(self, forward, teacher, batch, input_ids, attention_mask, logits_to_keep, **kwargs):
        """The teacher's hidden states for the loss, (B, C, H_t), one per completion position: `forward` (TRL's
        `_get_last_hidden_state`) on the student's sequence, or, with a teacher view of the prompt
        (`teacher_prompt_ids` in the batch), on the teacher's own prompt followed by the same completion."""
        if "teacher_prompt_ids" in batch:
            teacher_prompt = (batch["teacher_prompt_ids"], batch["teacher_prompt_mask"])
            input_ids, attention_mask = teacher_inputs(teacher_prompt, input_ids, attention_mask, logits_to_keep)
        return forward(teacher, input_ids, attention_mask, logits_to_keep, **kwargs)

    def metrics(self, trained: torch.Tensor, alignable: torch.Tensor) -> dict[str, float]:
        """Extra `esr/*` metrics of a training batch, from the tokens trained and the positions that could have been
        (totals over processes)."""
        return {}

    @classmethod
    def detect(
        cls, args, model, teacher_model, processing_class, teacher_processing_class, text_only: bool = True
    ) -> "TokenizerPairing":
        """The pairing the trainer holds for these constructor arguments: [`pair_kind`] on the two tokenizers (each
        loaded as TRL would, if not given) and head sizes, then the matching strategy object. `text_only`: the
        datasets have no image column (see [`load_processing_class`])."""
        from . import cross_tokenizer  # the alignment layer: loaded by the first trainer built, not by the import

        # Tokenizers and configs are read at the revisions TRL loads the weights from (`model_init_kwargs`' and
        # `teacher_model_init_kwargs`' `revision`, `teacher_model_revision`): a branch may have another vocabulary.
        model_name = model if isinstance(model, str) else model_id(model)
        student_rev, teacher_rev = model_revision(args, model), teacher_revision(args, teacher_model)
        if processing_class is None:  # as TRL would load it, so that both sides can be compared now
            processing_class = load_processing_class(model_name, student_rev, args.trust_remote_code, text_only)
        if teacher_model is None:
            return cls(processing_class, None)
        student_tokenizer = (
            processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
        )
        teacher_name = teacher_model if isinstance(teacher_model, str) else model_id(teacher_model)
        if args.teacher_tokenizer_name_or_path is not None:  # its own repository: its default branch
            source, revision = args.teacher_tokenizer_name_or_path, None
        else:  # the teacher's own (None: the student's files, at the same revision)
            same_files = teacher_name == model_name and teacher_rev == student_rev
            source, revision = (None if same_files else teacher_name), teacher_rev
        teacher_tokenizer = teacher_processing_class or _load_tokenizer(source, args.trust_remote_code, revision)
        student_size = head_size(model, args.trust_remote_code, student_rev)
        teacher_size = head_size(teacher_model, args.trust_remote_code, teacher_rev)
        kind = pair_kind(student_tokenizer, teacher_tokenizer, student_size, teacher_size, args.tokenizer_alignment)
        if kind.mode == "same":
            return cls(processing_class, teacher_tokenizer)
        if kind.mode == "padded":
            return PaddedHeads(processing_class, teacher_tokenizer, vocab_size=kind.vocab_size)
        if kind.shares_ids and args.tokenizer_alignment != "always":
            logger.warning(
                f"The teacher's head has {teacher_size} rows, fewer than the student's {len(student_tokenizer)} "
                "tokens: the student's rollouts are re-tokenized for the teacher (the aligned path)."
            )
        if teacher_tokenizer is None and args.tokenizer_alignment == "always":
            teacher_tokenizer = student_tokenizer  # the consistency check on a shared tokenizer
        elif teacher_tokenizer is None:
            raise ValueError(
                "The teacher's head cannot score every token the student can emit, and the teacher's tokenizer could "
                "not be loaded for the aligned path. Set `teacher_tokenizer_name_or_path` or pass "
                "`teacher_processing_class`."
            )
        return cross_tokenizer.CrossTokenizer.build(
            processing_class, student_tokenizer, teacher_tokenizer, args.min_shared_vocab_fraction
        )


class PaddedHeads(TokenizerPairing):
    """The student's token ids, but one head has extra rows no token uses: TRL's path on the first `vocab_size` rows
    of both heads, and the student never samples past them."""

    mode = "padded"
    loads_teacher_itself = True
    full_vocabulary = False

    def __init__(self, processing_class, teacher_tokenizer, vocab_size: int):
        super().__init__(processing_class, teacher_tokenizer)
        self.vocab_size = vocab_size

    def attach(self, trainer, own_teacher) -> None:
        super().attach(trainer, own_teacher)
        suppress_ids_above(trainer, self.vocab_size)  # a student head with extra rows: no id the teacher lacks


def load_processing_class(name: str, revision: str | None, trust_remote_code: bool, text_only: bool = True):
    """The student's processing class as TRL loads it (`AutoProcessor`, left padding and truncation).

    A vision-language checkpoint's processor can fail to load where text-only training needs none of it: Qwen3.5's
    video processor exists only for torchvision (`ImportError`, or a `ValueError` without its config file), and a
    folder saved with its tokenizer alone has no image processor (`OSError`). For text-only datasets TRL uses only the
    tokenizer (and then runs the model as a text model), so the tokenizer is loaded instead, with a warning that says
    why; a dataset with an image column needs the processor, and gets transformers' error.
    """
    kwargs = dict(revision=revision, truncation_side="left", padding_side="left", trust_remote_code=trust_remote_code)
    try:
        return AutoProcessor.from_pretrained(name, **kwargs)
    except (ImportError, OSError, ValueError) as error:
        if not text_only:
            raise
        reason = " ".join(str(error).split())  # transformers' messages span several lines
        logger.warning(
            f"The processor of `{name}` could not be loaded ({type(error).__name__}: {reason}). The datasets are "
            "text-only, so its tokenizer is used instead (as `processing_class=AutoTokenizer.from_pretrained(...)`)."
        )
        return AutoTokenizer.from_pretrained(name, **kwargs)


def _load_tokenizer(
    name: str | None, trust_remote_code: bool, revision: str | None = None
) -> PreTrainedTokenizerBase | None:
    if name is None:  # self-distillation, or a teacher instance without a path: the student's tokenizer
        return None
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as error:
        logger.warning(f"Could not load the teacher's tokenizer from `{name}` ({error}); assuming the student's.")
        return None


class PairKind(NamedTuple):
    """What [`pair_kind`] finds out about a student-teacher pair."""

    mode: str  # "same", "padded" or "aligned": the pairing the trainer uses (see the module docstring)
    shares_ids: bool  # every student token has the same id in the teacher's tokenizer
    vocab_size: int | None = None  # "padded": the head rows both models use (the student's ids all fall below it)


def pair_kind(
    student_tokenizer: PreTrainedTokenizerBase,
    teacher_tokenizer: PreTrainedTokenizerBase | None,
    student_vocab_size: int,
    teacher_vocab_size: int,
    tokenizer_alignment: str = "auto",
) -> PairKind:
    """Which pairing the trainer uses for a student and a teacher, from their tokenizers (`None`: the teacher uses the
    student's) and head sizes (`config.vocab_size`, see [`head_size`]); `tokenizer_alignment` is
    `ESRConfig.tokenizer_alignment`. Nothing is loaded or built, so a command can refuse a pair before any weights."""
    from . import cross_tokenizer  # the alignment layer: loaded by the first pair checked, not by the import

    shares_ids = teacher_tokenizer is None or cross_tokenizer.shares_student_ids(student_tokenizer, teacher_tokenizer)
    if not shares_ids or tokenizer_alignment == "always":
        return PairKind("aligned", shares_ids)
    if student_vocab_size == teacher_vocab_size:
        return PairKind("same", True)
    shared_rows = min(student_vocab_size, teacher_vocab_size)
    if shared_rows >= len(student_tokenizer):  # both heads score every student token
        return PairKind("padded", True, shared_rows)
    return PairKind("aligned", True)  # a head too small for the ids the student can emit


def head_size(model, trust_remote_code: bool = False, revision: str | None = None) -> int:
    """The rows of a model's `lm_head` (its text config's `vocab_size`), from an instance or, without loading any
    weights, from the config of a name or path at `revision` (`None`: the default branch)."""
    if not isinstance(model, str):
        return model.config.get_text_config().vocab_size
    config = AutoConfig.from_pretrained(model, trust_remote_code=trust_remote_code, revision=revision)
    return config.get_text_config().vocab_size
