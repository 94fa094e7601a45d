"""Issue 13 (hardening, round 2): every bad input fails with one message naming the option and the fix, before any
model is loaded where possible, and finished work is never lost. One test per row of docs/reliability.md's
"Command line" table that is not covered in test_validation.py, test_script.py, test_guards.py or
test_diagnostics_cli.py; then the training guards when the same trainer is resumed or `train()` raises."""

import json
import math
import os
import signal

import pytest
import torch
from datasets import Dataset
from helpers import LearningRateJump
from transformers import TrainerCallback

import trl_esr.inference as inference
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.inference import InferenceModelConfig
from trl_esr.scripts.evaluate_boxed import EvaluateArguments, evaluate, main


# `trl-esr evaluate` (trl_esr/scripts/evaluate_boxed.py; examples/scripts/evaluate_boxed.py runs it)


@pytest.fixture
def eval_setup(tokenizer, tmp_path):
    model = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=32), tokenizer, tmp_path / "m")
    data = tmp_path / "math.jsonl"
    Dataset.from_dict({"problem": ["w1 w2", "w3 w4"], "answer": ["w1", "w2"]}).to_json(data)
    return model, str(data)


def bad_evaluation_inputs(tmp_path, model, data):
    (tmp_path / "broken.jsonl").write_text('{"answer": "1", "responses": ["a"]}\n{"answer": \n')
    (tmp_path / "wrong.jsonl").write_text('{"answer": "1", "response": "a"}\n')
    return [
        ({"output_file": str(tmp_path / "missing_dir" / "x.jsonl")}, "the folder"),
        ({"output_file": str(tmp_path)}, "is a folder"),
        ({"model_name_or_path": model + "x"}, "`--model_name_or_path`"),
        ({"n": 0}, "`--n` must be a positive integer"),
        ({"max_new_tokens": -1}, "`--max_new_tokens`"),
        ({"temperature": -0.1}, "`--temperature` must be >= 0"),
        ({"problem_column": "question"}, "`--problem_column` 'question'"),
        ({"answer_column": "solution"}, "`--answer_column` 'solution'"),
        ({"responses_file": str(tmp_path / "nope.jsonl")}, "not found"),
        ({"responses_file": str(tmp_path / "broken.jsonl")}, "line 2 is not valid JSON"),
        ({"responses_file": str(tmp_path / "wrong.jsonl")}, "line 1 needs an 'answer' and a 'responses' list"),
    ]


def test_evaluate_checks_every_input_before_loading_the_model(eval_setup, tmp_path, monkeypatch, capsys):
    model, data = eval_setup

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(inference, "load_causal_lm", no_loading)
    for overrides, message in bad_evaluation_inputs(tmp_path, model, data):
        options = {"model_name_or_path": model, "dataset_name": data, "max_new_tokens": 2, **overrides}
        argv = [item for name, value in options.items() for item in (f"--{name}", str(value))]
        assert main(argv) == 2, overrides
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("evaluate_boxed: error:")]
        assert len(errors) == 1 and message in errors[0] and "Traceback" not in err, (overrides, err)


def test_evaluate_reads_a_local_file_as_dataset_name(eval_setup, tmp_path):
    model, data = eval_setup  # a .jsonl file, not a folder: it becomes the split `--dataset_split` names
    out = tmp_path / "samples.jsonl"
    args = EvaluateArguments(dataset_name=data, dataset_split="test[:1]", n=2, max_new_tokens=3, output_file=str(out))
    assert evaluate(args, InferenceModelConfig(model_name_or_path=model, dtype="float32"))["problems"] == 1
    assert len(json.loads(out.read_text())["responses"]) == 2


# `trl-esr --help` and each subcommand's: printed from trl_esr/_cli_help.py, without importing torch (timings:
# benchmarks/cli_startup.py)


