"""ESR training through TRL's colocated vLLM engine (`use_vllm=True, vllm_mode="colocate"`), on a real engine."""

import pytest
import torch
from engine_checks import greedy
from helpers import record_batches
from vllm import SamplingParams

from trl_esr import ESRDistillTrainer
from trl_esr._trl_compat import LOSS_MASK_KEY


MAX_COMPLETION_LENGTH = 16


def lengths(batch) -> list[int]:
    return batch["completion_mask"].sum(dim=1).tolist()


@pytest.mark.parametrize("k", [3, 7])
def test_training_rollouts_have_exactly_k_tokens(k, make_vllm_args, make_vllm_trainer, engine_calls):
    trainer = make_vllm_trainer(make_vllm_args(esr_k=k))
    calls, batches = engine_calls(trainer), record_batches(trainer)
    trainer.train()

    assert calls == [k, k]  # one engine call per step, capped at k
    assert [lengths(batch) for batch in batches] == [[k] * 4] * 2  # EOS is never sampled: every rollout reaches k
    assert all(batch["completion_ids"].size(1) == k for batch in batches)
    logs = [entry for entry in trainer.state.log_history if "esr/k" in entry]
    assert [(entry["esr/k"], entry["esr/tokens_generated"], entry["esr/capped_fraction"]) for entry in logs] == [
        (k, 4 * k, 1.0)
    ] * 2


def test_linear_schedule_sets_k_on_every_engine_call(make_vllm_args, make_vllm_trainer, engine_calls):
    args = make_vllm_args(esr_k=8, esr_k_schedule="linear", esr_k_start=2, esr_k_warmup_steps=3, max_steps=5)
    trainer = make_vllm_trainer(args)
    calls, batches = engine_calls(trainer), record_batches(trainer)
    trainer.train()

    expected = [2 + round(6 * min(step, 3) / 3) for step in range(5)]  # k(s) = start + (k - start) * min(s, W) / W
    assert expected == [2, 4, 6, 8, 8]
    assert calls == expected
    assert [lengths(batch) for batch in batches] == [[k] * 4 for k in expected]


def test_evaluation_rollouts_are_not_capped(make_vllm_args, make_vllm_trainer, engine_calls, train_dataset):
    args = make_vllm_args(esr_k=4, per_device_eval_batch_size=4, max_steps=1)
    trainer = make_vllm_trainer(args, eval_dataset=train_dataset.select(range(4)))
    calls, batches = engine_calls(trainer), record_batches(trainer)
    trainer.train()
    trainer.evaluate()

    assert calls == [4, MAX_COMPLETION_LENGTH]
    assert [(batch["training"], lengths(batch)) for batch in batches] == [
        (True, [4] * 4),
        (False, [MAX_COMPLETION_LENGTH] * 4),
    ]
    assert trainer.vllm_generation.max_completion_length == MAX_COMPLETION_LENGTH  # the cap did not leak


def test_mask_mode_generates_full_length_and_trains_the_first_k(make_vllm_args, make_vllm_trainer, engine_calls):
    trainer = make_vllm_trainer(make_vllm_args(esr_k=5, esr_mode="mask", max_steps=1))
    calls, batches = engine_calls(trainer), record_batches(trainer)
    trainer.train()

    (batch,) = batches
    assert calls == [MAX_COMPLETION_LENGTH]
    assert lengths(batch) == [MAX_COMPLETION_LENGTH] * 4
    trained = batch["completion_mask"] * batch[LOSS_MASK_KEY]
    assert trained.tolist() == [[1] * 5 + [0] * (MAX_COMPLETION_LENGTH - 5)] * 4
    (log,) = [entry for entry in trainer.state.log_history if "esr/k" in entry]
    assert (log["esr/tokens_generated"], log["esr/tokens_trained"]) == (4 * MAX_COMPLETION_LENGTH, 4 * 5)


def test_padded_student_never_samples_ids_the_teacher_lacks(
    make_vllm_args, make_vllm_trainer, tokenizer, no_eos, prompt_ids
):
    trainer = make_vllm_trainer(make_vllm_args(esr_k=MAX_COMPLETION_LENGTH, max_steps=2), student="padded_student")
    assert trainer._pairing.mode == "padded" and trainer._pairing.vocab_size == len(tokenizer)
    assert trainer.vllm_generation.generation_kwargs["allowed_token_ids"] == no_eos["allowed_token_ids"]
    batches = record_batches(trainer)
    trainer.train()  # an id >= len(tokenizer) would also fail the teacher's embedding lookup
    sampled = torch.cat([batch["completion_ids"][batch["completion_mask"].bool()] for batch in batches])
    assert sampled.numel() == 2 * 4 * MAX_COMPLETION_LENGTH and sampled.max() < len(tokenizer)

    # The control: the same engine, same weights, without the restriction, samples the extra ids often.
    prompts = [{"prompt_token_ids": ids} for ids in prompt_ids]
    unrestricted = SamplingParams(temperature=1.0, max_tokens=MAX_COMPLETION_LENGTH, seed=0)
    outputs = trainer.vllm_generation.llm.generate(prompts, sampling_params=unrestricted, use_tqdm=False)
    extra = sum(token >= len(tokenizer) for output in outputs for token in output.outputs[0].token_ids)
    assert extra > 20


