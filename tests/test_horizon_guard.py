"""`ESRHorizonGuard`: the rule on rising / flat / noisy KL, stop with the best checkpoint, grow k, resume, config."""

import json
import os

import pytest
import torch
from helpers import callbacks_of
from safetensors.torch import load_file

from trl_esr import ESRConfig
from trl_esr.diagnostics import callback as diagnostics_callback
from trl_esr.horizon_guard import STATE_KEY, ESRHorizonGuard, HorizonGuardState, grown_k


def run_rule(values, tolerance=0.2, patience=2, k=8):
    """Feed `values` (one per step, from step 1) to a fresh state; return the steps where the guard acts."""
    state, acted = HorizonGuardState(), []
    for step, value in enumerate(values, start=1):
        if state.observe(step, k, value, tolerance, patience)[1]:
            acted.append(step)
    return acted, state


def test_rising_kl_acts_after_patience_rises_in_a_row():
    acted, state = run_rule([1.0, 1.1, 1.25, 1.3, 1.4])  # threshold 1.2: rises at steps 3 and 4
    assert acted == [4]
    assert state.baseline == 1.0 and state.best == 1.0 and state.best_step == 1


def test_flat_and_falling_kl_never_act():
    assert run_rule([1.0] * 10)[0] == []
    assert run_rule([1.0, 0.9, 0.8, 0.7], tolerance=0.0, patience=1)[0] == []
    acted, state = run_rule([1.0, 1.19, 1.2, 1.19])  # up to the threshold, not above it
    assert acted == [] and state.rises == 0


def test_noisy_kl_needs_consecutive_rises():
    noisy = [1.0, 1.5, 0.9, 1.6, 1.0, 1.4, 0.95]  # isolated spikes above 1.2
    assert run_rule(noisy, patience=2)[0] == []
    assert run_rule(noisy, patience=1)[0] == [2, 4, 6]
    acted, state = run_rule(noisy + [1.3, 1.3], patience=2)  # then a sustained rise
    assert acted == [9]
    assert state.best == 0.9 and state.best_step == 3


def test_a_non_finite_measurement_is_neither_a_best_nor_a_baseline():
    assert HorizonGuardState().observe(1, 8, float("nan"), 0.2, 1) == (False, False)  # not saved as the best
    acted, state = run_rule([float("nan"), 1.0, 1.1, float("inf"), 1.25, 1.3])  # threshold 1.2 from step 2's 1.0
    assert acted == [6]
    assert (state.baseline, state.best, state.best_step) == (1.0, 1.0, 2)


def test_tolerance_is_relative_to_the_first_measurement():
    assert run_rule([10.0, 11.0, 11.0], tolerance=0.05, patience=2)[0] == [3]
    assert run_rule([10.0, 11.0, 11.0], tolerance=0.2, patience=2)[0] == []
    assert run_rule([0.1, 0.13, 0.13], tolerance=0.2, patience=2)[0] == [3]  # same relative rise, other scale


def test_a_new_horizon_starts_a_new_baseline():
    state = HorizonGuardState()
    assert state.observe(1, 8, 1.0, 0.2, 1) == (True, False)
    assert state.observe(2, 8, 2.0, 0.2, 1) == (False, True)
    assert state.observe(3, 16, 3.0, 0.2, 1) == (True, False)  # k grew: 3.0 is the new baseline, not a rise
    assert (state.baseline, state.baseline_k, state.best_step) == (3.0, 16, 3)
    assert state.observe(4, 16, 3.5, 0.2, 1) == (False, False)
    assert state.observe(5, 16, 3.7, 0.2, 1) == (False, True)


def test_state_round_trips_through_json():
    _, state = run_rule([1.0, 0.9, 1.3], patience=3)
    state.k_scale = 4.0
    restored = HorizonGuardState(**json.loads(json.dumps(state.__dict__)))
    assert restored == state
    assert restored.observe(4, 8, 1.3, 0.2, 3) == (False, False) and restored.rises == 2


def test_grown_k():
    assert grown_k(8, 1.0, 24) == 8
    assert grown_k(8, 2.0, 24) == 16
    assert grown_k(8, 4.0, 24) == 24  # capped at max_completion_length
    assert grown_k(1, 1.2, 24) == 2  # at least one more token once grown
    assert grown_k(None, 2.0, 24) is None


