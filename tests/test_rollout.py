"""ESR's rollout horizon: training rollouts stop at k, evaluation does not, and the esr/* metrics count them."""

import pytest
import torch
from helpers import record_batches

from trl_esr._trl_compat import metrics


@pytest.mark.parametrize("k", [1, 5, 16])
def test_training_rollouts_stop_at_k(k, make_trainer, make_args):
    args = make_args(esr_k=k, max_completion_length=24, gradient_accumulation_steps=2)
    trainer = make_trainer(args)
    batches = record_batches(trainer)
    trainer.train()

    assert len(batches) == 2  # one generation per optimizer step (2 steps, generation batch = 2 x 2 prompts)
    for batch in batches:
        lengths = batch["completion_mask"].sum(dim=1)
        assert lengths.tolist() == [k] * 4  # EOS is suppressed, so every rollout reaches the cap
        assert batch["completion_ids"].size(1) == k
    logs = [entry for entry in trainer.state.log_history if "esr/k" in entry]
    assert [entry["esr/k"] for entry in logs] == [k, k]
    assert [entry["esr/tokens_generated"] for entry in logs] == [4 * k, 4 * k]
    assert [entry["esr/capped_fraction"] for entry in logs] == [1.0, 1.0]


def test_full_rollout_reaches_max_completion_length(make_trainer, make_args):
    args = make_args(esr_k=None, max_completion_length=24)
    trainer = make_trainer(args)
    batches = record_batches(trainer)
    trainer.train()
    assert all(batch["completion_mask"].sum(dim=1).tolist() == [24, 24] for batch in batches)
    assert trainer.state.log_history[0]["esr/k"] == 24


def test_evaluation_is_not_capped_and_cap_is_restored(make_trainer, train_dataset, make_args):
    args = make_args(esr_k=4, max_completion_length=20, per_device_eval_batch_size=2)
    trainer = make_trainer(args, eval_dataset=train_dataset.select(range(4)))
    batches = record_batches(trainer)
    trainer.train()
    trainer.evaluate()
    train_lengths = {n for b in batches if b["training"] for n in b["completion_mask"].sum(dim=1).tolist()}
    eval_lengths = {n for b in batches if not b["training"] for n in b["completion_mask"].sum(dim=1).tolist()}
    assert train_lengths == {4} and eval_lengths == {20}
    assert trainer.generation_config.max_new_tokens == 20  # the training cap did not leak


def test_capped_fraction_counts_rollouts_that_did_not_end(make_trainer, tokenizer, make_args):
    # EOS allowed and made likelier (+1 to its logit: 2-5 of 8 rollouts end by token 6 on each of 8 seeds tried, where
    # the bare random model ends 0-2, and 0 with torch 2.6's sampler); capped = the ones still running at k.
    eos_bias = {"sequence_bias": [[[tokenizer.eos_token_id], 1.0]]}
    args = make_args(esr_k=6, suppress_eos=False, per_device_train_batch_size=8, max_steps=1,
                     generation_kwargs=eos_bias)  # fmt: skip
    trainer = make_trainer(args)
    batches = record_batches(trainer)
    trainer.train()
    (batch,) = batches
    ended = [tokenizer.eos_token_id in ids[mask.bool()].tolist() for ids, mask in
             zip(batch["completion_ids"], batch["completion_mask"], strict=True)]  # fmt: skip
    assert 0 < sum(ended) < 8, "the seed should give a mix of ended and running rollouts"
    assert trainer.state.log_history[0]["esr/capped_fraction"] == pytest.approx(1 - sum(ended) / 8)
    assert trainer.state.log_history[0]["esr/tokens_generated"] == batch["completion_mask"].sum().item()


def test_capped_fraction_ignores_the_eos_that_ends_a_tool_calling_turn(make_trainer, tokenizer, make_args):
    """With tools, an EOS closes each assistant turn before a tool result and the rollout goes on: only a rollout
    whose last token is a stop token, within k, ended. (It used to count any EOS within k, so a rollout cut at k
    after a tool call passed for ended.)"""
    trainer = make_trainer(make_args(esr_k=6, max_completion_length=8))
    eos, pad, a, t = tokenizer.eos_token_id, tokenizer.pad_token_id, 5, 6  # t: a tool-result token
    rows = [
        ([a, eos, t, t, a, a, pad, pad], 6),  # tool turn, then cut at k = 6: capped
        ([a, a, eos, pad, pad, pad, pad, pad], 3),  # ended at its first EOS
        ([a, eos, t, a, eos, pad, pad, pad], 5),  # tool turn, then its final answer ended: ended
        ([a, a, a, a, a, a, a, eos], 8),  # "mask" mode generates past k: an EOS after k is not within k
    ]
    completion_ids = torch.tensor([ids for ids, _ in rows])
    completion_mask = torch.tensor([[1] * n + [0] * (8 - n) for _, n in rows])
    batch = {"completion_ids": completion_ids, "completion_mask": completion_mask}
    trainer._count_trained(batch, 6, loss_mask=completion_mask)
    assert metrics(trainer, "train")["esr/capped_fraction"] == [2 / 4]
