"""Write a [`DiagnosticsResult`] out: `diagnostics.json` (every number), PNG plots and a short `diagnostics.md`."""

import json
from dataclasses import asdict
from pathlib import Path

from .run import DiagnosticsResult


# The paper's default horizon (its N = 100): the report says what share of the KL it would cover on your pair.
PAPER_K = 100
# Fewer rollouts than this and the per-position curve is mostly sampling noise (the default is 64).
FEW_ROLLOUTS = 8
# If the KL per token before k and after k are within this factor of each other, the curve is flat: k then only
# follows the threshold times the rollout length. A judgement call, not a number from the paper.
FLAT_RATIO = 1.2


def key_numbers(result: DiagnosticsResult) -> dict:
    """The numbers a reader needs to judge the recommendation: rollout lengths, KL level and how the KL splits at k."""
    summary, rec = result.summary, result.recommendation
    alive, kl = summary.alive, summary.kl_mean
    lengths = [len(completion) for completion in result.completion_ids]
    numbers = {
        "num_rollouts": alive[0] if alive else 0,
        "mean_response_length": sum(lengths) / len(lengths) if lengths else 0.0,
        "max_response_length": len(alive),
        "mean_kl_per_token": rec.mean_kl_per_token,
        "k": rec.k,
    }
    if rec.k is not None:
        # Token-weighted means, as in `recommend_k`: the KL summed over alive rollouts, over the tokens alive.
        # k can be the last position (a threshold near 1, or very short rollouts): nothing lies beyond it then.
        within = sum(m * n for m, n in zip(kl[: rec.k], alive[: rec.k], strict=True)) / sum(alive[: rec.k])
        beyond_tokens = sum(alive[rec.k :])
        beyond_kl = sum(m * n for m, n in zip(kl[rec.k :], alive[rec.k :], strict=True))
        beyond = beyond_kl / beyond_tokens if beyond_tokens else None
        numbers.update(
            kl_share_within_k=rec.cumulative_share[rec.k - 1],
            mean_kl_within_k=within,
            mean_kl_beyond_k=beyond,
            kl_share_within_paper_k=rec.cumulative_share[PAPER_K - 1] if len(alive) >= PAPER_K else None,
        )
    return numbers


def caveats(result: DiagnosticsResult, numbers: dict | None = None) -> list[str]:
    """What a reader must know before trusting the recommendation: too few rollouts, a flat curve, nothing beyond k,
    rollouts shorter than the paper's k."""
    numbers = key_numbers(result) if numbers is None else numbers
    notes = []
    if 0 < numbers["num_rollouts"] < FEW_ROLLOUTS:
        notes.append(
            f"Only {numbers['num_rollouts']} rollout(s) were scored: the per-position curve is mostly sampling noise. "
            f"Use `--num_prompts` {FEW_ROLLOUTS * 4} or more (the default is 64)."
        )
    if numbers["k"] is None:
        return notes
    within, beyond = numbers["mean_kl_within_k"], numbers["mean_kl_beyond_k"]
    if beyond is None:
        notes.append(
            f"k = {numbers['k']} is the last position the rollouts reach: nothing lies beyond it, so ESR would not "
            "stop them. Lower `--threshold` or raise `--max_completion_length`."
        )
    elif beyond > 0 and 1 / FLAT_RATIO < within / beyond < FLAT_RATIO:
        notes.append(
            f"No decay visible: the first k tokens carry {within:.3g} nats of KL per token, the rest {beyond:.3g}. "
            "The curve is flat, so k only follows the threshold times the rollout length and says little about where "
            "the teacher's guidance degrades (untrained or random models look like this). Check with "
            "`--probe_k_grid`, or start from the paper's k = 100."
        )
    if numbers["kl_share_within_paper_k"] is None:
        notes.append(
            f"kl_share_within_paper_k is None: the longest rollout has {numbers['max_response_length']} tokens, fewer "
            f"than the paper's k = {PAPER_K}, which would therefore never stop one."
        )
    return notes