BASE = dict(output_dir="out", use_cpu=True, bf16=False, max_completion_length=24, esr_k=8, esr_diagnostics_steps=5)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (dict(esr_horizon_guard="shrink"), "`esr_horizon_guard` must be None, 'stop' or 'grow'"),
        (dict(esr_horizon_guard="stop", esr_k=None), "`esr_k` is None"),
        (dict(esr_horizon_guard="grow", esr_diagnostics_steps=0), "`esr_diagnostics_steps` is 0"),
        (dict(esr_horizon_guard="stop", esr_k=24), "equals `max_completion_length`"),
        (dict(esr_horizon_guard_tolerance=-0.1), "`esr_horizon_guard_tolerance` must be a number >= 0"),
        (dict(esr_horizon_guard_patience=0), "`esr_horizon_guard_patience` must be a positive int"),
        (dict(esr_horizon_guard_growth=1.0), "`esr_horizon_guard_growth` must be a number > 1"),
    ],
)
def test_config_rejects_impossible_settings(overrides, match):
    with pytest.raises(ValueError, match=match):
        ESRConfig(**{**BASE, **overrides})


def test_config_defaults_off_and_accepts_none_string():
    assert ESRConfig(**BASE).esr_horizon_guard is None
    assert ESRConfig(**BASE, esr_horizon_guard="None").esr_horizon_guard is None


@pytest.fixture
def scripted_kl(monkeypatch):
    """Replace the measured `esr/kl_beyond_k` by scripted values (the real rollouts are still sampled and scored);
    like the real one, it returns None once k reaches the full length. Records the k of every measurement."""
    script = {"values": [], "ks": []}

    def fake(stats, k):
        script["ks"].append(k)
        if k >= stats.mask.size(1):
            return 0.5, None
        return 0.5, script["values"].pop(0)

    monkeypatch.setattr(diagnostics_callback, "kl_within_and_beyond", fake)
    return script


def per_step(trainer, key: str) -> dict[int, float]:
    return {entry["step"]: entry[key] for entry in trainer.state.log_history if key in entry}


def guard_args(make_args, **overrides):
    return make_args(esr_diagnostics_steps=1, esr_diagnostics_num_rollouts=2, **overrides)


def test_stop_saves_the_best_checkpoint_and_stops(make_trainer, make_args, scripted_kl):
    scripted_kl["values"] = [1.0, 0.8, 1.3, 1.5, 1.0, 1.0, 1.0, 1.0]  # best at step 2; > 1.2 at steps 3 and 4
    args = guard_args(make_args, max_steps=8, esr_horizon_guard="stop", esr_horizon_guard_patience=2)
    trainer = make_trainer(args)
    assert callbacks_of(trainer, ESRHorizonGuard) == [trainer._horizon_guard]
    trainer.train()

    assert trainer.state.global_step == 4  # stopped at the second rise in a row, not at max_steps
    assert per_step(trainer, "esr/kl_beyond_k") == {1: 1.0, 2: 0.8, 3: 1.3, 4: 1.5}
    best = os.path.join(args.output_dir, "checkpoint-2")
    assert trainer.state.best_model_checkpoint == best
    checkpoints = sorted(name for name in os.listdir(args.output_dir) if name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]  # each new best, nothing after
    with open(os.path.join(best, "trainer_state.json")) as f:
        saved_state = json.load(f)
    assert saved_state["global_step"] == 2
    assert saved_state["best_model_checkpoint"] == best  # its own state names it (what a resume from it reads)
    saved = load_file(os.path.join(best, "model.safetensors"))
    final = dict(trainer.model.named_parameters())
    moved = [name for name, tensor in saved.items() if name in final and not torch.equal(tensor, final[name])]
    assert moved  # the checkpoint holds step 2's weights, not the last step's
    assert trainer._horizon_guard.state.stopped_at == 4


