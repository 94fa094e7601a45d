"""Diagnostics for choosing ESR's rollout horizon k before (and while) spending GPU hours.

- [`run_diagnostics`] samples full-length student rollouts as [`MeasurementSettings`] say, scores them with the
  teacher position by position ([`score_completions`], [`summarize`]), applies the paper's cumulative-KL-share rule
  ([`recommend_k`]) and optionally runs the teacher-decay probe ([`teacher_decay_probe`]); [`write_report`] writes
  JSON, plots and a Markdown summary.
  The `trl-esr suggest-k` command wraps all of it.
- [`ESRDiagnosticsCallback`] logs the KL before and after k during training.

See docs/choosing-k.md.
"""

from .._lazy import lazy_exports


# Each name is imported from its module on first use (PEP 562): the trainer needs the callback only, and only when
# `esr_diagnostics_steps > 0`, so `import trl_esr` loads none of the report, probe or CLI code.
_LAZY = {
    "DecayResult": ".decay",
    "DiagnosticsResult": ".run",
    "ESRDiagnosticsCallback": ".callback",
    "KRecommendation": ".recommend",
    "MeasurementSettings": ".run",
    "PositionStats": ".per_position",
    "PositionSummary": ".per_position",
    "boxed_answer_checker": ".decay",
    "key_numbers": ".report",
    "kl_within_and_beyond": ".callback",
    "prompt_from_row": ".prompts",
    "recommend_k": ".recommend",
    "run_diagnostics": ".run",
    "sample_completions": ".per_position",
    "score_completions": ".per_position",
    "summarize": ".per_position",
    "teacher_decay_probe": ".decay",
    "tokenize_prompts": ".prompts",
    "write_report": ".report",
}

__all__ = [
    "DecayResult",
    "DiagnosticsResult",
    "ESRDiagnosticsCallback",
    "KRecommendation",
    "MeasurementSettings",
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


__getattr__, __dir__ = lazy_exports(__name__, globals(), _LAZY)
