"""`trl-esr train` (trl_esr/scripts/esr_distill.py) end to end on tiny local Llama models, offline, on CPU.

Llama, not Qwen2: `AutoTokenizer` on a saved Qwen2 folder swaps in `Qwen2Tokenizer`, which breaks the word-level test
tokenizer, and the script loads everything by path like a user's Hub ids.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from bitsandbytes.nn import Linear4bit, Linear8bitLt
from datasets import Dataset
from huggingface_hub import ModelCard
from peft import PeftModel
from safetensors.torch import load_file
from script_worker import run_script

from trl_esr.data import load_prompt_dataset, to_prompt_dataset
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.scripts.esr_distill import ESRScriptArguments


HERE = Path(__file__).parent
SYSTEM = "Reason step by step and put the answer in boxed"


@pytest.fixture(scope="module")
def llama_paths(tmp_path_factory, tokenizer):
    root = tmp_path_factory.mktemp("llama")
    student = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32, seed=0)
    # widths are multiples of 32: bitsandbytes' CPU 4-bit kernel packs output features in blocks of 32
    teacher = build_tiny_causal_lm(tokenizer, "llama", hidden_size=64, seed=1)
    return {
        "student": save_pretrained(student, tokenizer, root / "student"),
        "teacher": save_pretrained(teacher, tokenizer, root / "teacher"),
    }


@pytest.fixture(scope="module")
def chat_dataset_dir(tmp_path_factory):
    """A local dataset folder (loads with `--dataset_name`, like a Hub id): `messages` ending with a reference
    answer; every prompt has 4 words, so batches need no padding."""
    folder = tmp_path_factory.mktemp("chat_data")
    with open(folder / "train.jsonl", "w") as f:
        for i in range(16):
            question = " ".join(f"w{j}" for j in range(i, i + 4))
            row = {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "w0 w1"}]}
            f.write(json.dumps(row) + "\n")
    return str(folder)


def script_argv(llama_paths, output_dir, eos_token_id, *extra: str) -> list[str]:
    """CPU-sized options shared by the runs; later options (`extra`) override earlier ones."""
    return [
        "--model_name_or_path", llama_paths["student"], "--teacher_model_name_or_path", llama_paths["teacher"],
        "--output_dir", str(output_dir), "--use_cpu", "--bf16", "False", "--report_to", "none",
        "--save_strategy", "no", "--logging_steps", "1", "--seed", "0",
        "--max_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
        "--max_completion_length", "8", "--esr_k", "4",
        "--use_peft", "--lora_r", "4", "--lora_alpha", "8", "--lora_target_modules", "q_proj", "v_proj",
        # EOS suppressed: every rollout reaches k, so the horizon is observable
        "--generation_kwargs", json.dumps({"suppress_tokens": [eos_token_id]}),
        *extra,
    ]  # fmt: skip


def assert_card(output_dir: Path, teacher: str, k: int, dataset: str) -> None:
    card = ModelCard.load(output_dir / "README.md")
    assert {"trl", "trl-esr", "distillation"} <= set(card.data.tags)
    assert f"| teacher | `{teacher}` |" in card.text
    assert f"**k = {k}** tokens" in card.text
    assert f"| dataset | `{dataset}` |" in card.text  # a local dataset: named, not linked to the Hub
    assert card.data.datasets is None and "huggingface.co/datasets" not in card.text
    assert "huggingface.co/None" not in card.text and 'model="None"' not in card.text  # a local student


def assert_adapter_trained(output_dir: Path, lora_r: int) -> None:
    assert json.loads((output_dir / "adapter_config.json").read_text())["r"] == lora_r
    weights = load_file(output_dir / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and all(w.abs().max() > 0 for w in lora_b)  # PEFT initialises B to zero: training moved it


def test_lora_from_the_command_line(llama_paths, chat_dataset_dir, tokenizer, tmp_path, recwarn):
    out = tmp_path / "run"
    trainer = run_script(script_argv(llama_paths, out, tokenizer.eos_token_id, "--dataset_name", chat_dataset_dir))
    # TRL's default gradient checkpointing: none of transformers 5's deprecation warnings it causes reach the user
    assert trainer.args.gradient_checkpointing
    assert not [w for w in recwarn if "gradient_checkpointing" in str(w.message)], [str(w.message) for w in recwarn]

    assert isinstance(trainer.model, PeftModel) and trainer.state.global_step == 2
    # `messages` became prompts without the reference answer
    assert trainer.train_dataset[0]["prompt"] == [{"role": "user", "content": "w0 w1 w2 w3"}]
    assert_adapter_trained(out, lora_r=4)
    assert_card(out, teacher=llama_paths["teacher"], k=4, dataset=chat_dataset_dir)
    card = (out / "README.md").read_text()
    assert f"fine-tuned version of the local model `{llama_paths['student']}`" in card and f'model="{out}"' in card
    state = json.loads((out / "trainer_state.json").read_text())
    assert [entry["esr/k"] for entry in state["log_history"] if "esr/k" in entry] == [4.0, 4.0]


def test_boxed_scores_logged_during_training(llama_paths, chat_dataset_dir, tokenizer, tmp_path):
    """`--boxed_eval_dataset_name` (a local MATH-style file) adds `BoxedAccuracyCallback`: its scores are in the saved
    log history at every `--boxed_eval_steps`, from full-length responses (`max_completion_length`, not `esr_k`) to
    prompts with the training system prompt."""
    from trl_esr import BoxedAccuracyCallback
    from trl_esr.evaluation import chat_prompts

    problems = ["w1 w2", "w3 w4 w5", "w6"]
    Dataset.from_dict({"problem": problems, "answer": ["1", "2", "3"]}).to_json(tmp_path / "math.jsonl")
    out = tmp_path / "run"
    boxed = ["--boxed_eval_dataset_name", str(tmp_path / "math.jsonl"), "--boxed_eval_steps", "1"]
    argv = script_argv(llama_paths, out, tokenizer.eos_token_id, "--dataset_name", chat_dataset_dir, "--system_prompt",
                       SYSTEM, *boxed)  # fmt: skip
    trainer = run_script(argv)
    [callback] = [c for c in trainer.callback_handler.callbacks if isinstance(c, BoxedAccuracyCallback)]
    assert callback.prompts == chat_prompts(tokenizer, problems, SYSTEM) and callback.sampling[3] == 8
    state = json.loads((out / "trainer_state.json").read_text())
    assert [e["step"] for e in state["log_history"] if "boxed/avg@1" in e] == [1, 2]
    assert [e["boxed/mean_tokens"] for e in state["log_history"] if "boxed/avg@1" in e] == [
        scores["mean_tokens"] for _, scores in callback.history
    ]


def test_yaml_config_with_command_line_override(llama_paths, tokenizer, tmp_path):
    """Local files with a `problem` column, the system prompt and the ESR options from `--config`; `--max_steps` on
    the command line overrides the file."""
    files = []
    for part in range(2):
        rows = [{"problem": f"w{i} w{i + 1} w{i + 2}", "solution": "w9"} for i in range(8 * part, 8 * part + 8)]
        files.append(str(tmp_path / f"part{part}.jsonl"))
        Path(files[-1]).write_text("\n".join(json.dumps(row) for row in rows))
    config = {
        "dataset_files": files, "dataset_train_split": "train[:12]", "prompt_column": "problem",
        "system_prompt": SYSTEM, "esr_k": 3, "esr_mode": "mask", "max_steps": 5,
    }  # fmt: skip
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "run"
    argv = script_argv(llama_paths, out, tokenizer.eos_token_id, "--config", str(tmp_path / "recipe.yaml"))
    # the shared options set `--esr_k 4` and `--max_steps 2` on the command line: drop them so the file decides k
    argv = [a for i, a in enumerate(argv) if a != "--esr_k" and (i == 0 or argv[i - 1] != "--esr_k")]
    trainer = run_script([*argv, "--max_steps", "1"])

    assert trainer.args.max_steps == 1 and trainer.state.global_step == 1  # command line beats the file
    assert (trainer.args.esr_k, trainer.args.esr_mode) == (3, "mask")  # from the file
    assert len(trainer.train_dataset) == 12  # the split slice
    assert trainer.train_dataset[0]["prompt"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "w0 w1 w2"},
    ]
    assert_adapter_trained(out, lora_r=4)
    assert_card(out, teacher=llama_paths["teacher"], k=3, dataset=", ".join(files))


class LocalHubApi:
    """Stands in for `transformers.trainer.hf_api()`: repositories are folders under `root`."""

    def __init__(self, root: Path):
        self.root, self.created, self.uploads = root, [], []

    def whoami(self, token=None):  # the script checks Hub access before training
        return {"name": "me"}

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False):
        self.created.append(repo_id)
        return type("RepoUrl", (), {"repo_id": repo_id})()

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), commit_message=None, **kwargs):
        self.uploads.append(commit_message)
        ignore = shutil.ignore_patterns(*ignore_patterns)
        shutil.copytree(folder_path, self.root / repo_id, ignore=ignore, dirs_exist_ok=True)
        return f"local://{repo_id}"


def test_push_to_hub_uploads_adapter_and_card(llama_paths, chat_dataset_dir, tokenizer, tmp_path, monkeypatch):
    import huggingface_hub
    import transformers.trainer

    hub = LocalHubApi(tmp_path / "hub")
    if hasattr(transformers.trainer, "hf_api"):  # transformers >= 5.11: one client for the Trainer and our check
        monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    else:  # before: the Trainer calls huggingface_hub's functions by name, our check a default `HfApi`
        monkeypatch.setattr(transformers.trainer, "create_repo", hub.create_repo)
        monkeypatch.setattr(transformers.trainer, "upload_folder", hub.upload_folder)
        monkeypatch.setattr(huggingface_hub, "HfApi", lambda *args, **kwargs: hub)
    argv = script_argv(llama_paths, tmp_path / "run", tokenizer.eos_token_id, "--dataset_name", chat_dataset_dir)
    run_script([*argv, "--max_steps", "1", "--push_to_hub", "--hub_model_id", "me/tiny-esr"])

    assert hub.created == ["me/tiny-esr"]
    assert hub.uploads[-1] == "End of training"  # `save_model` also pushes ("Model save"), as in TRL's scripts
    uploaded = tmp_path / "hub" / "me" / "tiny-esr"
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md"} <= {p.name for p in uploaded.iterdir()}
    assert_card(uploaded, teacher=llama_paths["teacher"], k=4, dataset=chat_dataset_dir)
    assert 'model="me/tiny-esr"' in (uploaded / "README.md").read_text()


def test_two_processes_match_one_process_on_the_same_global_batch(llama_paths, chat_dataset_dir, tokenizer, tmp_path):
    """torchrun, 2 gloo ranks x 2 prompts vs 1 process x 4 prompts, one optimizer step.

    Rollouts are sampled with a per-rank seed (TRL's `set_seed(seed, device_specific=True)`), so sampled rollouts
    cannot match across world sizes. Greedy decoding with EOS suppressed makes them a function of the prompt alone
    (prompts of equal length, so no padding either), and LoRA dropout 0 removes the other per-rank randomness. Then the
    rollouts, the normalised loss (mean over the global batch's rollouts) and the synchronised update must match.
    """
    greedy = json.dumps({"do_sample": False, "suppress_tokens": [tokenizer.eos_token_id]})
    common = [
        "--dataset_name",
        chat_dataset_dir,
        "--max_steps",
        "1",
        "--lora_dropout",
        "0",
        "--generation_kwargs",
        greedy,
    ]

    reports = tmp_path / "reports"
    reports.mkdir()
    argv = script_argv(llama_paths, tmp_path / "two", tokenizer.eos_token_id, *common)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "script_worker.py"), str(reports), *argv]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((reports / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["world_size"], r["rank"]) for r in ranks] == [(2, 0), (2, 1)]  # both ranks ran, in one group
    assert ranks[0]["trainable"] == ranks[1]["trainable"]  # gradients were all-reduced

    one = run_script(
        script_argv(
            llama_paths, tmp_path / "one", tokenizer.eos_token_id, *common, "--per_device_train_batch_size", "4"
        )
    )
    assert one.accelerator.num_processes == 1
    two_logs, one_logs = ranks[0]["log_history"][0], one.state.log_history[0]
    assert two_logs["esr/tokens_trained"] == one_logs["esr/tokens_trained"] == 4 * 4  # 4 rollouts x k tokens
    assert two_logs["loss"] > 0
    assert two_logs["loss"] == pytest.approx(one_logs["loss"], rel=1e-4)
    one_trainable = {name: p.detach().flatten() for name, p in one.model.named_parameters() if p.requires_grad}
    for name, values in ranks[0]["trainable"].items():
        torch.testing.assert_close(torch.tensor(values), one_trainable[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("teacher_bits", ["4", "8"])
def test_qlora_student_and_quantized_teacher_on_cpu(llama_paths, chat_dataset_dir, tokenizer, tmp_path, teacher_bits):
    """bitsandbytes 0.50 quantizes on CPU: a 4-bit QLoRA student and a 4- or 8-bit teacher train one step."""
    out = tmp_path / "run"
    argv = script_argv(llama_paths, out, tokenizer.eos_token_id, "--dataset_name", chat_dataset_dir)
    trainer = run_script([*argv, "--max_steps", "1", "--load_in_4bit", f"--teacher_load_in_{teacher_bits}bit"])

    student_layer = trainer.model.base_model.model.model.layers[0].mlp.up_proj
    teacher_layer = trainer.teacher_model.model.layers[0].mlp.up_proj
    assert isinstance(student_layer, Linear4bit)
    assert isinstance(teacher_layer, Linear4bit if teacher_bits == "4" else Linear8bitLt)
    assert type(trainer.teacher_model.lm_head) is torch.nn.Linear  # the head stays full precision for the KL
    assert_adapter_trained(out, lora_r=4)


def test_teacher_quantization_options_are_exclusive():
    with pytest.raises(ValueError, match="exclusive"):
        ESRScriptArguments(teacher_load_in_4bit=True, teacher_load_in_8bit=True)


# The dataset helpers (trl_esr/data.py)


def test_prompts_from_messages_drop_the_final_answer_and_get_the_system_prompt():
    conversation = [
        {"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"},
        {"role": "user", "content": "c"},
        {"role": "assistant", "content": "d"},
    ]
    dataset = Dataset.from_dict({"messages": [conversation], "source": ["x"]})
    plain = to_prompt_dataset(dataset)
    assert plain.column_names == ["source", "prompt"] and plain[0]["prompt"] == conversation[:3]
    with_system = to_prompt_dataset(dataset, system_prompt=SYSTEM)[0]["prompt"]
    assert with_system == [{"role": "system", "content": SYSTEM}, *conversation[:3]]


def test_prompt_column_strings_and_existing_system_messages():
    strings = Dataset.from_dict({"prompt": ["what is 1+1?"]})
    assert to_prompt_dataset(strings)[0]["prompt"] == "what is 1+1?"  # left as TRL's standard (non-chat) format
    assert to_prompt_dataset(strings, system_prompt=SYSTEM)[0]["prompt"] == [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "what is 1+1?"},
    ]
    own_system = [{"role": "system", "content": "mine"}, {"role": "user", "content": "q"}]
    chats = Dataset.from_dict({"prompt": [own_system]})
    assert to_prompt_dataset(chats, system_prompt=SYSTEM)[0]["prompt"] == own_system
    # a `problem` column (NuminaMath-CoT) wins over `messages` when named
    numina = Dataset.from_dict({"problem": ["p"], "messages": [[{"role": "user", "content": "m"}]]})
    assert to_prompt_dataset(numina, prompt_column="problem").column_names == ["messages", "prompt"]
    assert to_prompt_dataset(numina, prompt_column="problem")[0]["prompt"] == "p"


def test_dataset_errors_name_the_fix(tmp_path):
    with pytest.raises(ValueError, match="--prompt_column"):
        to_prompt_dataset(Dataset.from_dict({"question": ["q"]}))
    numina = Dataset.from_dict({"problem": ["p"], "messages": [[{"role": "user", "content": "m"}]]})
    with pytest.raises(ValueError, match=r"no 'problme' column \(`--prompt_column`\); its columns are \['problem'"):
        to_prompt_dataset(numina, prompt_column="problme")  # a typo: not silently the `messages` column
    with pytest.raises(ValueError, match="end with a user turn"):
        to_prompt_dataset(Dataset.from_dict({"messages": [[{"role": "assistant", "content": "a"}]]}))
    with pytest.raises(ValueError, match="exactly one dataset source"):
        load_prompt_dataset()
    with pytest.raises(ValueError, match="exactly one dataset source"):
        load_prompt_dataset("some/dataset", dataset_files=["a.jsonl"])
    with pytest.raises(ValueError, match=r"\.parquet"):
        load_prompt_dataset(dataset_files=["a.jsonl", "b.csv"])


# Hardening (issue 13): bad options fail in one line before any model loads; checkpoints are never trained over.


def run_failing(argv, monkeypatch, capsys) -> str:
    """`main(argv)` must exit with status 2 before building the trainer; returns its one error line."""
    import trl_esr.scripts.esr_distill as script

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(script, "ESRDistillTrainer", no_trainer)
    with pytest.raises(SystemExit) as exit_:
        script.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("trl-esr train: error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_bad_train_options_fail_in_one_line_before_loading(llama_paths, chat_dataset_dir, tokenizer, tmp_path,
                                                          monkeypatch, capsys):  # fmt: skip
    (tmp_path / "broken.jsonl").write_text('{"prompt": "w1"}\n{"prompt": "w2"\n')
    (tmp_path / "recipe.yaml").write_text("esr_kk: 4\nmax_completion_length: 8\n")
    (tmp_path / "not_a_model").mkdir()
    Dataset.from_dict({"problem": ["w1 w2", "w3"], "answer": ["1", "2"]}).to_json(tmp_path / "math.jsonl")
    base = script_argv(llama_paths, tmp_path / "run", tokenizer.eos_token_id)
    cases = [
        (["--dataset_name", chat_dataset_dir, "--model_name_or_path", llama_paths["student"] + "x"],
         "`--model_name_or_path`"),
        (["--dataset_name", chat_dataset_dir, "--teacher_model_name_or_path", "./models/teachr"],
         "`--teacher_model_name_or_path` './models/teachr' not found"),
        (["--dataset_name", chat_dataset_dir, "--teacher_model_name_or_path", str(tmp_path / "not_a_model")],
         "is a folder but not a model"),
        (["--dataset_name", chat_dataset_dir, "--teacher_tokenizer_name_or_path", str(tmp_path / "not_a_model")],
         "is a folder but not a tokenizer: it holds no tokenizer_config.json or tokenizer.json"),
        (["--dataset_name", "data/prompts.jsonl"], "`--dataset_name` 'data/prompts.jsonl' not found"),
        (["--dataset_files", str(tmp_path / "missing.jsonl")], "not found"),
        (["--dataset_files", str(tmp_path / "broken.jsonl")], "broken.jsonl line 2 is not valid JSON"),
        (["--dataset_name", chat_dataset_dir, "--config", str(tmp_path / "recipe.yaml")],
         "Unknown key(s) in the `--config` file: 'esr_kk' (did you mean 'esr_k'?)"),
        (["--dataset_files", str(tmp_path / "broken.jsonl"), "--eval_strategy", "steps"], "--dataset_test_split"),
        (["--dataset_name", chat_dataset_dir, "--dataset_train_split", "validation"], "`--dataset_train_split`"),
        (["--dataset_name", chat_dataset_dir, "--temperature", "0"], "`temperature` must be > 0"),
        (["--dataset_name", chat_dataset_dir, "--push_to_hub"], "`--push_to_hub` needs the network, but HF_HUB_OFF"),
        (["--dataset_name", chat_dataset_dir, "--resume_from_checkpoint"], "holds none"),
        (["--dataset_name", chat_dataset_dir, "--resume_from_checkpoint", str(tmp_path / "ckpt")], "not found"),
        (["--dataset_name", chat_dataset_dir, "--output_dir", str(tmp_path / "broken.jsonl")], "is a file"),
        (["--dataset_name", chat_dataset_dir, "--boxed_eval_dataset_name", str(tmp_path / "math.jsonl"),
          "--boxed_eval_answer_column", "solution"],
         "The dataset has no column `--boxed_eval_answer_column` 'solution'; its columns are ['problem', 'answer']"),
        (["--dataset_name", chat_dataset_dir, "--boxed_eval_dataset_name", str(tmp_path / "math.jsonl"),
          "--boxed_eval_dataset_split", "test[5:]"], "`--boxed_eval_dataset_split` 'test[5:]': Instruction"),
        (["--dataset_name", chat_dataset_dir, "--boxed_eval_dataset_name", "nobody/no-such-math"],
         "`--boxed_eval_dataset_name` 'nobody/no-such-math' (split 'test[:100]') could not be loaded"),
        (["--dataset_name", chat_dataset_dir, "--boxed_eval_steps", "0"], "`boxed_eval_steps` must be a positive"),
    ]  # fmt: skip
    for extra, message in cases:
        line = run_failing([*base, *extra], monkeypatch, capsys)
        assert message in line, (extra, line)


def test_an_output_dir_with_checkpoints_is_resumed_or_refused(llama_paths, chat_dataset_dir, tokenizer, tmp_path,
                                                             monkeypatch, capsys):  # fmt: skip
    out = tmp_path / "run"
    local_file = os.path.join(chat_dataset_dir, "train.jsonl")  # a local file as `--dataset_name` is accepted
    argv = script_argv(llama_paths, out, tokenizer.eos_token_id, "--dataset_name", local_file)
    argv = [*argv, "--save_strategy", "steps", "--save_steps", "2"]
    run_script(argv)  # 2 steps, checkpoint-2
    assert (out / "checkpoint-2").is_dir()

    for resume in (["--resume_from_checkpoint"], ["--resume_from_checkpoint", "True"]):
        trainer = run_script([*argv, "--max_steps", "3", *resume])
        printed = capsys.readouterr().out
        assert f"Resuming from {out / 'checkpoint-2'}" in printed, resume
        assert trainer.state.global_step == 3
        steps = [entry["step"] for entry in trainer.state.log_history if "loss" in entry]
        assert steps == [1, 2, 3]  # steps 1-2 from the checkpoint's history, step 3 trained now
        shutil.rmtree(out / "checkpoint-3")

    # Rerunning the same command never silently restarts from step 0 ...
    line = run_failing([*argv, "--max_steps", "3"], monkeypatch, capsys)
    assert (
        "already holds checkpoint-2" in line
        and "--resume_from_checkpoint" in line
        and "--overwrite_output_dir" in line
    )
    monkeypatch.undo()
    # ... unless asked to
    trainer = run_script([*argv, "--max_steps", "1", "--overwrite_output_dir"])
    assert trainer.state.global_step == 1 and "Resuming" not in capsys.readouterr().out
