import dataclasses

import pytest
from trl import DistillationConfig, TrlParser

from trl_esr import ESRConfig


ESR_FIELDS = ["esr_k", "esr_k_schedule", "esr_k_start", "esr_k_warmup_steps", "esr_mode", "loss_temperature",
              "loss_normalization"]  # fmt: skip


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
