"""The demo's outputs: per-regime tables and readings (stdout and `report.md`), `metrics.json`, the PNG figures.

Every number and every sentence of the reading is computed from the runs; nothing is written in advance. The cost
comparison is *time to accuracy*: for an ESR run ending at accuracy a, its training time (the guard's measurements
included) until it first reached a, against the time the full-rollout run of the same seed needed to first reach a.
A run that merely stops early is not cheaper than a full-rollout run that could have stopped at the same accuracy.
"""

import json
from dataclasses import asdict
from pathlib import Path

from matplotlib.figure import Figure  # no pyplot: no global backend to set

from .distill import RunResult


FIGURES = {
    "accuracy_vs_step": "accuracy_vs_step.png",
    "accuracy_vs_time": "accuracy_vs_time.png",
    "kl_per_position": "kl_per_position.png",
}
# The demo's bar for the early-decision regime (issue 16): ESR + guard within this many points of full rollout's final
# accuracy, reached with at least these factors less training time and fewer generated tokens.
BAR_POINTS, BAR_TIME, BAR_TOKENS = 0.02, 2.5, 3.0


def time_to(run: RunResult, accuracy: float) -> dict | None:
    """The first evaluation point of `run` at or above `accuracy`, or None."""
    return next((p for p in run.curve if p["accuracy"] >= accuracy - 1e-9), None)


def compare(run: RunResult, full: RunResult) -> dict:
    """`run`'s final accuracy and what it cost to reach it, against what full rollout (same seed) needed for it."""
    mine, theirs = time_to(run, run.final_accuracy), time_to(full, run.final_accuracy)
    if run.kept_step is not None:  # the guard's checkpoint: what its user has, at the time it was saved
        mine = next((p for p in run.curve if p["step"] == run.kept_step), None)
    if mine is None:  # a kept checkpoint off the evaluation grid: count the whole run
        mine = run.curve[-1]
    out = {"accuracy": run.final_accuracy, "seconds": mine["train_seconds"], "tokens": mine["tokens"]}
    out["gain"] = run.final_accuracy > run.curve[0]["accuracy"]  # no gain: nothing was bought, no cost to compare
    out["full_reached"] = theirs is not None
    reference = theirs or full.curve[-1]  # not reached: full's whole run is a lower bound on what it would need
    out["speedup"] = reference["train_seconds"] / max(mine["train_seconds"], 1e-9)
    out["token_ratio"] = reference["tokens"] / max(mine["tokens"], 1)
    return out