def write_report(
    result: DiagnosticsResult, output_dir: str | Path, extra_settings: dict | None = None
) -> dict[str, str]:
    """Write `diagnostics.json`, the plots and `diagnostics.md` into `output_dir`; return `{name: path}`."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    numbers = key_numbers(result)
    payload = {
        "settings": {**result.settings, **(extra_settings or {})},
        "key_numbers": numbers,
        "caveats": caveats(result, numbers),
        "recommendation": asdict(result.recommendation),
        "per_position": asdict(result.summary),
        "teacher_decay": asdict(result.decay) if result.decay is not None else None,
    }
    paths = {"json": output_dir / "diagnostics.json"}
    paths["json"].write_text(json.dumps(payload, indent=2) + "\n")
    paths.update(_plot(result, output_dir))
    paths["markdown"] = output_dir / "diagnostics.md"
    paths["markdown"].write_text(_markdown(result, numbers, paths))
    return {name: str(path) for name, path in paths.items()}


def _plot(result: DiagnosticsResult, output_dir: Path) -> dict:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    summary, rec = result.summary, result.recommendation
    positions = list(range(1, len(summary.alive) + 1))  # 1-based, like k
    paths = {}

    fig, ax = plt.subplots(figsize=(7, 4))
    by_level = sorted(summary.kl_quantiles, key=lambda name: int(name[1:]))  # "q10", "q50", "q90"
    low, high = by_level[0], by_level[-1]
    ax.fill_between(positions, summary.kl_quantiles[low], summary.kl_quantiles[high], alpha=0.3,
                    label=f"{low[1:]}-{high[1:]} % of rollouts")  # fmt: skip
    ax.plot(positions, summary.kl_mean, label="mean")
    _mark_k(ax, rec.k)
    ax.set(xlabel="response position (tokens)", ylabel="KL(student ‖ teacher), nats", title="Per-position reverse KL")
    ax.set_ylim(bottom=0)
    alive_ax = ax.twinx()  # how many rollouts each position's statistics rest on
    alive_ax.plot(positions, summary.alive, color="gray", linewidth=0.8, linestyle=":")
    alive_ax.set_ylim(0, max(summary.alive, default=1) * 1.05)
    alive_ax.set_ylabel("rollouts alive (dotted)", color="gray")
    ax.legend(loc="upper right")
    paths["kl_plot"] = _save(fig, output_dir / "kl_per_position.png")

    if rec.k is not None:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(positions, rec.cumulative_share, label="cumulative KL share")
        ax.axhline(rec.threshold, color="gray", linestyle="--", label=f"threshold {rec.threshold:.0%}")
        _mark_k(ax, rec.k)
        ax.set(xlabel="response position (tokens)", ylabel="share of total KL", ylim=(0, 1.02),
               title="Cumulative KL share")  # fmt: skip
        ax.legend(loc="lower right")
        paths["share_plot"] = _save(fig, output_dir / "cumulative_kl_share.png")

    if result.decay is not None:
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.plot(result.decay.k_grid, result.decay.accuracy, marker="o")
        ax.set(xlabel="student prefix length k (tokens)", ylabel="teacher accuracy", ylim=(0, 1.02),
               title="Teacher decay: accuracy continuing from a student prefix")  # fmt: skip
        paths["decay_plot"] = _save(fig, output_dir / "teacher_decay.png")
    return paths


def _mark_k(ax, k: int | None) -> None:
    if k is not None:
        ax.axvline(k, color="red", linestyle="--", label=f"k = {k}")


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _markdown(result: DiagnosticsResult, numbers: dict, paths: dict) -> str:
    rec = result.recommendation
    headline = f"**Recommended k = {rec.k}.**" if rec.k is not None else "**No k can be recommended.**"
    lines = ["# ESR diagnostics: choosing k", "", f"{headline} {rec.reason}", "", "| quantity | value |", "|---|---|"]
    lines += [f"| {name} | {_format(value)} |" for name, value in numbers.items()]
    notes = caveats(result, numbers)
    if notes:
        lines += ["", "**Caveats:**", ""] + [f"- {note}" for note in notes]
    if result.decay is not None:
        lines += ["", "Teacher accuracy continuing from a student prefix of k tokens:", ""]
        lines += ["| k | accuracy | prompts |", "|---|---|---|"]
        lines += [
            f"| {k} | {acc:.3f} | {n} |"
            for k, acc, n in zip(result.decay.k_grid, result.decay.accuracy, result.decay.num_prompts, strict=True)
        ]
    lines += [""] + [f"![{name}]({Path(path).name})" for name, path in paths.items() if str(path).endswith(".png")]
    lines += [
        "",
        "The rule (k where the cumulative per-position KL reaches the threshold share of its total) is the paper's "
        "rule of thumb, checked there on two cases only: use k as the centre of a small sweep (docs/choosing-k.md).",
        "",
    ]
    return "\n".join(lines)


def _format(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
