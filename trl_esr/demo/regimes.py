"""The demo's two regimes, and what `trl-esr suggest-k`'s diagnostics predict for each before any training.

Both regimes share the teacher (trained on the derivation format) and differ only in the student:

- **errors beyond k**: a student stopped early in its SFT on the derivation format. Its mistakes are carry and digit
  errors spread over the whole derivation, most of them after the first k tokens, where ESR never trains.
- **early decision**: a student trained on a mix in which most examples use the shortcut format. Greedy, it takes
  the shortcut at its first token and is right only when no column carries; started on the derivation, it is
  nearly always right. What it must learn is decided within the first k tokens, and the teacher's guidance after a
  shortcut prefix is off-policy (the teacher never wrote one), which is where the paper says ESR pays off.
"""

from dataclasses import asdict, dataclass

from transformers import PreTrainedModel, PreTrainedTokenizerFast

from ..diagnostics import MeasurementSettings, run_diagnostics
from ..diagnostics.report import key_numbers
from .pretrain import chat_prompt
from .task import is_correct


@dataclass(frozen=True)
class Regime:
    """One regime: its student's SFT recipe and the learning rate of its distillation runs (see docs/demo.md for the
    learning rates tried)."""

    name: str
    title: str
    student_sft_steps: int
    shortcut_fraction: float
    learning_rate: float


@dataclass
class Prediction:
    """What the pre-training diagnostics say about a regime: `suggest-k`'s recommendation and the teacher-decay probe.

    `kl_share_within_k` is the share of all the KL a full-rollout run would train on that lies in the first `k`
    tokens (the demo's k); `decay_accuracy[i]` is the teacher's accuracy when it continues a student prefix of
    `decay_k_grid[i]` tokens (0: the teacher alone).
    """

    recommended_k: int | None
    kl_share_within_k: float
    mean_kl_within_k: float
    mean_kl_beyond_k: float | None
    decay_k_grid: list[int]
    decay_accuracy: list[float]
    reading: str

    def as_dict(self) -> dict:
        return asdict(self)


def predict(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[tuple[int, int]],
    n_digits: int,
    k: int,
    max_completion_length: int,
    seed: int,
) -> Prediction:
    """Run the diagnostics of `trl-esr suggest-k` (paper sampling settings, one rollout per pair) with the probe.

    The probe continues from student prefixes of 0, k and 2k tokens; 2k is left out where the rollouts are too short
    to hold it (`--k` above half of `max_completion_length`), as the probe refuses a prefix it cannot cut.
    """
    rows = [{"prompt": chat_prompt(a, b, n_digits), "a": a, "b": b} for a, b in pairs]
    grid = [0, k, 2 * k] if 2 * k < max_completion_length else [0, k]
    result = run_diagnostics(
        student,
        teacher,
        tokenizer,
        rows,
        MeasurementSettings(max_completion_length, batch_size=len(rows), seed=seed, probe_k_grid=tuple(grid)),
        answer_checker=lambda row, text: is_correct(row["a"], row["b"], n_digits, text),
        show_progress=False,
    )
    numbers = key_numbers(result)
    summary = result.summary
    weights = [m * n for m, n in zip(summary.kl_mean, summary.alive, strict=True)]
    total = sum(weights) or 1.0
    share = sum(weights[:k]) / total
    within = sum(weights[:k]) / max(1, sum(summary.alive[:k]))
    beyond_tokens = sum(summary.alive[k:])
    beyond = sum(weights[k:]) / beyond_tokens if beyond_tokens else None
    decay = result.decay.accuracy
    if share >= 0.5:
        reading = (
            f"{share:.0%} of the KL lies in the first {k} tokens: what the student must change is decided early, so "
            f"ESR should fix what full rollout fixes at a fraction of the cost."
        )
    else:
        reading = (
            f"only {share:.0%} of the KL lies in the first {k} tokens: most of what the student gets wrong comes "
            f"later, where ESR never trains, so full rollout should do better."
        )
    if decay[1] < decay[0] - 0.1:
        later = f", {decay[2]:.0%} after {grid[2]}" if len(grid) > 2 else ""
        reading += (
            f" The teacher decays after student prefixes ({decay[0]:.0%} alone, {decay[1]:.0%} after {k} student "
            f"tokens{later}): its guidance on long student rollouts is off-policy."
        )
    return Prediction(numbers["k"], share, within, beyond, grid, decay, reading)
