"""`ESRHorizonGuard`: act when the KL beyond the rollout horizon k rises in training (`ESRConfig.esr_horizon_guard`).

ESR trains only on each rollout's first k tokens. When the student's mistakes come later, or when it over-generalises
the few transitions it is trained on, the reverse KL to the teacher *beyond* k rises while the KL inside k falls, and
the training loss (inside k) cannot show it. `ESRDiagnosticsCallback` measures `esr/kl_beyond_k` on a fixed prompt set;
this guard watches that measurement and, once it has risen, either stops training (keeping a checkpoint of the step
where it was lowest) or grows k.

The rule (`HorizonGuardState.observe`, a pure function of the measurements, unit-tested without a trainer):

- The *baseline* is the first measurement at the current horizon. A measurement *rises* when
  `kl_beyond_k > baseline * (1 + tolerance)`. The rise is relative because the KL's scale depends on the pair and the
  task (issue 16's prototype measured values near 0.4 on one toy task and above 3 on another), so one absolute
  threshold cannot fit both.
- The guard acts after `patience` rising measurements *in a row*; a measurement that does not rise resets the count.
  One measurement averages a few rollouts, so a single high value can be noise; a collapse keeps rising.
- The baseline (and the best value) are reset whenever the horizon k of a measurement differs from the baseline's (the
  guard grew k, or a linear `esr_k_schedule` moved it): `kl_beyond_k` at another k averages other positions, so
  comparing across horizons would compare unlike quantities.

The defaults (`tolerance=0.2`, `patience=2`, `growth=2.0`) are starting points, not values tuned on measured curves.

Actions:

- `"stop"`: every measurement that is the lowest so far (at the current horizon) saves a checkpoint
  (`checkpoint-<step>` in `output_dir`, whatever `save_strategy` says), which becomes
  `trainer.state.best_model_checkpoint` (unless `metric_for_best_model` is set: that metric owns the field) before it
  is written, so its own `trainer_state.json` names it and checkpoint rotation (`save_total_limit`) keeps it, on
  resume too. When the rule fires, training stops (`control.should_training_stop`); the weights in memory are the last
  step's, the best ones are in that checkpoint.
  This is what `EarlyStoppingCallback` with `load_best_model_at_end` gives, except that the best model is not loaded
  back.
- `"grow"`: k is multiplied by `growth` (at least +1 token), capped at `max_completion_length`; from the next step on
  the trainer generates and trains with the new k (logged as `esr/k`). Growth compounds and applies on top of the k
  schedule. Once k reaches `max_completion_length` nothing lies beyond it, so `esr/kl_beyond_k` is no longer measured
  and the guard has nothing left to do.

The state (baseline, consecutive rises, best step, growth) is stored in `TrainerState.stateful_callbacks` under
`"esr_horizon_guard"`, so it is written into every checkpoint's `trainer_state.json` and restored on resume.
"""

import logging
import math
import os
from dataclasses import asdict, dataclass

from transformers import TrainerCallback


logger = logging.getLogger(__name__)

STATE_KEY = "esr_horizon_guard"  # in `TrainerState.stateful_callbacks` (not a class name: see `ESRHorizonGuard`)