def regime_table(runs: list[RunResult]) -> str:
    lines = [
        "| method | seed | final accuracy | best seen | steps run | wall time (s) | tokens generated "
        "| to final accuracy | full rollout to the same | time saved | tokens saved |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        full = _full_of(runs, run.seed)
        best = max(p["accuracy"] for p in run.curve)
        final = f"{run.final_accuracy:.1%}" + (f" (step {run.kept_step})" if run.kept_step is not None else "")
        steps = run.curve[-1]["step"]
        if run.k is None:
            cost = "| - | - | - | - |"
        elif not compare(run, full)["gain"]:
            cost = "| no gain over the student | - | - | - |"
        else:
            c = compare(run, full)
            reached = time_to(full, run.final_accuracy)
            full_cost = f"{reached['train_seconds']:.1f} s" if reached else f"not in {full.curve[-1]['step']} steps"
            bound = "" if c["full_reached"] else ">"
            cost = (
                f"| {c['seconds']:.1f} s, {c['tokens']:,} tok | {full_cost} | {bound}{c['speedup']:.1f}x "
                f"| {bound}{c['token_ratio']:.1f}x |"
            )
        lines.append(
            f"| {run.method} | {run.seed} | {final} | {best:.1%} | {steps} | {run.wall_seconds:.1f} | "
            f"{run.total_tokens:,} {cost}"
        )
    return "\n".join(lines)


def kl_split(kl: dict[str, list[float]], k: int) -> str:
    lines = ["| student | mean KL, positions 1..k | mean KL, positions > k |", "|---|---|---|"]
    for label, values in kl.items():
        within, beyond = values[:k], values[k:]
        beyond_text = f"{sum(beyond) / len(beyond):.3f}" if beyond else "-"
        lines.append(f"| {label} | {sum(within) / max(1, len(within)):.3f} | {beyond_text} |")
    return "\n".join(lines)


def bar_check(runs: list[RunResult]) -> tuple[bool, list[str]]:
    """The early-decision bar, per seed: ESR + guard within `BAR_POINTS` of full's final accuracy (or above), reached
    with >= `BAR_TIME` less time and >= `BAR_TOKENS` fewer tokens than full rollout needed for it."""
    ok, lines = True, []
    for run in (r for r in runs if r.guard):
        full = _full_of(runs, run.seed)
        c = compare(run, full)
        close = run.final_accuracy >= full.final_accuracy - BAR_POINTS
        met = close and c["gain"] and c["speedup"] >= BAR_TIME and c["token_ratio"] >= BAR_TOKENS
        ok &= met
        lines.append(
            f"seed {run.seed}: ESR + guard {run.final_accuracy:.1%} vs full rollout {full.final_accuracy:.1%} "
            f"({'within' if close else 'not within'} {BAR_POINTS:.0%}), {c['speedup']:.1f}x less time "
            f"(bar {BAR_TIME}x), {c['token_ratio']:.1f}x fewer tokens (bar {BAR_TOKENS}x): "
            f"{'met' if met else 'NOT met'}."
        )
    return ok, lines


def reading(regime: dict, k: int) -> str:
    """Plain words, from the numbers: how each ESR variant ended against full rollout, at what cost, what the guard
    did, and which method suits the regime."""
    runs, title = regime["runs"], regime["regime"].title
    by = {m: [r for r in runs if r.method == m] for m in dict.fromkeys(r.method for r in runs)}
    full_m, esr_m, guard_m = list(by)

    def mean(method: str) -> float:
        return sum(r.final_accuracy for r in by[method]) / len(by[method])

    full_acc = mean(full_m)
    peak = sum(max(p["accuracy"] for p in r.curve) for r in by[esr_m]) / len(by[esr_m])
    text = (
        f"{title} (means over {len(by[full_m])} seed(s), student {regime['student_accuracy']:.1%} before): full "
        f"rollout ends at {full_acc:.1%}, {esr_m} at {mean(esr_m):.1%} (its best evaluation {peak:.1%}), "
        f"{guard_m} at {mean(guard_m):.1%}. "
    )
    suits = []
    for label, method in (("ESR trained to the end", esr_m), ("ESR + guard", guard_m)):
        costs = [compare(r, _full_of(runs, r.seed)) for r in by[method]]
        if not all(c["gain"] for c in costs):
            text += f"{label} does not improve on the starting student. "
        elif mean(method) >= full_acc - BAR_POINTS:
            times, tokens = [c["speedup"] for c in costs], [c["token_ratio"] for c in costs]
            text += (
                f"{label} ends within {BAR_POINTS:.0%} of full rollout (or above) and reaches its accuracy with "
                f"{min(times):.1f}-{max(times):.1f}x less training time and {min(tokens):.1f}-{max(tokens):.1f}x "
                "fewer generated tokens than full rollout needs for the same accuracy. "
            )
            suits.append(min(times) >= 1)
        else:
            text += f"{label} ends {full_acc - mean(method):.1%} below full rollout. "
    stops = [r for r in by[guard_m] if r.stopped_at is not None]
    kept = [r.kept_step for r in by[guard_m] if r.kept_step is not None]
    text += (
        f"The guard stopped {len(stops)} of {len(by[guard_m])} run(s)"
        + (f" (at step {', '.join(str(r.stopped_at) for r in stops)})" if stops else "")
        + (f" and kept the checkpoint of step {', '.join(map(str, kept))}" if kept else "")
        + f"; the kept checkpoints score {mean(guard_m) - mean(esr_m):+.1%} against ESR's last step. "
    )
    if any(suits):
        text += "ESR suits this regime."
    elif full_acc <= regime["student_accuracy"]:
        lost_full, lost_esr = regime["student_accuracy"] - full_acc, regime["student_accuracy"] - mean(esr_m)
        text += (
            f"Neither method improves on the starting student in {by[full_m][0].curve[-1]['step']} steps; full "
            f"rollout loses {lost_full:.1%}, ESR {lost_esr:.1%}."
        )
    elif suits:  # matched full rollout's accuracy, but full rollout got there sooner on some seed
        text += (
            "ESR matches full rollout's accuracy here but is not faster on every seed: full rollout reached the same "
            "accuracy sooner on at least one, so neither method is the clear choice."
        )
    else:
        text += "Full rollout suits this regime: ESR does not match it here."
    return text


def write_report(output_dir: Path, summary: dict, regimes: list[dict]) -> str:
    """Write `metrics.json`, the figures and `report.md`; return the text printed at the end of the demo."""
    k = summary["k"]
    metrics = {
        **summary,
        "regimes": {
            r["regime"].name: {
                "regime": asdict(r["regime"]),
                "student_accuracy": r["student_accuracy"],
                "prediction": r["prediction"].as_dict(),
                "runs": [asdict(run) | {"final_accuracy": run.final_accuracy} for run in r["runs"]],
                "kl_per_position": r["kl_per_position"],
            }
            for r in regimes
        },
    }
    (output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _plot_accuracy(output_dir / FIGURES["accuracy_vs_step"], regimes, "step", "optimizer step", summary)
    time_label = "training wall time (s)"
    _plot_accuracy(output_dir / FIGURES["accuracy_vs_time"], regimes, "train_seconds", time_label, summary)
    _plot_kl(output_dir / FIGURES["kl_per_position"], regimes, k, summary["kl_sampling"])
    sections = []
    for regime in regimes:
        section = (
            f"## {regime['regime'].title}\n\n{_regime_intro(regime, summary)}\n\n{regime_table(regime['runs'])}\n\n"
            f"KL(student || teacher) per response position, averaged before and after k ({summary['kl_sampling']}):"
            f"\n\n{kl_split(regime['kl_per_position'], k)}\n\n**Reading.** {reading(regime, k)}"
        )
        if regime["regime"].shortcut_fraction:
            met, lines = bar_check(regime["runs"])
            section += "\n\n**The demo's bar** (issue 16): " + " ".join(lines)
        sections.append(section)
    body = "\n\n".join(sections)
    notice = f"> {summary['notice']}\n\n" if summary["notice"] else ""
    (output_dir / "report.md").write_text(_markdown(summary, body, notice))
    return notice + body


def _regime_intro(regime: dict, summary: dict) -> str:
    r, p = regime["regime"], regime["prediction"]
    decay = ", ".join(f"{k}: {a:.0%}" for k, a in zip(p.decay_k_grid, p.decay_accuracy, strict=True))
    student = f"{r.student_sft_steps} SFT steps" + (
        f", {r.shortcut_fraction:.0%} of its examples in the shortcut format" if r.shortcut_fraction else ""
    )
    return (
        f"Student: {summary['student']}, {student}; greedy accuracy before distillation "
        f"{regime['student_accuracy']:.1%}. Distillation learning rate {r.learning_rate:g}.\n\n"
        f"Before training, `suggest-k`'s diagnostics recommended k = {p.recommended_k}; "
        f"{p.kl_share_within_k:.0%} of the KL lies in the first {summary['k']} tokens; teacher accuracy after a "
        f"student prefix of n tokens ({decay}). Prediction: {p.reading}"
    )


def kernel_line(summary: dict) -> str:
    """Which CPU kernels computed the numbers: with the pinned ones they repeat on other x86-64 CPUs (docs/demo.md).
    Empty on a GPU run, where the CPU computed none of them."""
    if summary["device"] != "cpu":
        return ""
    cpu_kernels = summary["cpu_kernels"]
    where = (
        f"CPU: {cpu_kernels['cpu']}; torch kernels {cpu_kernels['torch_cpu_capability']}, "
        f"MKL_CBWR={cpu_kernels['mkl_cbwr'] or 'unset'}"
    )
    if cpu_kernels["pinned"]:
        return f"{where} (the pinned kernels: accuracies and token counts should repeat on other x86-64 CPUs)."
    return f"{where} (not the pinned AVX2 kernels: accuracies and token counts differ from other machines')."


def _markdown(summary: dict, body: str, notice: str) -> str:
    figures = "\n".join(f"![{name}]({file})" for name, file in FIGURES.items())
    return f"""# ESR vs full-rollout on-policy distillation, in two regimes

{notice}Task: {summary["task"]}. Device: {summary["device"]}, {summary["threads"]} torch thread(s) for distillation
({summary["pretrain_threads"]} for pre-training). {kernel_line(summary)}

- Teacher: {summary["teacher"]}, greedy accuracy {summary["teacher_accuracy"]:.1%}.
- Distillation: {summary["distillation"]}. Each regime runs full rollout, ESR and ESR + guard from the same student,
  seed, prompts and steps.
- Accuracy: greedy exact match of the final answer on {summary["test_size"]} held-out problems, full-length
  generation. Wall time: training only (evaluation excluded, the guard's measurements included). Tokens generated:
  the trainer's `esr/tokens_generated` logs plus the guard's measurement rollouts. "Final accuracy" of a guarded run
  is that of the checkpoint the guard kept.

{body}

{figures}

Total demo time: {summary["total_seconds"]:.0f} s, of which {summary["pretrain_seconds"]:.0f} s pre-training (or
loading the cached models).
"""


def _full_of(runs: list[RunResult], seed: int) -> RunResult:
    return next(r for r in runs if r.k is None and r.seed == seed)


def _figure(ncols: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(5.0 * ncols, 3.6), dpi=100)
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def _plot_accuracy(path: Path, regimes: list[dict], x_key: str, x_label: str, summary: dict) -> None:
    fig, axes = _figure(len(regimes))
    for ax, regime in zip(axes, regimes, strict=True):
        methods = list(dict.fromkeys(r.method for r in regime["runs"]))
        for run in regime["runs"]:
            color = f"C{methods.index(run.method)}"
            style = "-" if run.seed == regime["runs"][0].seed else "--"
            xs, ys = [p[x_key] for p in run.curve], [p["accuracy"] for p in run.curve]
            if run.guard:  # trains exactly like ESR (measurements use a forked RNG): drawn under it, kept step starred
                ax.plot(xs, ys, style, color=color, lw=4, alpha=0.35, label=f"{run.method}, seed {run.seed}")
                kept = next((p for p in run.curve if p["step"] == run.kept_step), None)
                if kept is not None:
                    ax.plot(kept[x_key], kept["accuracy"], "*", color=color, ms=12, mec="black", mew=0.6)
            else:
                ax.plot(xs, ys, style, color=color, marker="o", ms=3, label=f"{run.method}, seed {run.seed}")
        ax.axhline(summary["teacher_accuracy"], color="gray", ls=":", lw=1, label="teacher")
        ax.set(xlabel=x_label, ylabel="held-out accuracy (greedy)", ylim=(0, 1.02))
        ax.set_title(f"{regime['regime'].title} (star: the checkpoint the guard kept)", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _plot_kl(path: Path, regimes: list[dict], k: int, sampling: str) -> None:
    fig, axes = _figure(len(regimes))
    for ax, regime in zip(axes, regimes, strict=True):
        for label, values in regime["kl_per_position"].items():
            ax.plot(range(1, len(values) + 1), values, label=label)
        ax.axvline(k, color="red", ls=":", label=f"k = {k}")
        ax.set(xlabel="response position", ylabel="KL(student || teacher)", yscale="log")
        ax.set_title(f"{regime['regime'].title}\n{sampling}", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
