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


# `DivergenceLoss` on hand-made tensors: each reduction and head restriction against the reverse KL written out.


def hand_reverse_kl(inputs, student_rows=slice(None), teacher_rows=slice(None), temperature=1.0):
    """KL(p_s || p_t) = sum_v p_s(v) (log p_s(v) - log p_t(v)) at each position, in float64, both distributions over
    the given rows of their heads: (B, K)."""
    student_logits = (
        inputs["student_hidden_states"].double() @ inputs["student_lm_head_weight"][student_rows].T.double()
    )
    teacher_logits = (
        inputs["teacher_hidden_states"].double() @ inputs["teacher_lm_head_weight"][teacher_rows].T.double()
    )
    log_p_s = torch.log_softmax(student_logits / temperature, dim=-1)  # (B, K, V)
    log_p_t = torch.log_softmax(teacher_logits / temperature, dim=-1)
    return (log_p_s.exp() * (log_p_s - log_p_t)).sum(-1)


def random_inputs(student_rows=7, teacher_rows=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return dict(
        student_hidden_states=torch.randn(3, 5, 4, generator=g),  # (B, K, H_s)
        teacher_hidden_states=torch.randn(3, 5, 6, generator=g),  # (B, K, H_t)
        student_lm_head_weight=torch.randn(student_rows, 4, generator=g, requires_grad=True),  # (V_s, H_s)
        teacher_lm_head_weight=torch.randn(teacher_rows, 6, generator=g),  # (V_t, H_t)
        completion_mask=torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]),  # 5, 2 and 0 tokens
        beta=1.0,  # reverse KL
    )


def token_mean(d, mask, divisor):
    return ((d * mask).sum() / divisor).item()


def sequence_mean(d, mask, divisor):
    trained = mask.sum(dim=1) > 0  # a rollout without a trained token counts for nothing
    return (((d * mask).sum(dim=1)[trained] / mask.sum(dim=1)[trained]).sum() / divisor).item()


@pytest.mark.parametrize("num_items_in_batch", [None, 4])
def test_divergence_loss_reductions_by_hand(num_items_in_batch):
    from trl_esr.loss import DivergenceLoss

    inputs = random_inputs()
    d, mask = hand_reverse_kl(inputs, temperature=2.0), inputs["completion_mask"]
    # TRL's `temperature` (the sampling one) is ignored; `loss_temperature` applies to both models
    token = DivergenceLoss("token", loss_temperature=2.0)(
        **inputs, num_items_in_batch=num_items_in_batch, temperature=5.0
    )
    sequence = DivergenceLoss("sequence", loss_temperature=2.0)(
        **inputs, num_items_in_batch=num_items_in_batch, temperature=5.0
    )
    # `None` (evaluation): this micro-batch's 7 trained tokens, or its 2 rollouts with a trained token
    assert token[0].item() == pytest.approx(token_mean(d, mask, num_items_in_batch or 7), rel=1e-5)
    assert sequence[0].item() == pytest.approx(sequence_mean(d, mask, num_items_in_batch or 2), rel=1e-5)
    assert int(token[2]) == int(sequence[2]) == 7  # trained positions
    assert sequence[1].item() == pytest.approx(token[1].item(), rel=1e-5)  # the same entropy sum, by groups


@pytest.mark.parametrize(("normalization", "reduce"), [("token", token_mean), ("sequence", sequence_mean)])
def test_divergence_loss_on_the_rows_both_heads_share(normalization, reduce):
    from trl_esr.cross_tokenizer import SharedVocabulary
    from trl_esr.loss import DivergenceLoss

    # A padded student head (7 rows, 5 used by tokens): both distributions over the first 5 rows only
    inputs = random_inputs(student_rows=7, teacher_rows=5)
    mask = inputs["completion_mask"]
    loss, _, _ = DivergenceLoss(normalization, 1.0, vocab_size=5)(**inputs, num_items_in_batch=3)
    assert loss.item() == pytest.approx(reduce(hand_reverse_kl(inputs, slice(5)), mask, 3), rel=1e-5)

    # Another tokenizer: the student's rows 0, 2, 3, 6 are the teacher's rows 4, 1, 0, 2 (in that order)
    student_ids, teacher_ids = torch.tensor([0, 2, 3, 6]), torch.tensor([4, 1, 0, 2])
    shared = SharedVocabulary(student_ids=student_ids, teacher_ids=teacher_ids, fraction=4 / 7)
    loss, _, _ = DivergenceLoss(normalization, 1.0, shared=shared)(**inputs, num_items_in_batch=3)
    assert loss.item() == pytest.approx(reduce(hand_reverse_kl(inputs, student_ids, teacher_ids), mask, 3), rel=1e-5)
    loss.backward()  # only the shared rows of the student's head receive a gradient
    row_grads = inputs["student_lm_head_weight"].grad.abs().sum(dim=1)
    assert (row_grads[student_ids] > 0).all() and (row_grads[[1, 4, 5]] == 0).all()
