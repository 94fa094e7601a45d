import dataclasses

import pytest
from helpers import esr_fields
from trl import DistillationConfig, TrlParser

from trl_esr import ESRConfig


ESR_FIELDS = esr_fields()  # every field ESRConfig adds to DistillationConfig


def make(**kwargs) -> ESRConfig:
    return ESRConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[], **kwargs)


def test_paper_defaults_and_trl_defaults_kept():
    config, trl_config = make(), DistillationConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    assert (config.esr_k, config.esr_mode, config.esr_k_schedule) == (100, "stop", "constant")
    assert (config.temperature, config.top_p, config.loss_temperature) == (0.7, 0.95, 1.0)
    assert (config.beta, config.loss_normalization) == (1.0, "sequence")
    differing = {
        f.name
        for f in dataclasses.fields(DistillationConfig)
        if f.init and getattr(config, f.name) != getattr(trl_config, f.name)
    }
    assert differing == {"temperature", "top_p"}  # the README lists exactly these


def test_every_esr_field_documents_itself():
    fields = {f.name: f for f in dataclasses.fields(ESRConfig)}
    for name in ESR_FIELDS:
        assert len(fields[name].metadata["help"]) > 30, name
        assert f"{name} (`" in ESRConfig.__doc__, name


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"esr_k": 0}, "esr_k"),
        ({"esr_k": -3}, "esr_k"),
        ({"esr_k": 2.5}, "esr_k"),
        ({"esr_k": True}, "esr_k"),
        ({"esr_k": 600, "max_completion_length": 512}, "esr_k"),
        ({"esr_k_schedule": "cosine"}, "esr_k_schedule"),
        ({"esr_mode": "truncate"}, "esr_mode"),
        ({"loss_normalization": "batch"}, "loss_normalization"),
        ({"esr_k_schedule": "linear", "esr_k": 32, "esr_k_start": 64, "esr_k_warmup_steps": 10}, "esr_k_start"),
        ({"esr_k_schedule": "linear", "esr_k": None, "esr_k_warmup_steps": 10}, "esr_k_schedule"),
        ({"esr_k_start": 0}, "esr_k_start"),
        ({"esr_k_warmup_steps": -1}, "esr_k_warmup_steps"),
        ({"loss_temperature": 0.0}, "loss_temperature"),
    ],
)
def test_invalid_values_raise_naming_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"`{field}`"):
        make(**kwargs)


def test_short_constant_k_does_not_trip_over_the_linear_start():
    # `esr_k_start` only matters for the linear schedule; k=8 with the default start of 16 is valid.
    assert make(esr_k=8).esr_k == 8


def test_command_line_and_yaml(tmp_path):
    yaml_file = tmp_path / "esr.yaml"
    yaml_file.write_text("esr_k: 64\nesr_mode: mask\nloss_normalization: token\nuse_cpu: true\nbf16: false\n")
    parser = TrlParser((ESRConfig,))
    (config,) = parser.parse_args_and_config(["--config", str(yaml_file), "--output_dir", str(tmp_path)])
    assert (config.esr_k, config.esr_mode, config.loss_normalization) == (64, "mask", "token")

    (config,) = parser.parse_args_and_config(["--output_dir", str(tmp_path), "--use_cpu", "--bf16", "false",
                                              "--esr_k", "None"])  # fmt: skip
    assert config.esr_k is None


