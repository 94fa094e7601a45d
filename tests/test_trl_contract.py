"""Contract tests for every TRL private name that `trl_esr/_trl_compat.py` relies on.

If one of these fails after a TRL upgrade, the shim (not the trainer) is what needs updating.
"""

import inspect
from types import SimpleNamespace

import pytest
import torch
from trl import DistillationConfig, DistillationTrainer
from trl.generation.vllm_generation import VLLMGeneration

from trl_esr import _trl_compat
from trl_esr.loss import make_divergence_loss


@pytest.fixture
def trl_trainer(model_paths, tokenizer, train_dataset, make_args):
    args = make_args(config_class=DistillationConfig, max_completion_length=24)
    return DistillationTrainer(
        model=model_paths["student"],
        teacher_model=model_paths["teacher"],
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
    )


def batch_with_loss_mask():
    return {
        "prompt_ids": torch.tensor([[6, 7, 8], [9, 10, 11]]),
        "prompt_mask": torch.ones(2, 3, dtype=torch.long),
        "completion_ids": torch.tensor([[12, 13, 14, 15], [16, 17, 18, 19]]),
        "completion_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
        _trl_compat.LOSS_MASK_KEY: torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]]),
    }


def test_overridden_methods_keep_their_signatures():
    assert list(inspect.signature(DistillationTrainer._generate_and_score_completions).parameters) == [
        "self",
        "inputs",
    ]
    assert list(inspect.signature(DistillationTrainer._compute_loss).parameters) == [
        "self",
        "unwrapped_student",
        "inputs",
        "num_items_in_batch",
    ]


def test_our_divergence_is_a_drop_in_for_trls():
    trl_params = inspect.signature(_trl_compat.chunked_divergence_loss).parameters
    for normalization in ("token", "sequence"):
        ours = inspect.signature(make_divergence_loss(normalization, 1.0)).parameters
        assert list(ours) == list(trl_params)
        assert [p.default for p in ours.values()] == [p.default for p in trl_params.values()]


def test_compute_loss_calls_the_replaceable_divergence_with_the_loss_mask(trl_trainer):
    received = {}

    def fake_divergence(*args, **kwargs):
        received["mask"], received["temperature"] = args[4], kwargs["temperature"]
        return _trl_compat.chunked_divergence_loss(*args, **kwargs)

    trl_trainer.model.eval()
    with _trl_compat.replace_divergence_loss(fake_divergence):
        trl_trainer.compute_loss(trl_trainer.model, batch_with_loss_mask())
    assert received["mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 0]]  # completion_mask * tool_mask
    assert received["temperature"] == trl_trainer.args.temperature  # TRL ties the loss to sampling temperature

    received.clear()
    trl_trainer.compute_loss(trl_trainer.model, batch_with_loss_mask())
    assert received == {}  # restored on exit


def test_rollout_length_attributes_and_their_restoration(trl_trainer):
    assert trl_trainer.generation_config.max_new_tokens == 24
    assert trl_trainer.generation_kwargs["max_new_tokens"] == 24
    assert trl_trainer.max_completion_length == 24
    trl_trainer.use_vllm = True  # stand-in engine: the attribute TRL's vLLM path reads on each call
    trl_trainer.vllm_generation = SimpleNamespace(max_completion_length=24)
    with _trl_compat.cap_rollout_length(trl_trainer, 5):
        assert trl_trainer.generation_config.max_new_tokens == 5
        assert trl_trainer.generation_kwargs["max_new_tokens"] == 5
        assert trl_trainer.max_completion_length == 5
        assert trl_trainer.vllm_generation.max_completion_length == 5
    assert trl_trainer.generation_config.max_new_tokens == 24
    assert trl_trainer.generation_kwargs["max_new_tokens"] == 24
    assert trl_trainer.max_completion_length == 24
    assert trl_trainer.vllm_generation.max_completion_length == 24


def test_vllm_reads_max_completion_length_on_every_call():
    assert "max_completion_length = self.max_completion_length" in inspect.getsource(VLLMGeneration.generate)
    assert "max_completion_length" in inspect.signature(VLLMGeneration.__init__).parameters


def test_metrics_dict_is_averaged_into_the_logs(trl_trainer):
    trl_trainer.model.train()
    _trl_compat.metrics(trl_trainer, "train")["esr/probe"].extend([1.0, 3.0])
    trl_trainer.log({})
    assert trl_trainer.state.log_history[-1]["esr/probe"] == 2.0


def test_compute_loss_runs_student_then_teacher_through_get_last_hidden_state(trl_trainer):
    params = list(inspect.signature(DistillationTrainer._get_last_hidden_state).parameters)
    assert params[:5] == ["self", "unwrapped_model", "input_ids", "attention_mask", "logits_to_keep"]
    calls, original = [], trl_trainer._get_last_hidden_state

    def recording(unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs):
        calls.append((unwrapped_model, input_ids.shape, logits_to_keep))
        return original(unwrapped_model, input_ids, attention_mask, logits_to_keep, **kwargs)

    trl_trainer._get_last_hidden_state = recording
    trl_trainer.model.eval()
    trl_trainer.compute_loss(trl_trainer.model, batch_with_loss_mask())
    teacher = trl_trainer.accelerator.unwrap_model(trl_trainer.teacher_model)
    assert [call[0] for call in calls] == [trl_trainer.accelerator.unwrap_model(trl_trainer.model), teacher]
    assert calls[0][1:] == calls[1][1:] == (torch.Size([2, 7]), 4)  # same input ids; the completion is last


def test_stop_token_ids_are_what_trl_generates_with(trl_trainer, tokenizer):
    assert _trl_compat.stop_token_ids(trl_trainer) == [tokenizer.eos_token_id]
    assert '"eos_token_id": self.eos_token_ids' in inspect.getsource(DistillationTrainer)  # HF generate's stop list


@pytest.mark.parametrize(
    "attribute, value, expected",
    [("logit_scale", 2.0, 2.0), ("output_multiplier", 3.0, 3.0), ("lm_head_multiplier", 0.5, 0.5),
     ("logits_scaling", 4.0, 0.25), (None, None, 1.0)],
)  # fmt: skip
def test_logit_scale_is_the_one_trl_applies(trl_trainer, attribute, value, expected):
    config = trl_trainer.model.config
    if attribute is not None:
        setattr(config, attribute, value)
    received = {}

    def spy(*args, **kwargs):
        received["scale"] = kwargs["student_logit_scale"]
        return _trl_compat.chunked_divergence_loss(*args, **kwargs)

    trl_trainer.model.eval()
    with _trl_compat.replace_divergence_loss(spy):
        trl_trainer.compute_loss(trl_trainer.model, batch_with_loss_mask())
    assert received["scale"] == expected == _trl_compat.logit_scale(config.get_text_config())