def test_loss_and_metrics_equal_the_hf_path_for_the_same_rollouts(
    make_vllm_args, make_vllm_trainer, make_args, vllm_model_paths, tokenizer, train_dataset
):
    """One step through vLLM, then the same step through HF generate's path replaying vLLM's rollouts: same batch,
    same loss, same `esr/*` metrics, same updated weights."""
    # SGD: Adam's first step divides by |grad|, so it would turn thread-count rounding in near-zero grads into O(lr).
    vllm_trainer = make_vllm_trainer(make_vllm_args(esr_k=6, max_steps=1, learning_rate=1e-2, optim="sgd"))
    vllm_batches = record_batches(vllm_trainer)
    vllm_trainer.train()

    hf_args = make_args(
        esr_k=6,
        max_steps=1,
        learning_rate=1e-2,
        optim="sgd",
        per_device_train_batch_size=4,
        max_completion_length=MAX_COMPLETION_LENGTH,
        esr_diagnostics_steps=0,
    )
    hf_trainer = ESRDistillTrainer(
        model=vllm_model_paths["student"],
        teacher_model=vllm_model_paths["teacher"],
        args=hf_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )
    assert not hf_trainer.use_vllm
    (vllm_batch,) = vllm_batches
    rollouts = {
        tuple(prompt[mask.bool()].tolist()): completion[completion_mask.bool()].tolist()
        for prompt, mask, completion, completion_mask in zip(
            vllm_batch["prompt_ids"],
            vllm_batch["prompt_mask"],
            vllm_batch["completion_ids"],
            vllm_batch["completion_mask"],
            strict=True,
        )
    }
    hf_trainer._generate_single_turn = lambda prompt_ids, *args, **kwargs: [rollouts[tuple(p)] for p in prompt_ids]
    hf_batches = record_batches(hf_trainer)
    hf_trainer.train()

    (hf_batch,) = hf_batches
    for key in ("prompt_ids", "completion_ids", "completion_mask"):
        assert torch.equal(hf_batch[key], vllm_batch[key]), key
    vllm_log, hf_log = vllm_trainer.state.log_history[0], hf_trainer.state.log_history[0]
    esr_keys = sorted(key for key in vllm_log if key.startswith("esr/"))
    assert esr_keys == [
        "esr/capped_fraction",
        "esr/k",
        "esr/nonfinite_steps",
        "esr/tokens_generated",
        "esr/tokens_trained",
    ]
    assert {key: hf_log[key] for key in esr_keys} == {key: vllm_log[key] for key in esr_keys}
    assert vllm_log["esr/tokens_generated"] == sum(len(completion) for completion in rollouts.values()) == 4 * 6
    assert hf_log["loss"] == pytest.approx(vllm_log["loss"], rel=1e-5) and vllm_log["loss"] > 0
    hf_params = dict(hf_trainer.model.named_parameters())
    for name, param in vllm_trainer.model.named_parameters():
        torch.testing.assert_close(param, hf_params[name], msg=name)


def test_engine_computes_with_the_synced_weights(make_vllm_args, make_vllm_trainer, tokenizer, prompt_ids):
    """After training steps, TRL's weight sync leaves the engine computing exactly what the trained student does."""
    trainer = make_vllm_trainer(make_vllm_args(esr_k=8, max_steps=4, learning_rate=5e-2))
    prompts = prompt_ids[:4]
    trainer.vllm_generation.sync_weights()
    before = greedy(trainer, prompts, tokenizer.eos_token_id)
    trainer.train()
    trainer.vllm_generation.sync_weights()  # TRL's own sync, as before every rollout step
    after = greedy(trainer, prompts, tokenizer.eos_token_id)

    # vLLM runs a float32 checkpoint in bfloat16 (its "auto" dtype, which TRL's colocated engine uses): logprobs
    # agree to bfloat16 precision, and every greedy engine token is the HF model's best after the same prefix to that
    # precision. (Not "the same tokens as HF `generate`": at a near tie, 0.0065 nats apart once, either may win.)
    assert trainer.vllm_generation.llm.llm_engine.model_config.dtype == torch.bfloat16
    for _, _, engine_logprobs, hf_logprobs, hf_best in before + after:
        assert (hf_best - hf_logprobs).max() <= 2e-2
        torch.testing.assert_close(engine_logprobs, hf_logprobs, atol=2e-2, rtol=0)
    # Training changed the student's greedy text, so an engine left with stale weights would fail the checks above.
    assert [result[1] for result in before] != [result[1] for result in after]