def load_help_generator():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "scripts" / "gen_cli_help.py"
    spec = importlib.util.spec_from_file_location("gen_cli_help", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def installed_parser_versions() -> dict[str, str]:
    from importlib.metadata import version

    from trl_esr._cli_help import RENDERED_WITH

    return {name: version(name) for name in RENDERED_WITH}


def test_cached_cli_help_is_up_to_date():
    from trl_esr._cli_help import RENDERED_WITH

    if installed_parser_versions() != RENDERED_WITH:
        # e.g. the device's transformers 5.17: the CLI renders live there (the fallback test below)
        pytest.skip(f"help rendered with {RENDERED_WITH}, installed {installed_parser_versions()}")
    generator = load_help_generator()
    assert generator.OUTPUT.read_text() == generator.render(), "run `python scripts/gen_cli_help.py`"


def test_help_with_other_library_versions_comes_from_the_parser(monkeypatch, capsys):
    """With transformers 5.17, the cached 5.24 text would list `--activation_checkpointing`: its parser refuses it."""
    import trl_esr._cli_help as cached
    from trl_esr.cli import main

    monkeypatch.setattr(cached, "HELP", {**cached.HELP, "train": "CACHED TEXT\n"})
    monkeypatch.setattr(cached, "RENDERED_WITH", installed_parser_versions())
    assert main(["train", "--help"]) == 0
    assert capsys.readouterr().out == "CACHED TEXT\n"

    monkeypatch.setattr(cached, "RENDERED_WITH", {**installed_parser_versions(), "transformers": "0.0.1"})
    with pytest.raises(SystemExit) as exited:  # argparse's own --help
        main(["train", "--help"])
    assert exited.value.code == 0
    live = capsys.readouterr().out
    assert "CACHED TEXT" not in live
    assert live.startswith("usage: trl-esr train") and "--esr_k" in live and "--learning_rate" in live


# Text only that command's help prints ("": the dispatcher's).
HELP_LINES = {"": "usage: trl-esr <command>", "train": "--max_completion_length", "demo": "usage: trl-esr demo",
              "suggest-k": "--teacher_model_name_or_path", "evaluate": "--max_new_tokens"}  # fmt: skip


@pytest.mark.parametrize("command", list(HELP_LINES))
def test_help_imports_nothing_heavy(command):
    import subprocess
    import sys

    from trl_esr._cli_help import RENDERED_WITH

    if command and installed_parser_versions() != RENDERED_WITH:
        pytest.skip(f"help rendered with {RENDERED_WITH}: with {installed_parser_versions()} the parser prints it")

    code = (
        "import sys; from trl_esr.cli import main; "
        f"code = main({[command, '--help'] if command else ['--help']!r}); "
        "heavy = [m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules]; "
        "print('HEAVY', heavy); sys.exit(code)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert HELP_LINES[command] in result.stdout


# Training callbacks (trl_esr/guards.py): the same trainer resumes after a stop, and no signal handler outlives
# `train()`, however it ends ("Faults during training" in docs/reliability.md)


class SignalAtStep(TrainerCallback):
    """Sends SIGINT to this process at the end of step `step` (a run resumed from that step starts past it)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class FailAtStep(TrainerCallback):
    """Raises at the end of step `step` (None: never), as any error inside `train()` would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise ValueError(f"failed at step {self.step}")


@pytest.fixture
def outside_handlers():
    """Recording handlers for SIGINT and SIGTERM, as a notebook or a launcher installs its own (whatever the test
    process had is put back afterwards); the signals they receive are listed."""
    received = []

    def record(signum, frame):
        received.append(signum)

    originals = {sig: signal.signal(sig, record) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield record, received
    for sig, handler in originals.items():
        signal.signal(sig, handler)


def logged_steps(trainer) -> list[int]:
    return [entry["step"] for entry in trainer.state.log_history if "loss" in entry]


def test_the_same_trainer_resumes_after_an_interrupt(make_trainer, make_args, tmp_path, outside_handlers):
    out = tmp_path / "interrupted"
    trainer = make_trainer(make_args(max_steps=4, output_dir=str(out)), callbacks=[SignalAtStep(2)])
    with pytest.raises(KeyboardInterrupt, match="Interrupted at step 2"):
        trainer.train()
    try:  # what the KeyboardInterrupt's message says to do
        trainer.train(resume_from_checkpoint=True)
    except KeyboardInterrupt as error:  # not raised out of the test: pytest would stop the session
        pytest.fail(f"the resumed run stopped again without a signal: {error}")
    assert trainer.state.global_step == 4
    assert logged_steps(trainer) == [1, 2, 3, 4]  # the checkpoint's history, then the steps run on resume
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    record, received = outside_handlers
    assert signal.getsignal(signal.SIGINT) is record and received == []


def test_the_same_trainer_resumes_after_nonfinite_weights(make_trainer, make_args, tmp_path):
    out = tmp_path / "nan_weights"
    args = make_args(max_steps=5, output_dir=str(out), save_strategy="steps", save_steps=1)
    jump = LearningRateJump(3, float("nan"))
    trainer = make_trainer(args, callbacks=[jump])
    with pytest.raises(RuntimeError, match="stopped at step 3: the update left non-finite weights"):
        trainer.train()
    jump.step = math.inf  # the schedule is fixed; resume as the error says
    trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert trainer.state.global_step == 5
    assert logged_steps(trainer) == [1, 2, 3, 4, 5]
    assert [e["esr/nonfinite_steps"] for e in trainer.state.log_history if "loss" in e][2:] == [0, 0, 0]
    assert all(torch.isfinite(p).all() for p in trainer.model.parameters())
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == [
        f"checkpoint-{step}" for step in range(1, 6)
    ]


def test_a_train_that_raises_on_nonfinite_weights_restores_the_signal_handlers(
    make_trainer, make_args, tmp_path, outside_handlers
):
    record, received = outside_handlers
    trainer = make_trainer(make_args(max_steps=4, output_dir=str(tmp_path / "o")),
                           callbacks=[LearningRateJump(2, float("nan"))])  # fmt: skip
    with pytest.raises(RuntimeError, match="non-finite weights"):
        trainer.train()
    assert signal.getsignal(signal.SIGINT) is record and signal.getsignal(signal.SIGTERM) is record


def test_a_signal_after_a_train_that_raised_reaches_the_previous_handler(make_trainer, make_args, outside_handlers):
    """transformers skips `on_train_end` when `train()` raises, which left our handler installed: the next Ctrl-C
    (a notebook's, between cells) must reach the handler it replaced, not be taken for a request to checkpoint."""
    record, received = outside_handlers
    trainer = make_trainer(make_args(max_steps=3), callbacks=[FailAtStep(1)])
    with pytest.raises(ValueError, match="failed at step 1"):
        trainer.train()
    signal.raise_signal(signal.SIGINT)
    assert received == [signal.SIGINT]
    assert signal.getsignal(signal.SIGINT) is record and signal.getsignal(signal.SIGTERM) is record


def test_a_train_after_one_that_raised_restores_the_original_handlers(make_trainer, make_args, outside_handlers):
    record, received = outside_handlers
    failure = FailAtStep(1)
    trainer = make_trainer(make_args(max_steps=2), callbacks=[failure])
    with pytest.raises(ValueError, match="failed at step 1"):
        trainer.train()
    failure.step = None
    trainer.train()  # starts over: no checkpoint was written
    assert trainer.state.global_step == 2
    assert signal.getsignal(signal.SIGINT) is record and signal.getsignal(signal.SIGTERM) is record
    signal.raise_signal(signal.SIGINT)
    assert received == [signal.SIGINT]