@dataclass
class HorizonGuardState:
    """What the guard has seen. `observe` updates it from one measurement; it holds plain numbers, so it round-trips
    through `trainer_state.json` (`asdict` / `HorizonGuardState(**d)`)."""

    baseline: float | None = None  # first `kl_beyond_k` at `baseline_k`
    baseline_k: int | None = None
    rises: int = 0  # consecutive measurements above `baseline * (1 + tolerance)`
    best: float | None = None  # lowest `kl_beyond_k` at `baseline_k`, and the step it was measured at
    best_step: int | None = None
    k_scale: float = 1.0  # product of the growths applied so far ("grow")
    stopped_at: int | None = None  # the step the guard stopped training at ("stop")

    def observe(self, step: int, k: int, kl_beyond_k: float, tolerance: float, patience: int) -> tuple[bool, bool]:
        """Take in one measurement of `kl_beyond_k` at horizon `k`; return `(is_new_best, should_act)`.

        A non-finite measurement (NaN or inf: the weights or the teacher's scores are broken, which
        `NonFiniteUpdateGuard` handles) is ignored: as a best, its broken weights would be saved as the checkpoint
        to keep; as a baseline, every later rise would compare with NaN and never count."""
        if not math.isfinite(kl_beyond_k):
            return False, False
        if self.baseline_k != k:  # first measurement, or a new horizon: start over
            self.baseline, self.baseline_k, self.rises, self.best, self.best_step = kl_beyond_k, k, 0, None, None
        is_new_best = self.best is None or kl_beyond_k < self.best
        if is_new_best:
            self.best, self.best_step = kl_beyond_k, step
        self.rises = self.rises + 1 if kl_beyond_k > self.baseline * (1 + tolerance) else 0
        should_act = self.rises >= patience
        if should_act:
            self.rises = 0  # after growing k the next measurement is a new baseline anyway
        return is_new_best, should_act


def grown_k(k: int | None, k_scale: float, max_completion_length: int) -> int | None:
    """The horizon `k` of the schedule after the guard's growth `k_scale`: `round(k * k_scale)`, at least `k + 1` once
    grown (a growth that rounds away would never end), at most `max_completion_length`."""
    if k is None or k_scale == 1.0:
        return k
    return min(max_completion_length, max(k + 1, round(k * k_scale)))


class ESRHorizonGuard(TrainerCallback):
    """Watch `esr/kl_beyond_k` from `diagnostics` and stop training or grow k when it rises (see the module docstring).

    Added by `ESRDistillTrainer` when `ESRConfig.esr_horizon_guard` is set, right after `diagnostics`, so it reads
    each measurement at the step it is taken. Every process measures the same values (see `ESRDiagnosticsCallback`),
    so every process takes the same decision without communicating.

    Args:
        trainer: the [`ESRDistillTrainer`]; its `args` give the action, tolerance, patience, growth and
            `max_completion_length`.
        diagnostics: the trainer's [`ESRDiagnosticsCallback`], whose `latest` measurement the guard reads.
    """

    def __init__(self, trainer, diagnostics):
        self.trainer, self.diagnostics = trainer, diagnostics
        self.state = HorizonGuardState()

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(STATE_KEY)  # present when resuming from a checkpoint of a guarded run
        self.state = HorizonGuardState(**saved) if saved else HorizonGuardState()
        self._record(state)

    def on_step_end(self, args, state, control, **kwargs):
        latest = self.diagnostics.latest
        if latest is None or latest.step != state.global_step or latest.kl_beyond_k is None:
            return control  # no measurement at this step, or nothing was measured beyond k
        config = self.trainer.args
        is_new_best, should_act = self.state.observe(
            state.global_step, latest.k, latest.kl_beyond_k, config.esr_horizon_guard_tolerance,
            config.esr_horizon_guard_patience,
        )  # fmt: skip
        if config.esr_horizon_guard == "stop":
            if is_new_best:
                control.should_save = True
                if args.metric_for_best_model is None:  # otherwise that metric owns the field
                    # Before the save: `_save_checkpoint` writes it into this checkpoint's trainer_state.json, and
                    # its rotation (`save_total_limit`) keeps it; `on_save` comes after both.
                    state.best_model_checkpoint = self._checkpoint(args, state.global_step)
            elif should_act:
                self.state.stopped_at = state.global_step
                control.should_training_stop = True
                logger.warning(
                    f"ESR horizon guard: `esr/kl_beyond_k` rose above {self.state.baseline:.4g} * (1 + "
                    f"{config.esr_horizon_guard_tolerance}) for {config.esr_horizon_guard_patience} measurement(s) "
                    f"in a row (now {latest.kl_beyond_k:.4g}); training stops at step {state.global_step}. The lowest "
                    f"value, {self.state.best:.4g}, was at step {self.state.best_step}: "
                    f"{self._checkpoint(args, self.state.best_step)}."
                )
        elif should_act:
            old_k = latest.k
            self.state.k_scale *= config.esr_horizon_guard_growth
            new_k = self.trainer._k_at_step(state.global_step)
            logger.warning(
                f"ESR horizon guard: `esr/kl_beyond_k` rose from {self.state.baseline:.4g} to "
                f"{latest.kl_beyond_k:.4g} at k={old_k}; k grows to {new_k} from step {state.global_step + 1} on."
            )
        self._record(state)
        return control

    def k(self, k: int | None) -> int | None:
        """The horizon the trainer uses when the schedule says `k`."""
        return grown_k(k, self.state.k_scale, self.trainer.args.max_completion_length)

    def _record(self, state) -> None:
        state.stateful_callbacks[STATE_KEY] = asdict(self.state)  # written with every checkpoint's trainer state

    @staticmethod
    def _checkpoint(args, step: int) -> str:
        return os.path.join(args.output_dir, f"checkpoint-{step}")


