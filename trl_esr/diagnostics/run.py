"""`run_diagnostics`: sample full-length student rollouts, score them with the teacher, recommend k, probe decay."""

from collections.abc import Sequence
from dataclasses import dataclass, field

from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from .decay import AnswerChecker, DecayResult, teacher_decay_probe
from .per_position import (
    PositionStats,
    PositionSummary,
    eos_token_ids,
    sample_completions,
    score_completions,
    seeded_sampling,
    summarize,
)
from .prompts import prompt_from_row, tokenize_prompts
from .recommend import DEFAULT_THRESHOLD, KRecommendation, recommend_k


@dataclass
class DiagnosticsResult:
    """Everything `suggest-k` measures. `stats` and `completion_ids` are kept for further analysis, not written out.

    Attributes:
        settings: the sampling settings and seed, recorded in `diagnostics.json`.
        summary: per-position statistics (see [`PositionSummary`]).
        recommendation: the cumulative-KL-share rule's answer (see [`recommend_k`]).
        decay: the teacher-decay probe, when it ran.
        stats: per-token statistics of every rollout, `(N, T)` tensors.
        completion_ids: the student's rollouts, EOS included.
    """

    settings: dict
    summary: PositionSummary
    recommendation: KRecommendation
    decay: DecayResult | None = None
    stats: PositionStats | None = field(default=None, repr=False)
    completion_ids: list[list[int]] = field(default_factory=list, repr=False)


def run_diagnostics(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_rows: Sequence[dict],
    max_completion_length: int,
    temperature: float = 0.7,
    top_p: float = 0.95,
    batch_size: int = 8,
    seed: int = 0,
    threshold: float = DEFAULT_THRESHOLD,
    probe_k_grid: Sequence[int] = (),
    answer_checker: AnswerChecker | None = None,
    show_progress: bool = True,
) -> DiagnosticsResult:
    """Measure where along full-length student rollouts the teacher disagrees, and recommend k.

    One rollout per row of `prompt_rows` (rows with a `prompt` or `messages` column) is sampled from the student with
    HF `generate` at `temperature` / `top_p` (the paper's 0.7 / 0.95 by default; no top-k) up to
    `max_completion_length` tokens. The same `seed` and `batch_size` give the same numbers. If `probe_k_grid` is not
    empty, the teacher-decay probe runs too and needs `answer_checker`.
    """
    if probe_k_grid and answer_checker is None:
        raise ValueError("`probe_k_grid` is set but `answer_checker` is None: the probe needs a way to grade answers.")
    prompt_ids = tokenize_prompts(tokenizer, [prompt_from_row(row) for row in prompt_rows])
    eos_ids = eos_token_ids(tokenizer, student)
    generation_config = GenerationConfig(
        max_new_tokens=max_completion_length,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        top_k=0,  # the paper samples with temperature and top-p only
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=eos_ids,
    )
    with seeded_sampling(seed, student.device):
        completion_ids = sample_completions(
            student, prompt_ids, generation_config, tokenizer.pad_token_id, eos_ids, batch_size, show_progress
        )
    stats = score_completions(
        student, teacher, prompt_ids, completion_ids, tokenizer.pad_token_id, batch_size, show_progress
    )
    summary = summarize(stats)
    recommendation = recommend_k(summary.kl_mean, summary.alive, threshold)
    decay = None
    if probe_k_grid:
        decay = teacher_decay_probe(
            teacher, tokenizer, prompt_rows, prompt_ids, completion_ids, probe_k_grid, answer_checker,
            max_completion_length, batch_size, show_progress,
        )  # fmt: skip
    settings = {
        "num_prompts": len(prompt_rows),
        "max_completion_length": max_completion_length,
        "temperature": temperature,
        "top_p": top_p,
        "batch_size": batch_size,
        "seed": seed,
        "threshold": threshold,
        "probe_k_grid": list(probe_k_grid),
    }
    return DiagnosticsResult(settings, summary, recommendation, decay, stats, completion_ids)
