"""The loss: normalisers and values checked against a reverse KL computed by hand from the same hidden states."""

import pytest
import torch
from helpers import DivergenceSpy, record_batches, reverse_kl_per_token
from trl import DistillationConfig, DistillationTrainer

from trl_esr import ESRDistillTrainer


def run_one_window(make_trainer, make_args, **overrides):
    """One optimizer step of 2 micro-batches x 2 rollouts, EOS allowed so rollouts differ in length."""
    args = make_args(per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=1, esr_k=10,
                     suppress_eos=False, **overrides)  # fmt: skip
    trainer = make_trainer(args)
    spy = DivergenceSpy(trainer)
    trainer.train()
    assert len(spy.calls) == 2
    lengths = torch.cat([call["completion_mask"].sum(dim=1) for call in spy.calls])
    assert len(set(lengths.tolist())) > 1, "the seed should give rollouts of different lengths"
    return spy.calls, lengths


def test_token_normalization_divides_by_trained_tokens_of_the_window(make_trainer, make_args):
    calls, lengths = run_one_window(make_trainer, make_args, loss_normalization="token")
    window_tokens = lengths.sum().item()
    for call in calls:
        assert call["num_items_in_batch"] == window_tokens  # one process: TRL divides by 1
        per_token = reverse_kl_per_token(call) * call["completion_mask"]
        torch.testing.assert_close(call["loss"], per_token.sum() / window_tokens, rtol=1e-4, atol=1e-6)


def test_sequence_normalization_is_mean_of_per_rollout_means(make_trainer, make_args):
    calls, lengths = run_one_window(make_trainer, make_args, loss_normalization="sequence")
    rollout_means = []
    for call in calls:
        assert call["num_items_in_batch"] == 4  # rollouts in the window
        mask = call["completion_mask"]
        rollout_means += ((reverse_kl_per_token(call) * mask).sum(dim=1) / mask.sum(dim=1)).tolist()
    window_loss = sum(call["loss"] for call in calls)  # what the accumulated gradient step optimises
    assert window_loss.item() == pytest.approx(sum(rollout_means) / 4, rel=1e-4)
    token_mean = sum((reverse_kl_per_token(c) * c["completion_mask"]).sum() for c in calls) / lengths.sum()
    assert window_loss.item() != pytest.approx(token_mean.item(), rel=1e-3)  # the two reductions really differ


def test_mask_mode_trains_only_first_k_tokens(make_trainer, make_args):
    k = 5
    args = make_args(esr_k=k, esr_mode="mask", max_completion_length=16, max_steps=1, per_device_train_batch_size=3)
    trainer = make_trainer(args)
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)
    trainer.train()
    (call,), (batch,) = spy.calls, batches
    assert batch["completion_mask"].sum(dim=1).tolist() == [16, 16, 16]  # generated to the full length
    assert call["completion_mask"].sum(dim=1).tolist() == [k, k, k]  # trained on the first k only
    grad = call["student_hidden_states"].grad  # (B, C, H), position t predicts completion token t
    assert grad[:, k:].abs().max() == 0
    assert (grad[:, :k].abs().amax(dim=(0, 2)) > 0).all()
    log = trainer.state.log_history[0]
    assert (log["esr/tokens_generated"], log["esr/tokens_trained"]) == (48, 3 * k)


def fixed_batch(tokenizer, generator_seed=0):
    """A hand-made training batch (2 prompts of 3 tokens, completions of 6 and 4 tokens)."""
    g = torch.Generator().manual_seed(generator_seed)
    ids = lambda *shape: torch.randint(6, len(tokenizer), shape, generator=g)  # noqa: E731
    return {
        "prompt_ids": ids(2, 3),
        "prompt_mask": torch.ones(2, 3, dtype=torch.long),
        "completion_ids": ids(2, 6),
        "completion_mask": torch.tensor([[1] * 6, [1] * 4 + [0] * 2]),
    }


def test_loss_temperature_and_sampling_temperature_are_independent(make_trainer, tokenizer, make_args):
    def loss_and_samples(temperature, loss_temperature):
        args = make_args(temperature=temperature, loss_temperature=loss_temperature, max_steps=1)
        trainer = make_trainer(args)
        batches = record_batches(trainer)
        trainer.train()  # one step at lr 0: the model is unchanged, we only look at the sampled tokens
        trainer.model.eval()
        with torch.no_grad():
            loss = trainer.compute_loss(trainer.model, fixed_batch(tokenizer))
        return loss.item(), batches[0]["completion_ids"]

    make_args_lr0 = make_args
    make_args = lambda **kw: make_args_lr0(learning_rate=0.0, **kw)  # noqa: E731
    base_loss, base_samples = loss_and_samples(temperature=0.7, loss_temperature=1.0)
    hot_loss, hot_samples = loss_and_samples(temperature=2.0, loss_temperature=1.0)
    soft_loss, soft_samples = loss_and_samples(temperature=0.7, loss_temperature=3.0)

    assert hot_loss == base_loss and not torch.equal(hot_samples, base_samples)  # sampling changed, loss did not
    assert soft_loss != pytest.approx(base_loss, rel=1e-3) and torch.equal(soft_samples, base_samples)


def test_disabled_esr_reproduces_trl(make_trainer, make_args):
    """esr_k=None, token reduction and one temperature for both: the same losses as plain DistillationTrainer."""
    shared = dict(max_steps=3, gradient_accumulation_steps=2, suppress_eos=False, temperature=0.9, top_p=0.95)
    esr_args = make_args(esr_k=None, loss_normalization="token", loss_temperature=0.9, **shared)
    trl_args = make_args(config_class=DistillationConfig, **shared)
    losses = []
    for args, trainer_class in ((esr_args, ESRDistillTrainer), (trl_args, DistillationTrainer)):
        trainer = make_trainer(args, trainer_class=trainer_class)
        trainer.train()
        losses.append([entry["loss"] for entry in trainer.state.log_history if "loss" in entry])
    assert len(losses[0]) == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)