def test_resuming_from_the_best_checkpoint_keeps_it_through_rotation(make_trainer, make_args, scripted_kl):
    """The resumed run reads `best_model_checkpoint` from the best checkpoint's own trainer_state.json; rotation
    (`save_total_limit=2`) protects only that one and the latest, so a stale value there deletes the best."""
    stop = dict(esr_horizon_guard="stop", save_strategy="steps", save_steps=1, save_total_limit=2)
    scripted_kl["values"] = [1.0, 0.8]  # the best at step 2, the last step of this run
    first = make_trainer(guard_args(make_args, max_steps=2, **stop))
    first.train()
    best = os.path.join(first.args.output_dir, "checkpoint-2")

    scripted_kl["values"] = [1.1, 1.3, 1.5]  # no new best; > 1.2 at steps 4 and 5: stops at 5
    resumed = make_trainer(guard_args(make_args, max_steps=8, **stop))
    resumed.train(resume_from_checkpoint=best)
    assert resumed.state.global_step == 5
    checkpoints = sorted(name for name in os.listdir(first.args.output_dir) if name.startswith("checkpoint-"))
    assert checkpoints == ["checkpoint-2", "checkpoint-5"]  # the best and the latest
    assert resumed.state.best_model_checkpoint == best
    with open(os.path.join(first.args.output_dir, "checkpoint-5", "trainer_state.json")) as f:
        assert json.load(f)["best_model_checkpoint"] == best


def test_grow_multiplies_k_up_to_max_completion_length(make_trainer, make_args, scripted_kl):
    # patience 1, tolerance 0.5: 2.0 > 1.5 grows k after step 2; at k=8, 1.0 is the new baseline, 3.0 grows it again
    scripted_kl["values"] = [1.0, 2.0, 1.0, 3.0, 1.0, 3.0]
    args = guard_args(
        make_args, max_steps=7, esr_k=4, esr_horizon_guard="grow", esr_horizon_guard_tolerance=0.5,
        esr_horizon_guard_patience=1, esr_horizon_guard_growth=2.0,
    )  # fmt: skip
    trainer = make_trainer(args)
    trainer.train()

    expected_k = {1: 4, 2: 4, 3: 8, 4: 8, 5: 16, 6: 16, 7: 24}  # 16 * 2 = 32, capped at max_completion_length
    assert per_step(trainer, "esr/k") == expected_k
    # EOS is suppressed, so every training rollout runs exactly to the k in force
    assert per_step(trainer, "completions/max_length") == expected_k
    assert per_step(trainer, "completions/min_length") == expected_k
    generated = per_step(trainer, "esr/tokens_generated")
    assert {step: generated[step] / k for step, k in expected_k.items()} == {
        step: generated[1] / 4 for step in expected_k
    }
    assert scripted_kl["ks"] == [4, 4, 8, 8, 16, 16, 24]  # the diagnostics split at the k of the next step
    assert sorted(per_step(trainer, "esr/kl_beyond_k")) == [1, 2, 3, 4, 5, 6]  # at k=24 nothing lies beyond k
    assert trainer.state.global_step == 7


def test_resume_keeps_the_guard_state(make_trainer, make_args, scripted_kl):
    grow = dict(
        esr_k=4, esr_horizon_guard="grow", esr_horizon_guard_tolerance=0.5, esr_horizon_guard_patience=1,
        save_strategy="steps", save_steps=3,
    )  # fmt: skip
    scripted_kl["values"] = [1.0, 2.0, 1.0]  # k grows to 8 after step 2; step 3 sets the baseline at k=8
    first = make_trainer(guard_args(make_args, max_steps=3, **grow))
    first.train()
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-3")
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        saved = json.load(f)["stateful_callbacks"][STATE_KEY]
    assert saved["k_scale"] == 2.0 and saved["baseline"] == 1.0 and saved["baseline_k"] == 8

    # A fresh trainer resumed from step 3: k must still be 8 (not 4), and 3.0 must rise over the restored baseline 1.0
    scripted_kl["values"] = [3.0, 1.0]
    resumed = make_trainer(guard_args(make_args, max_steps=5, **grow))
    resumed.train(resume_from_checkpoint=checkpoint)
    k = per_step(resumed, "esr/k")
    assert (k[4], k[5]) == (8, 16)
    assert resumed._horizon_guard.state.k_scale == 4.0


def test_guard_refused_where_the_diagnostics_cannot_run(make_trainer, train_dataset, make_args):
    args = guard_args(make_args, esr_horizon_guard="stop")
    with pytest.raises(ValueError, match="`esr_horizon_guard` watches the ESR diagnostics.*stream"):
        make_trainer(args, train_dataset=train_dataset.to_iterable_dataset())


def test_guard_off_by_default_leaves_k_to_the_schedule(make_trainer, make_args):
    trainer = make_trainer(make_args(esr_diagnostics_steps=1))
    assert trainer._horizon_guard is None
    assert callbacks_of(trainer, ESRHorizonGuard) == []