def validate_guard_fields(args) -> None:
    """The `esr_horizon_guard*` checks of `ESRConfig.__post_init__` (after `esr_k` and the diagnostics are checked)."""
    if isinstance(args.esr_horizon_guard, str) and args.esr_horizon_guard.lower() in ("none", "null"):
        args.esr_horizon_guard = None  # YAML `null` / command-line "None"
    if args.esr_horizon_guard not in (None, "stop", "grow"):
        raise ValueError(f"`esr_horizon_guard` must be None, 'stop' or 'grow'; got {args.esr_horizon_guard!r}.")
    tolerance = args.esr_horizon_guard_tolerance
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 <= tolerance < math.inf:
        raise ValueError(
            "`esr_horizon_guard_tolerance` must be a number >= 0 (a relative rise: 0.2 = 20 % above the first "
            f"measurement); got {tolerance!r}."
        )
    patience = args.esr_horizon_guard_patience
    if isinstance(patience, bool) or not isinstance(patience, int) or patience <= 0:
        raise ValueError(f"`esr_horizon_guard_patience` must be a positive int; got {patience!r}.")
    growth = args.esr_horizon_guard_growth
    if isinstance(growth, bool) or not isinstance(growth, (int, float)) or not 1 < growth < math.inf:
        raise ValueError(f"`esr_horizon_guard_growth` must be a number > 1 (2 doubles k); got {growth!r}.")
    if args.esr_horizon_guard is None:
        return
    if args.esr_k is None:
        raise ValueError(
            f"`esr_horizon_guard` is {args.esr_horizon_guard!r}, but `esr_k` is None (full rollouts): there is no "
            "KL beyond k to watch. Set `esr_k`, or `esr_horizon_guard=None`."
        )
    if args.esr_diagnostics_steps == 0:
        raise ValueError(
            f"`esr_horizon_guard` is {args.esr_horizon_guard!r}, but `esr_diagnostics_steps` is 0, so "
            "`esr/kl_beyond_k` is never measured. Set `esr_diagnostics_steps` (e.g. 200; each measurement costs "
            "about one full-rollout step), or `esr_horizon_guard=None`."
        )
    if args.max_completion_length is None:
        raise ValueError("`esr_horizon_guard` needs `max_completion_length` (the cap of k and of the measurement).")
    if args.esr_k_schedule == "constant" and args.esr_k >= args.max_completion_length:
        raise ValueError(
            f"`esr_horizon_guard` is {args.esr_horizon_guard!r}, but `esr_k` ({args.esr_k}) equals "
            "`max_completion_length`: no response position lies beyond k, so there is nothing to watch. Lower "
            "`esr_k`, or set `esr_horizon_guard=None`."
        )
