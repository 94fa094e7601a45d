"""The paper's rule of thumb for the rollout horizon k: where the cumulative per-position KL reaches ~45 % of it.

The paper checked this rule on two cases only; treat its answer as a starting point for a sweep, not a guarantee.
"""

from collections.abc import Sequence
from dataclasses import dataclass


# The paper's rule of thumb: k where the cumulative per-position KL reaches about 45 % of its total.
DEFAULT_THRESHOLD = 0.45
# Below this average reverse KL per token (nats) the teacher and student agree too closely for the curve's shape to
# mean anything (a student scored against itself gives ~1e-7 from float rounding).
DEFAULT_TOLERANCE = 1e-4


@dataclass
class KRecommendation:
    """The outcome of [`recommend_k`].

    Attributes:
        k: recommended horizon (a count of response tokens, so the first k tokens are trained), or `None` when no
            recommendation is possible; `reason` then says why.
        threshold: share of the total KL the first k positions must hold.
        total_kl: the total the share is taken of (the sum of the per-position weights, see `recommend_k`).
        mean_kl_per_token: `total_kl` divided by the number of scored tokens; compared with the tolerance.
        cumulative_share: cumulative share of the total KL after each position (empty when `k` is `None`).
        reason: how k was found, or why it was not.
    """

    k: int | None
    threshold: float
    total_kl: float
    mean_kl_per_token: float
    cumulative_share: list[float]
    reason: str


def recommend_k(
    mean_kl_per_position: Sequence[float],
    alive_counts: Sequence[int] | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    tolerance: float = DEFAULT_TOLERANCE,
) -> KRecommendation:
    """The smallest k such that positions 1..k hold at least `threshold` of the total per-position KL.

    Each position t is weighted by the KL *summed* over the rollouts alive at t, `mean_kl[t] * alive[t]`: the share is
    then the share of all the KL a full-rollout run would train on that lies in the first k tokens, and a tail that a
    handful of long rollouts reach weighs what those few rollouts weigh instead of as much as a position every rollout
    reaches. Without `alive_counts`, every position counts as reached by all rollouts (weights = means).

    Args:
        mean_kl_per_position: mean reverse KL at each response position over the rollouts alive there, in nats.
        alive_counts: number of rollouts alive at each position.
        threshold: share of the total KL, in (0, 1]; the paper's rule of thumb is 0.45.
        tolerance: minimum mean KL per token (nats) for a recommendation; below it the curve is noise.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"`threshold` must be in (0, 1], got {threshold}. The paper's rule of thumb is 0.45.")
    alive = [1] * len(mean_kl_per_position) if alive_counts is None else list(alive_counts)
    if len(alive) != len(mean_kl_per_position):
        raise ValueError(
            f"`alive_counts` has {len(alive)} entries but `mean_kl_per_position` has {len(mean_kl_per_position)}; "
            "give one count per position."
        )
    # KL >= 0; float rounding can leave tiny negatives, which would make the cumulative sum non-monotone.
    weights = [max(float(kl), 0.0) * n for kl, n in zip(mean_kl_per_position, alive, strict=True)]
    total, tokens = sum(weights), sum(alive)
    if tokens == 0:
        return KRecommendation(None, threshold, 0.0, 0.0, [], "No scored positions: the KL curve is empty.")
    mean_per_token = total / tokens
    if mean_per_token < tolerance:
        return KRecommendation(
            None, threshold, total, mean_per_token, [],
            f"The mean reverse KL per token ({mean_per_token:.2e} nats) is below the tolerance ({tolerance:.0e}): "
            "teacher and student agree almost everywhere, so the curve has no shape to read k from. Distillation "
            "from this teacher has little to teach.",
        )  # fmt: skip

    cumulative_share, running = [], 0.0
    for weight in weights:
        running += weight
        cumulative_share.append(running / total)
    # A relative epsilon so that a share of exactly `threshold` (e.g. 4.5 / 10) is not missed by float rounding.
    k = next(t + 1 for t, share in enumerate(cumulative_share) if share >= threshold * (1 - 1e-9))
    return KRecommendation(
        k, threshold, total, mean_per_token, cumulative_share,
        f"The first {k} of {len(weights)} positions hold {cumulative_share[k - 1]:.1%} of the total KL "
        f"(threshold {threshold:.0%}).",
    )  # fmt: skip
