"""The offline demo (`trl-esr demo --quick`) end to end, and its synthetic task."""

import contextlib
import io
import json
import os
import shutil


os.environ["HF_HUB_OFFLINE"] = "1"  # the demo must never need the network

import pytest  # noqa: E402

from trl_esr.demo import main  # noqa: E402
from trl_esr.demo.report import FIGURES  # noqa: E402
from trl_esr.demo.task import answer_of, derivation, is_correct, make_splits, response_length  # noqa: E402


def _run_demo(*argv: str) -> str:
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert main(["--quick", "--device", "cpu", *argv]) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("demo")
    stdout = _run_demo("--output-dir", str(output_dir))
    return output_dir, stdout, json.loads((output_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def second_run(first_run, tmp_path_factory):
    """A second invocation on a copy of the first run's cached models (copy2 keeps their mtimes)."""
    output_dir = tmp_path_factory.mktemp("demo_again")
    shutil.copytree(first_run[0] / "models", output_dir / "models", copy_function=shutil.copy2)
    mtimes = {p: p.stat().st_mtime_ns for p in (output_dir / "models").rglob("*") if p.is_file()}
    stdout = _run_demo("--output-dir", str(output_dir), "--steps", "2")
    return output_dir, stdout, mtimes


def _esr_and_full(metrics: dict) -> tuple[dict, dict]:
    runs = metrics["runs"].values()
    return next(r for r in runs if r["k"] is not None), next(r for r in runs if r["k"] is None)


def test_outputs_are_written(first_run):
    output_dir, stdout, _ = first_run
    for name in FIGURES.values():
        assert (output_dir / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
    report = (output_dir / "report.md").read_text()
    assert "| method |" in report and all(name in report for name in FIGURES.values())
    assert "| method |" in stdout  # the table is printed too
    assert "Training the teacher" in stdout and "Distilling with ESR" in stdout


def test_metrics_hold_both_methods(first_run):
    metrics = first_run[2]
    esr, full = _esr_and_full(metrics)
    assert 0 <= metrics["teacher_accuracy"] <= 1 and 0 <= metrics["student_accuracy"] <= 1
    for run in (esr, full):
        assert all(0 <= point["accuracy"] <= 1 for point in run["curve"])
        assert run["curve"][0]["accuracy"] == metrics["student_accuracy"]  # same starting student
    assert [p["step"] for p in esr["curve"]] == [p["step"] for p in full["curve"]]
    assert len(metrics["kl_per_position"]) == 3


def test_esr_rollouts_stop_at_k(first_run):
    esr, full = _esr_and_full(first_run[2])
    assert esr["max_rollout_length"] <= esr["k"] < full["max_rollout_length"]
    assert 0 < esr["tokens_generated"] <= esr["k"] * esr["rollouts"]
    assert esr["tokens_generated"] < full["tokens_generated"]
    assert esr["tokens_trained"] <= esr["tokens_generated"]


def test_second_run_reuses_cached_models(second_run):
    output_dir, stdout, mtimes = second_run
    assert "Reusing the cached teacher" in stdout and "Reusing the cached student" in stdout
    assert "Training the" not in stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert (output_dir / "metrics.json").exists()


def test_derivation_is_column_addition_with_carries():
    response = derivation(3471, 5892, 4)
    assert response == "1 + 2 + 0 = 0 3 ; 7 + 9 + 0 = 1 6 ; 4 + 8 + 1 = 1 3 ; 3 + 5 + 1 = 0 9 ; answer 0 9 3 6 3"
    assert len(response.split()) == response_length(4)
    for a, b in make_splits(3, {"check": 50}, seed=1)["check"]:
        assert is_correct(a, b, 3, derivation(a, b, 3))
        assert len(derivation(a, b, 3).split()) == response_length(3)


def test_answer_checker():
    assert is_correct(3471, 5892, 4, "whatever came before answer 0 9 3 6 3")
    assert not is_correct(3471, 5892, 4, "answer 0 9 3 6 4")
    assert not is_correct(3471, 5892, 4, "answer 9 3 6 3")  # the carry digit is part of the answer
    assert not is_correct(3471, 5892, 4, "1 + 2 + 0 = 0 3 ;")  # no answer at all
    assert answer_of("answer 1 2 ; answer 0 4 5") == "045"  # the last answer counts
    assert answer_of("no answer here") is None


def test_splits_are_disjoint_and_deterministic():
    splits = make_splits(2, {"a": 100, "b": 50}, seed=3)
    assert len(splits["a"]) == 100 and len(splits["b"]) == 50
    assert not set(splits["a"]) & set(splits["b"])
    assert splits == make_splits(2, {"a": 100, "b": 50}, seed=3)
