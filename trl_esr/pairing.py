"""How the teacher's tokenizer relates to the student's, decided once when the trainer is built.

- "same": every student token has the same id in the teacher (identical tokenizers, or a teacher that only adds tokens,
  like Qwen3 over Qwen2.5) and both heads have the same rows. TRL's fast path, untouched.
- "padded": the same, but one model's head has extra rows that no student token uses (e.g. Qwen2.5-Math-7B's 152,064
  vs Qwen3's 151,936). TRL would refuse the pair; the fast path runs with both heads cut to the shared size.
- "aligned": different tokenizers (another family, or the same size with another token->string mapping), or a teacher
  head too small for the ids the student can emit. Rollouts are re-tokenized for the teacher and aligned by position
  in the text (`trl_esr.cross_tokenizer`).
"""

import logging
from dataclasses import dataclass

from transformers import AutoConfig, AutoProcessor, AutoTokenizer, PreTrainedTokenizerBase, ProcessorMixin

from ._trl_compat import model_id
from .cross_tokenizer import Aligner, SharedVocabulary, shares_student_ids, token_bytes


logger = logging.getLogger(__name__)


@dataclass
class TokenizerPairing:
    mode: str  # "same", "padded" or "aligned"
    processing_class: object  # the student's, as given or loaded the way TRL loads it
    teacher_tokenizer: PreTrainedTokenizerBase | None
    vocab_size: int | None = None  # "padded": the number of head rows both models use
    shared: SharedVocabulary | None = None  # "aligned"
    aligner: Aligner | None = None  # "aligned"

    @property
    def loads_teacher_itself(self) -> bool:
        """TRL refuses a teacher whose head size differs, so for these pairs the trainer loads it."""
        return self.mode != "same"

    @classmethod
    def detect(cls, args, model, teacher_model, processing_class, teacher_processing_class) -> "TokenizerPairing":
        model_name = model if isinstance(model, str) else model_id(model)
        if processing_class is None:  # as TRL would load it, so that both sides can be compared now
            processing_class = AutoProcessor.from_pretrained(
                model_name, truncation_side="left", padding_side="left", trust_remote_code=args.trust_remote_code
            )
        if teacher_model is None:
            return cls("same", processing_class, None)
        student_tokenizer = (
            processing_class.tokenizer if isinstance(processing_class, ProcessorMixin) else processing_class
        )
        teacher_name = teacher_model if isinstance(teacher_model, str) else model_id(teacher_model)
        teacher_tokenizer = teacher_processing_class or _load_tokenizer(
            args.teacher_tokenizer_name_or_path or (teacher_name if teacher_name != model_name else None),
            args.trust_remote_code,
        )
        same_ids = teacher_tokenizer is None or shares_student_ids(student_tokenizer, teacher_tokenizer)
        if same_ids and args.tokenizer_alignment != "always":
            student_size, teacher_size = _vocab_size(model, args), _vocab_size(teacher_model, args)
            if student_size == teacher_size:
                return cls("same", processing_class, teacher_tokenizer)
            if min(student_size, teacher_size) >= len(student_tokenizer):  # both heads score every student token
                return cls("padded", processing_class, teacher_tokenizer, vocab_size=min(student_size, teacher_size))
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
        return cls.aligned(processing_class, student_tokenizer, teacher_tokenizer, args.min_shared_vocab_fraction)

    @classmethod
    def aligned(cls, processing_class, student, teacher, min_fraction: float) -> "TokenizerPairing":
        if not teacher.is_fast:
            raise ValueError(
                f"The teacher's tokenizer `{teacher.name_or_path}` differs from the student's and is a slow "
                "tokenizer, which cannot report the character offsets the alignment needs. Load its fast version "
                "(`use_fast=True`) and pass it as `teacher_processing_class`."
            )
        student_table = token_bytes(student)  # one pass over each vocabulary, shared by both uses below
        shared = SharedVocabulary.build(student, teacher, student_table=student_table)
        logger.info(f"The tokenizers differ: {shared.fraction:.1%} of the student's vocabulary is shared.")
        if shared.fraction < min_fraction:
            raise ValueError(
                f"The student's tokenizer `{student.name_or_path}` and the teacher's `{teacher.name_or_path}` share "
                f"only {shared.fraction:.1%} of the student's vocabulary (minimum `min_shared_vocab_fraction` = "
                f"{min_fraction:.0%}), too little for a meaningful KL. Pick a teacher whose vocabulary overlaps more, "
                "or lower `min_shared_vocab_fraction` if you know what you are doing."
            )
        aligner = Aligner(student, teacher, student_table=student_table)
        return cls("aligned", processing_class, teacher, shared=shared, aligner=aligner)


def _load_tokenizer(name: str | None, trust_remote_code: bool) -> PreTrainedTokenizerBase | None:
    if name is None:  # self-distillation, or a teacher instance without a path: the student's tokenizer
        return None
    try:
        return AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        logger.warning(f"Could not load the teacher's tokenizer from `{name}` ({error}); assuming the student's.")
        return None


def _vocab_size(model, args) -> int:
    config = model.config if not isinstance(model, str) else AutoConfig.from_pretrained(
        model, trust_remote_code=args.trust_remote_code)  # fmt: skip
    return config.get_text_config().vocab_size
