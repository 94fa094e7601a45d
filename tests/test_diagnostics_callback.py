"""`ESRDiagnosticsCallback`: metrics at the chosen interval, absent without it, training unchanged by it, PEFT."""

import pytest
import torch
from conftest import trainable_snapshot
from helpers import callbacks_of
from peft import LoraConfig

from trl_esr.diagnostics import ESRDiagnosticsCallback, PositionStats, kl_within_and_beyond


KEYS = ("esr/kl_within_k", "esr/kl_beyond_k")


def steps_with(trainer, key: str) -> list[int]:
    return [entry["step"] for entry in trainer.state.log_history if key in entry]


def test_metrics_logged_at_the_interval_even_off_the_logging_grid(make_trainer, make_args):
    # logging every 3 steps, diagnostics every 2: the callback must still land at steps 2 and 4.
    trainer = make_trainer(make_args(max_steps=4, logging_steps=3))
    (default,) = callbacks_of(trainer, ESRDiagnosticsCallback)  # the trainer's own, every `esr_diagnostics_steps`
    assert default.every_n_steps == trainer.args.esr_diagnostics_steps == 200
    trainer.add_callback(ESRDiagnosticsCallback(trainer, every_n_steps=2, num_rollouts=3))
    trainer.train()
    for key in KEYS:
        assert steps_with(trainer, key) == [2, 4], key
    assert steps_with(trainer, "loss") == [2, 3, 4]
    for entry in trainer.state.log_history:
        if "esr/kl_within_k" in entry:
            assert entry["esr/kl_within_k"] > 0 and entry["esr/kl_beyond_k"] > 0
    assert trainer.model.training


def test_callback_leaves_training_unchanged(make_trainer, make_args):
    """Sampling under a forked RNG: the same seed trains to the same weights with or without the callback."""
    runs = []
    for attach in (False, True):
        trainer = make_trainer(make_args(max_steps=2))
        if attach:
            trainer.add_callback(ESRDiagnosticsCallback(trainer, every_n_steps=1, num_rollouts=2))
        trainer.train()
        runs.append(trainer)
    without, with_callback = runs
    for key in KEYS:
        assert steps_with(without, key) == [], key
        assert steps_with(with_callback, key) == [1, 2], key
    assert [e["loss"] for e in without.state.log_history if "loss" in e] == [
        e["loss"] for e in with_callback.state.log_history if "loss" in e
    ]
    for name, param in trainable_snapshot(without.model).items():
        assert torch.equal(param, with_callback.model.get_parameter(name)), name


def test_peft_student_and_no_horizon(make_trainer, make_args):
    """A LoRA-wrapped student works, and with `esr_k=None` only `kl_within_k` (over every position) is logged."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(make_args(max_steps=2, esr_k=None), peft_config=lora)
    callback = ESRDiagnosticsCallback(trainer, every_n_steps=2, num_rollouts=2)
    trainer.add_callback(callback)
    trainer.train()
    assert steps_with(trainer, "esr/kl_within_k") == [2]
    assert steps_with(trainer, "esr/kl_beyond_k") == []

    trainer.model.train()
    stats = callback.measure()
    assert trainer.model.training  # restored after sampling in eval mode
    assert stats.mask.size(1) == trainer.args.max_completion_length  # EOS suppressed: full-length rollouts


def test_kl_within_and_beyond_is_token_weighted():
    kl = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 0.0, 0.0]])
    mask = torch.tensor([[True, True, True, True], [True, True, False, False]])
    stats = PositionStats(kl, kl, kl, mask.float(), mask)
    assert kl_within_and_beyond(stats, 2) == pytest.approx((14 / 4, 7 / 2))  # (1+2+5+6)/4, (3+4)/2
    assert kl_within_and_beyond(stats, None) == pytest.approx((21 / 6, None))
    assert kl_within_and_beyond(stats, 4)[1] is None  # no rollout reaches position 4


def test_rejects_bad_interval(make_trainer, make_args):
    trainer = make_trainer(make_args())
    with pytest.raises(ValueError, match="every_n_steps"):
        ESRDiagnosticsCallback(trainer, every_n_steps=0)
