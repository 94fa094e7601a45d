"""The demo's outputs: the comparison table (stdout and `report.md`), `metrics.json` and the PNG figures."""

import json
from dataclasses import asdict
from pathlib import Path

import matplotlib


matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .distill import RunResult  # noqa: E402


FIGURES = {
    "accuracy_vs_step": "accuracy_vs_step.png",
    "accuracy_vs_time": "accuracy_vs_time.png",
    "kl_per_position": "kl_per_position.png",
}


def table(runs: list[RunResult]) -> str:
    """Markdown table; the speed-up is the full-rollout run's training wall time over each run's."""
    baseline = next(run for run in runs if run.k is None).wall_seconds
    lines = [
        "| method | final accuracy | best accuracy | wall time (s) | tokens generated | teacher tokens scored "
        "| speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        best = max(point["accuracy"] for point in run.curve)
        lines.append(
            f"| {run.method} | {run.final_accuracy:.1%} | {best:.1%} | {run.wall_seconds:.1f} | "
            f"{run.tokens_generated:,} | {run.tokens_generated:,} | {baseline / run.wall_seconds:.2f}x |"
        )
    return "\n".join(lines)


def write_report(output_dir: Path, summary: dict, runs: list[RunResult], kl: dict[str, list[float]], k: int) -> str:
    """Write `metrics.json`, the figures and `report.md`; return the table."""
    (output_dir / "metrics.json").write_text(
        json.dumps({**summary, "runs": {run.method: asdict(run) for run in runs}, "kl_per_position": kl}, indent=2)
    )
    _plot_accuracy(output_dir / FIGURES["accuracy_vs_step"], runs, "step", "optimizer step", summary)
    _plot_accuracy(output_dir / FIGURES["accuracy_vs_time"], runs, "train_seconds", "training wall time (s)", summary)
    _plot_kl(output_dir / FIGURES["kl_per_position"], kl, k, summary["kl_sampling"])
    result_table = table(runs)
    (output_dir / "report.md").write_text(_markdown(summary, result_table))
    return result_table


def _markdown(summary: dict, result_table: str) -> str:
    figures = "\n".join(f"![{name}]({file})" for name, file in FIGURES.items())
    return f"""# ESR vs full-rollout on-policy distillation

Task: {summary["task"]}. Device: {summary["device"]}.

- Teacher: {summary["teacher"]}, greedy accuracy {summary["teacher_accuracy"]:.1%}.
- Student: {summary["student"]}, greedy accuracy before distillation {summary["student_accuracy"]:.1%}.
- Distillation: {summary["distillation"]}.
- Accuracy: greedy exact match of the final answer on {summary["test_size"]} held-out problems, full-length
  generation. Wall time: training only (evaluation excluded). Teacher tokens scored = completion tokens the
  teacher's forward pass runs over = tokens generated (summed `esr/tokens_generated` logs).

{result_table}

Per-position KL: {summary["kl_sampling"]}.

{figures}

Total demo time: {summary["total_seconds"]:.0f} s.
"""


def _plot_accuracy(path: Path, runs: list[RunResult], x_key: str, x_label: str, summary: dict) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for run in runs:
        ax.plot([p[x_key] for p in run.curve], [p["accuracy"] for p in run.curve], marker="o", ms=3, label=run.method)
    ax.axhline(summary["teacher_accuracy"], color="gray", ls="--", lw=1, label="teacher")
    ax.set(xlabel=x_label, ylabel="held-out accuracy (greedy)", ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plot_kl(path: Path, kl: dict[str, list[float]], k: int, sampling: str) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for label, values in kl.items():
        ax.plot(range(1, len(values) + 1), values, label=label)
    ax.axvline(k, color="red", ls=":", label=f"k = {k}")
    ax.set(xlabel="response position", ylabel="KL(student || teacher)", title=sampling, yscale="log")
    ax.title.set_fontsize(8)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
