"""`trl-esr suggest-k` end to end on tiny local Llama models, offline: outputs, determinism, exit codes."""

import json

import pytest
import yaml
from conftest import WORDS

from trl_esr.cli import main as trl_esr_main
from trl_esr.diagnostics.cli import EXIT_BAD_INPUT, EXIT_NO_RECOMMENDATION, EXIT_RECOMMENDED, main
from trl_esr.tiny_models import build_tiny_causal_lm, save_pretrained


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def llama_paths(tmp_path_factory, tokenizer):
    """Llama folders load by path with `AutoTokenizer` (Qwen2 ones would swap in a BPE tokenizer)."""
    root = tmp_path_factory.mktemp("llama")
    student = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32, seed=0)
    teacher = build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=1)
    return {
        "student": save_pretrained(student, tokenizer, root / "student"),
        "teacher": save_pretrained(teacher, tokenizer, root / "teacher"),
    }


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory):
    """Conversational rows whose final assistant turn (the reference) must be dropped, with a boxed answer column."""
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": " ".join(WORDS[i : i + 4])},
                {"role": "assistant", "content": WORDS[i + 5]},
            ],
            "answer": f"\\boxed{{{WORDS[i + 5]}}}",
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def command(paths, dataset_file, output_dir, **overrides) -> list[str]:
    options = {
        "model_name_or_path": paths["student"],
        "teacher_model_name_or_path": paths["teacher"],
        "dataset_files": dataset_file,
        "num_prompts": 6,
        "max_completion_length": 12,
        "batch_size": 4,
        "seed": 3,
        "dtype": "float32",
        "output_dir": str(output_dir),
        **overrides,
    }
    argv = []
    for name, value in options.items():
        argv += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    return argv


def test_suggest_k_writes_report_and_is_deterministic(llama_paths, dataset_file, tmp_path, capsys):
    argv = command(llama_paths, dataset_file, tmp_path / "a", probe_k_grid=[0, 4])
    assert trl_esr_main(["suggest-k", *argv]) == EXIT_RECOMMENDED  # through the `trl-esr` dispatcher
    assert "Recommended k =" in capsys.readouterr().out

    # The same run from a YAML config file, as TRL scripts accept it.
    config = {"model_name_or_path": llama_paths["student"], "teacher_model_name_or_path": llama_paths["teacher"],
              "dataset_files": [dataset_file], "num_prompts": 6, "max_completion_length": 12, "batch_size": 4,
              "seed": 3, "dtype": "float32", "output_dir": str(tmp_path / "b"), "probe_k_grid": [0, 4]}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["--config", str(tmp_path / "config.yaml")]) == EXIT_RECOMMENDED

    first, second = (json.loads((tmp_path / run / "diagnostics.json").read_text()) for run in ("a", "b"))
    for section in ("per_position", "recommendation", "teacher_decay", "key_numbers"):
        assert first[section] == second[section], section

    per_position = first["per_position"]
    assert per_position["alive"][0] == 6 and len(per_position["kl_mean"]) <= 12
    assert set(per_position["kl_quantiles"]) == {"q10", "q50", "q90"}
    assert all(kl > 0 for kl in per_position["kl_mean"])
    rec = first["recommendation"]
    assert 1 <= rec["k"] <= len(per_position["kl_mean"])
    assert rec["cumulative_share"][rec["k"] - 1] >= 0.45
    assert first["teacher_decay"]["k_grid"] == [0, 4] and first["teacher_decay"]["num_prompts"] == [6, 6]
    for name in ("kl_per_position.png", "cumulative_kl_share.png", "teacher_decay.png"):
        assert (tmp_path / "a" / name).read_bytes().startswith(PNG_SIGNATURE), name
    assert f"Recommended k = {rec['k']}" in (tmp_path / "a" / "diagnostics.md").read_text()

    # A different seed samples different rollouts.
    assert main(command(llama_paths, dataset_file, tmp_path / "c", seed=4)) == EXIT_RECOMMENDED
    third = json.loads((tmp_path / "c" / "diagnostics.json").read_text())
    assert third["per_position"]["kl_mean"] != first["per_position"]["kl_mean"]


def test_suggest_k_with_teacher_equal_to_student_recommends_nothing(llama_paths, dataset_file, tmp_path, capsys):
    paths = {"student": llama_paths["student"], "teacher": llama_paths["student"]}
    assert main(command(paths, dataset_file, tmp_path)) == EXIT_NO_RECOMMENDATION
    assert "No k can be recommended" in capsys.readouterr().out
    report = json.loads((tmp_path / "diagnostics.json").read_text())
    assert report["recommendation"]["k"] is None
    assert max(abs(kl) for kl in report["per_position"]["kl_mean"]) < 1e-6
    assert (tmp_path / "kl_per_position.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (tmp_path / "cumulative_kl_share.png").exists()  # nothing to mark a k on


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset_files": "missing.jsonl"}, "not found"),
        ({"dataset_name": "some/hub-set"}, "exactly one of"),
        ({"threshold": 1.5}, "threshold"),
        ({"probe_k_grid": [0, 12]}, "probe_k_grid"),
        ({"probe_k_grid": [2], "answer_column": "solution"}, "answer_column"),
        ({"teacher_model_name_or_path": "/nonexistent/teacher"}, "teacher"),
    ],
)
def test_suggest_k_bad_input_exits_2(llama_paths, dataset_file, tmp_path, capsys, overrides, message):
    assert main(command(llama_paths, dataset_file, tmp_path, **overrides)) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "diagnostics.json").exists()


def test_suggest_k_unknown_argument_exits_2(capsys):
    assert main(["--no_such_option", "1"]) == EXIT_BAD_INPUT
