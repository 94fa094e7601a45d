"""End-to-end training behaviour: what moves, what must not, PEFT, checkpoints and resume."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import all_snapshot, trainable_snapshot
from helpers import record_batches
from peft import LoraConfig
from transformers import AutoModelForCausalLM

from trl_esr import esr_k_at_step
from trl_esr.demo.tiny_models import save_pretrained


def test_self_distillation_has_zero_loss(make_trainer, model_paths, make_args):
    args = make_args(max_steps=2)
    trainer = make_trainer(args, teacher_model=model_paths["student"])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert len(losses) == 2 and max(abs(loss) for loss in losses) < 1e-6


def test_perturbed_teacher_moves_student_and_never_itself(make_trainer, model_paths, tokenizer, make_args, tmp_path):
    teacher = AutoModelForCausalLM.from_pretrained(model_paths["student"])
    with torch.no_grad():
        for param in teacher.parameters():
            param.add_(0.5 * torch.randn_like(param))
    teacher_path = save_pretrained(teacher, tokenizer, tmp_path / "perturbed")
    args = make_args(max_steps=3, learning_rate=1e-2)
    # a saved Qwen2 folder would load as `Qwen2Tokenizer`, which breaks the word-level test tokenizer
    trainer = make_trainer(args, teacher_model=teacher_path, teacher_processing_class=tokenizer)
    student_before, teacher_before = trainable_snapshot(trainer.model), all_snapshot(trainer.teacher_model)
    trainer.train()

    assert trainer.state.log_history[0]["loss"] > 1e-3
    for name, before in student_before.items():
        assert not torch.equal(before, trainer.model.get_parameter(name)), f"{name} did not move"
    for name, before in teacher_before.items():
        assert torch.equal(before, trainer.teacher_model.get_parameter(name)), f"teacher {name} changed"


def test_lora_trains_adapters_only_and_resumes_from_checkpoint(make_trainer, model_paths, make_args, tmp_path):
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    args = make_args(max_steps=2, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "lora"))
    trainer = make_trainer(args, peft_config=lora)
    before = all_snapshot(trainer.model)
    trainer.train()

    changed = {name for name, p in before.items() if not torch.equal(p, trainer.model.get_parameter(name))}
    assert changed and all("lora_" in name for name in changed)
    assert any("lora_A" in name for name in changed) and any("lora_B" in name for name in changed)
    checkpoint = tmp_path / "lora" / "checkpoint-2"
    assert (checkpoint / "adapter_model.safetensors").is_file() and (checkpoint / "trainer_state.json").is_file()
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "trl-esr" in card and "2605.27028" in card  # TRL's card from `_tag_names` and `_paper`
    assert "**k = 8**" in card and model_paths["teacher"] in card  # our ESR section
    assert "| vocabulary |" not in card  # one tokenizer: the teacher read the student's ids

    args = make_args(max_steps=4, save_strategy="steps", save_steps=2, output_dir=str(tmp_path / "lora"))
    resumed = make_trainer(args, peft_config=lora)
    resumed.train(resume_from_checkpoint=True)
    assert resumed.state.global_step == 4
    assert [entry["step"] for entry in resumed.state.log_history if "loss" in entry][-2:] == [3, 4]
    assert (tmp_path / "lora" / "checkpoint-4").is_dir()


def test_linear_schedule_continues_after_resume(make_trainer, make_args, tmp_path):
    schedule = dict(esr_k=14, esr_k_start=2, esr_k_warmup_steps=4, esr_k_schedule="linear", max_completion_length=16)
    output_dir = str(tmp_path / "sched")
    args = make_args(max_steps=3, save_strategy="steps", save_steps=3, output_dir=output_dir, **schedule)
    first = make_trainer(args)
    first.train()
    args = make_args(max_steps=6, save_strategy="no", output_dir=output_dir, **schedule)
    resumed = make_trainer(args)
    resumed.train(resume_from_checkpoint=os.path.join(output_dir, "checkpoint-3"))

    logged = {entry["step"]: entry for t in (first, resumed) for entry in t.state.log_history if "esr/k" in entry}
    assert sorted(logged) == [1, 2, 3, 4, 5, 6]
    for step, entry in logged.items():  # the rollouts of step s are generated at global step s - 1
        k = esr_k_at_step(args, step - 1)
        assert entry["esr/k"] == k and entry["esr/tokens_generated"] == 2 * k, step
    assert [logged[s]["esr/k"] for s in range(1, 7)] == [2, 5, 8, 11, 14, 14]


def test_train_never_starts_over_in_an_output_dir_with_checkpoints(make_trainer, make_args, tmp_path):
    output_dir = str(tmp_path / "run")
    args = make_args(max_steps=2, save_strategy="steps", save_steps=2, output_dir=output_dir)
    make_trainer(args).train()

    args = make_args(max_steps=3, save_strategy="steps", save_steps=2, output_dir=output_dir)
    trainer = make_trainer(args)
    batches = record_batches(trainer)
    with pytest.raises(ValueError, match="already holds checkpoint-2") as error:
        trainer.train()
    assert batches == [] and trainer.state.global_step == 0  # refused before any rollout
    message = str(error.value)
    assert "trainer.train(resume_from_checkpoint=True)" in message and "another `output_dir`" in message
    assert "checkpoint-* folders" in message and "resume_from_checkpoint=False" in message
    assert not hasattr(args, "overwrite_output_dir")  # transformers 5 dropped it: the message must not name it
    assert "overwrite_output_dir" not in message

    trainer.train(resume_from_checkpoint=True)  # the first fix: resume
    assert trainer.state.global_step == 3
    args = make_args(max_steps=1, save_strategy="no", output_dir=output_dir)
    again = make_trainer(args)
    again.train(resume_from_checkpoint=False)  # starting over on purpose
    assert again.state.global_step == 1


def test_rejects_a_plain_trl_config(make_trainer):
    from trl import DistillationConfig

    args = DistillationConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[])
    with pytest.raises(TypeError, match="ESRConfig"):
        make_trainer(args)


def test_model_card_links_hub_datasets_and_names_local_ones(make_trainer, make_args, tmp_path):
    args = make_args(output_dir=str(tmp_path / "card"))
    trainer = make_trainer(args)
    trainer.create_model_card(dataset_name="my-org/prompts")
    card = (tmp_path / "card" / "README.md").read_text()
    assert "on the [my-org/prompts](https://huggingface.co/datasets/my-org/prompts)" in card
    assert "| dataset | `my-org/prompts` |" in card
    local = tmp_path / "prompts.jsonl"
    local.write_text("{}")
    trainer.create_model_card(dataset_name=str(local))
    card = (tmp_path / "card" / "README.md").read_text()
    assert f"| dataset | `{local}` |" in card and "huggingface.co/datasets" not in card


# Layers on top of the core: imported where they are used, never by `from trl_esr import ESRDistillTrainer`.
OPTIONAL_LAYERS = ("trl_esr.diagnostics", "trl_esr.evaluation", "trl_esr.demo", "trl_esr.scripts", "trl_esr.cli")


def test_the_core_import_loads_no_optional_layer():
    """The set of `trl_esr` modules the trainer's import loads, in a fresh interpreter (benchmarks/import_time.py
    times it)."""
    probe = (
        "import json, sys; from trl_esr import ESRDistillTrainer; "
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] == 'trl_esr')))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    loaded = set(json.loads(result.stdout.splitlines()[-1]))
    assert {"trl_esr.trainer", "trl_esr.config", "trl_esr.loss", "trl_esr._trl_compat"} <= loaded
    optional = {m for m in loaded if m.startswith(OPTIONAL_LAYERS)}
    assert optional == set(), f"the core import loaded optional layers: {sorted(optional)}"
