"""Diagnostics for choosing ESR's rollout horizon k before (and while) spending GPU hours.

- [`run_diagnostics`] samples full-length student rollouts, scores them with the teacher position by position
  ([`score_completions`], [`summarize`]), applies the paper's cumulative-KL-share rule ([`recommend_k`]) and optionally
  runs the teacher-decay probe ([`teacher_decay_probe`]); [`write_report`] writes JSON, plots and a Markdown summary.
  The `trl-esr suggest-k` command wraps all of it.
- [`ESRDiagnosticsCallback`] logs the KL before and after k during training.

See docs/choosing-k.md.
"""

from .callback import ESRDiagnosticsCallback, kl_within_and_beyond
from .decay import DecayResult, boxed_answer_checker, teacher_decay_probe
from .per_position import PositionStats, PositionSummary, sample_completions, score_completions, summarize
from .prompts import prompt_from_row, tokenize_prompts
from .recommend import KRecommendation, recommend_k
from .report import key_numbers, write_report
from .run import DiagnosticsResult, run_diagnostics


__all__ = [
    "DecayResult",
    "DiagnosticsResult",
    "ESRDiagnosticsCallback",
    "KRecommendation",
    "PositionStats",
    "PositionSummary",
    "boxed_answer_checker",
    "key_numbers",
    "kl_within_and_beyond",
    "prompt_from_row",
    "recommend_k",
    "run_diagnostics",
    "sample_completions",
    "score_completions",
    "summarize",
    "teacher_decay_probe",
    "tokenize_prompts",
    "write_report",
]
