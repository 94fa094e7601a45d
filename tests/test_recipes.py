"""The recipes in `examples/`: every YAML config parses with the script's parser, the paper recipe holds the paper's
hyperparameters, and the accelerate configs are the launcher's format. Nothing is downloaded or loaded."""

from pathlib import Path

import pytest
import yaml
from accelerate.commands.config.config_args import ClusterConfig

from trl_esr.scripts.esr_distill import make_parser


EXAMPLES = Path(__file__).parent.parent / "examples"
RECIPES = sorted((EXAMPLES / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((EXAMPLES / "accelerate_configs").glob("*.yaml"))
# This machine has no GPU: bf16 and a GPU device are switched off on the command line, which overrides the file.
CPU_OVERRIDES = ["--use_cpu", "--bf16", "False"]


def parse(recipe: Path, *overrides: str):
    return make_parser().parse_args_and_config(args=["--config", str(recipe), *CPU_OVERRIDES, *overrides])


def test_there_are_recipes():
    assert len(RECIPES) >= 4 and EXAMPLES / "configs/paper_qwen25math_1.5b_from_qwen3_1.7b.yaml" in RECIPES


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_parses(recipe, tmp_path):
    """Every key is an option of the script (an unknown key fails), and the configs' own validation passes."""
    script_args, training_args, model_args = parse(recipe, "--output_dir", str(tmp_path))
    raw = yaml.safe_load(recipe.read_text())
    assert training_args.teacher_model_name_or_path == raw["teacher_model_name_or_path"]
    assert model_args.model_name_or_path == raw["model_name_or_path"]
    assert training_args.esr_k == raw["esr_k"]
    assert script_args.dataset_name == raw["dataset_name"]
    assert "Memory (an estimate" in recipe.read_text()  # each recipe says what it needs, and that it is an estimate


def test_paper_recipe_has_the_papers_hyperparameters(tmp_path):
    recipe = EXAMPLES / "configs/paper_qwen25math_1.5b_from_qwen3_1.7b.yaml"
    script_args, args, model_args = parse(recipe, "--output_dir", str(tmp_path))
    assert (model_args.model_name_or_path, args.teacher_model_name_or_path) == (
        "Qwen/Qwen2.5-Math-1.5B",
        "Qwen/Qwen3-1.7B",
    )
    assert model_args.use_peft and (model_args.lora_r, model_args.lora_alpha, model_args.lora_dropout) == (
        32,
        64,
        0.05,
    )
    assert model_args.lora_target_modules == "all-linear"
    assert args.learning_rate == 5e-5 and args.lr_scheduler_type.value == "cosine" and args.warmup_steps == 0.1
    assert args.max_grad_norm == 1.0 and args.optim.value == "adamw_torch"
    assert args.per_device_train_batch_size * args.gradient_accumulation_steps == 16 and args.max_steps == 200
    assert (script_args.dataset_name, script_args.dataset_train_split) == ("AI-MO/NuminaMath-CoT", "train[:3200]")
    assert script_args.prompt_column == "problem" and r"\boxed{}" in script_args.system_prompt
    assert (args.esr_k, args.esr_mode, args.loss_normalization) == (100, "stop", "sequence")
    assert (args.temperature, args.top_p, args.loss_temperature, args.beta) == (0.7, 0.95, 1.0, 1.0)
    assert args.max_completion_length == 3584
    # the Qwen3 teacher in non-thinking mode, on its own template
    assert (args.teacher_chat_template, args.teacher_chat_template_kwargs) == ("teacher", {"enable_thinking": False})


def test_qlora_recipe_quantizes_student_and_teacher(tmp_path):
    script_args, args, model_args = parse(
        EXAMPLES / "configs/qwen3_1.7b_from_qwen3_8b_qlora.yaml", "--output_dir", "x"
    )
    assert model_args.load_in_4bit and model_args.use_peft and script_args.teacher_load_in_4bit
    assert args.chat_template_kwargs == {"enable_thinking": False}


def test_command_line_overrides_a_recipe(tmp_path):
    recipe = EXAMPLES / "configs/paper_qwen25math_1.5b_from_qwen3_1.7b.yaml"
    _, args, _ = parse(recipe, "--output_dir", str(tmp_path), "--esr_k", "50", "--max_steps", "3")
    assert (args.esr_k, args.max_steps) == (50, 3)


def test_unknown_recipe_key_fails(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model_name_or_path: a\nteacher_model_name_or_path: b\nesr_kk: 3\n")
    with pytest.raises(ValueError, match="esr_kk"):
        parse(bad, "--output_dir", str(tmp_path))


@pytest.mark.parametrize("config", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_is_valid(config):
    raw = yaml.safe_load(config.read_text())
    ClusterConfig(**raw)  # accelerate's own schema for `--config_file` (an unknown key raises TypeError)
    expected = {
        "multi_gpu.yaml": "MULTI_GPU",
        "zero2.yaml": "DEEPSPEED",
        "zero3.yaml": "DEEPSPEED",
        "fsdp2.yaml": "FSDP",
    }
    assert raw["distributed_type"] == expected[config.name]
    assert raw["num_machines"] == 1 and raw["num_processes"] > 1 and raw["use_cpu"] is False
    if config.name.startswith("zero"):
        assert raw["deepspeed_config"]["zero_stage"] == int(config.name[4])
    if config.name == "fsdp2.yaml":
        assert raw["fsdp_config"]["fsdp_version"] == 2


def test_the_four_accelerate_configs_exist():
    assert {p.name for p in ACCELERATE_CONFIGS} >= {"multi_gpu.yaml", "zero2.yaml", "zero3.yaml", "fsdp2.yaml"}