# Issue 13: TRL's and transformers' numeric fields at 0, negative, huge and None fail when the config is built, with
# one `ValueError` naming the field (they used to fail at the first generation, at the optimizer's creation, at the
# first evaluation, with a `TypeError` about `NoneType`, or silently). The sweep is in docs/reliability.md.
HUGE = 10**12
BAD_NUMBERS = [
    *[(name, value, {}) for name in ("per_device_train_batch_size", "per_device_eval_batch_size",
                                     "gradient_accumulation_steps") for value in (0, -1, None, 2.5)],
    *[("max_completion_length", value, {"esr_k": None}) for value in (0, -1, None)],
    ("eval_accumulation_steps", 0, {}),
    ("eval_accumulation_steps", -1, {}),
    ("max_steps", 0, {}),
    ("max_steps", None, {}),
    *[("num_train_epochs", value, {"max_steps": -1}) for value in (0, -1, None)],
    ("learning_rate", -1, {}),
    ("learning_rate", None, {}),
    ("weight_decay", -1, {}),
    ("weight_decay", None, {}),
    *[(name, value, {}) for name in ("adam_beta1", "adam_beta2") for value in (-1, 1, HUGE, None)],
    *[("adam_epsilon", value, {}) for value in (0, -1, None)],
    ("warmup_steps", -1, {}),
    ("warmup_steps", None, {}),
    *[("logging_steps", value, {}) for value in (0, -1, None)],
    *[("save_steps", value, {"save_strategy": "steps"}) for value in (0, -1, None)],
    ("eval_steps", -1, {"eval_strategy": "steps"}),
    *[("seed", value, {}) for value in (-1, 2**32, None)],
    ("data_seed", -1, {}),
    ("dataloader_num_workers", -1, {}),
    ("dataloader_num_workers", None, {}),
    *[("temperature", value, {}) for value in (0, -1, None)],
    *[("top_p", value, {}) for value in (0, -1, HUGE, None)],
    ("top_k", -1, {}),
    ("top_k", 2.5, {}),
    *[("min_p", value, {}) for value in (-1, HUGE)],
    *[("repetition_penalty", value, {}) for value in (0, -1, None)],
    *[("beta", value, {}) for value in (-1, HUGE, None)],
    ("pad_to_multiple_of", 0, {}),
    ("pad_to_multiple_of", -1, {}),
    *[("vllm_gpu_memory_utilization", value, {"use_vllm": True}) for value in (0, -1, HUGE)],
    ("vllm_tensor_parallel_size", 0, {"use_vllm": True}),
    ("vllm_max_model_length", 0, {"use_vllm": True}),
    ("torch_empty_cache_steps", 0, {}),  # transformers' own check, already clear
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value", "context"), BAD_NUMBERS, ids=lambda x: repr(x) if not isinstance(x, dict) else ""
)
def test_bad_numbers_fail_when_the_config_is_built(name, value, context):
    with pytest.raises(ValueError, match=f"`{name}`") as error:
        make(**{**context, name: value})
    assert "NoneType" not in str(error.value)


@pytest.mark.parametrize(
    ("name", "value", "context"),
    [
        ("temperature", HUGE, {}),  # valid: near-uniform sampling
        ("top_k", HUGE, {}),
        ("max_steps", HUGE, {}),  # a long run, not a mistake
        ("max_steps", -1, {"num_train_epochs": 2}),
        ("num_train_epochs", HUGE, {}),
        ("learning_rate", 0.0, {}),  # used to check a loss without moving the weights
        ("max_grad_norm", 0, {}),  # transformers: no clipping
        ("max_grad_norm", None, {}),
        ("eval_steps", None, {"eval_strategy": "steps"}),  # transformers: `logging_steps`
        ("save_steps", 0, {"save_strategy": "no"}),  # read only with `save_strategy="steps"` (the default)
        ("save_total_limit", 0, {}),  # transformers: no limit
        ("min_p", None, {}),
        ("warmup_steps", 0.1, {}),  # a fraction of the steps
        ("vllm_gpu_memory_utilization", 0, {}),  # ignored without vLLM
    ],
)
def test_numbers_that_stay_accepted(name, value, context):
    make(**{**context, name: value})


def test_top_k_none_means_off_for_both_generation_backends():
    assert make(top_k=None).top_k == 0


def test_a_huge_learning_rate_warns(caplog):
    with caplog.at_level("WARNING", logger="trl_esr.validation"):
        make(learning_rate=1e15)
    assert "`learning_rate` is 1e+15, far above" in caplog.text


def test_grpo_fields_are_not_distillation_fields():
    """`num_generations`, `max_prompt_length`, `generation_batch_size`, `steps_per_generation` and `lmbda` are GRPO/GKD
    fields that TRL 1.16's `DistillationConfig` does not have: Python and the command line refuse them by name."""
    for name in ("num_generations", "max_prompt_length", "generation_batch_size", "steps_per_generation", "lmbda"):
        with pytest.raises(TypeError, match=name):
            make(**{name: 4})
        with pytest.raises(ValueError, match=rf"not used by the HfArgumentParser: \[.--{name}."):
            TrlParser((ESRConfig,)).parse_args_and_config(
                ["--output_dir", "x", "--use_cpu", "--bf16", "false", f"--{name}", "4"]
            )
