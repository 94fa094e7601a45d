"""The offline demo (`trl-esr demo --quick`) end to end, and its synthetic task."""

import contextlib
import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path


os.environ["HF_HUB_OFFLINE"] = "1"  # the demo must never need the network

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from trl_esr.demo import main  # noqa: E402
from trl_esr.demo.distill import DistillInputs, DistillRun, DistillSettings, RunResult, distill  # noqa: E402
from trl_esr.demo.evaluate import weights_digest  # noqa: E402
from trl_esr.demo.pretrain import chat_prompt, encode_examples, load_pretrained, sft_responses  # noqa: E402
from trl_esr.demo.regimes import predict  # noqa: E402
from trl_esr.demo.report import FIGURES, compare, kernel_line, reading  # noqa: E402
from trl_esr.demo.run import ERRORS_BEYOND_K  # noqa: E402
from trl_esr.demo.task import (  # noqa: E402
    answer_of,
    build_tokenizer,
    derivation,
    is_correct,
    make_splits,
    response_length,
    shortcut,
)
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained  # noqa: E402


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
    """A second invocation on a copy of the whole first run (copy2 keeps the models' mtimes): cached models, and the
    guard's checkpoints of the first run in `runs/`, which the trainer would refuse to train over."""
    output_dir = tmp_path_factory.mktemp("demo_again")
    shutil.copytree(first_run[0], output_dir, copy_function=shutil.copy2, dirs_exist_ok=True)
    assert list((output_dir / "runs").rglob("checkpoint-*"))
    mtimes = {p: p.stat().st_mtime_ns for p in (output_dir / "models").rglob("*") if p.is_file()}
    stdout = _run_demo("--output-dir", str(output_dir), "--steps", "2")
    return output_dir, stdout, mtimes


def _runs(metrics: dict, regime: str) -> dict[str, dict]:
    runs = metrics["regimes"][regime]["runs"]
    return {
        "full": next(r for r in runs if r["k"] is None),
        "esr": next(r for r in runs if r["k"] is not None and r["guard"] is None),
        "guard": next(r for r in runs if r["guard"] == "stop"),
    }


REGIMES = ("errors beyond k", "early decision")


def test_outputs_are_written(first_run):
    output_dir, stdout, _ = first_run
    for name in FIGURES.values():
        assert (output_dir / name).read_bytes().startswith(b"\x89PNG\r\n\x1a\n"), name
    report = (output_dir / "report.md").read_text()
    assert report.count("| method |") == 2 and all(name in report for name in FIGURES.values())
    assert "## Errors beyond k" in report and "## Early decision" in report and "**Reading.**" in report
    assert "| method |" in stdout  # the tables are printed too
    assert "Training the teacher" in stdout and "ESR k=8 + guard" in stdout
    assert "Diagnostics before training" in stdout and "recommended k" in stdout  # printed before distilling
    assert stdout.index("Diagnostics before training") < stdout.index("full rollout: 4 steps")


def test_report_names_the_cpu_kernels_that_computed_it(first_run):
    """In this warm test process torch chose its kernels before the demo ran: the report says which, and says they
    are the pinned ones only if torch itself reports AVX2 and MKL's reproducible branch is set."""
    output_dir, _, metrics = first_run
    state = metrics["cpu_kernels"]
    assert state["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert state["pinned"] is (state["torch_cpu_capability"] == "AVX2" and os.environ.get("MKL_CBWR") == "AVX2")
    assert f"torch kernels {state['torch_cpu_capability']}" in (output_dir / "report.md").read_text()
    recipes = [json.loads(p.read_text()) for p in (output_dir / "models").glob("*/demo_recipe.json")]
    assert len(recipes) == 3 and {r["kernels"] for r in recipes} == {
        f"cpu {state['torch_cpu_capability']} MKL_CBWR=" + (os.environ.get("MKL_CBWR") or "unset")
    }


def test_a_gpu_report_names_no_cpu_kernels(first_run):
    """On `--device cuda` the CPU computed none of the numbers: the header must not claim CPU kernels for them."""
    metrics = first_run[2]
    assert "torch kernels" in kernel_line(metrics)
    assert kernel_line(metrics | {"device": "cuda"}) == ""


def test_quick_run_says_its_numbers_mean_nothing(first_run):
    output_dir, stdout, metrics = first_run
    assert "plumbing only" in (output_dir / "report.md").read_text() and "plumbing only" in stdout
    assert "plumbing only" in metrics["notice"]


def test_metrics_hold_three_methods_per_regime_from_one_student(first_run):
    metrics = first_run[2]
    assert set(metrics["regimes"]) == set(REGIMES)
    for regime in REGIMES:
        data, runs = metrics["regimes"][regime], _runs(metrics, regime)
        for run in runs.values():
            assert all(0 <= point["accuracy"] <= 1 for point in run["curve"])
            assert run["curve"][0]["accuracy"] == data["student_accuracy"]  # the same starting student
        assert [p["step"] for p in runs["esr"]["curve"]] == [p["step"] for p in runs["full"]["curve"]]
        assert len(data["kl_per_position"]) == 3  # before, after full, after ESR
        prediction = data["prediction"]
        assert 0 <= prediction["kl_share_within_k"] <= 1 and prediction["decay_k_grid"] == [0, 8, 16]


def test_esr_rollouts_stop_at_k(first_run):
    for regime in REGIMES:
        runs = _runs(first_run[2], regime)
        esr, full = runs["esr"], runs["full"]
        assert esr["max_rollout_length"] <= esr["k"]
        assert 0 < esr["tokens_generated"] <= esr["k"] * esr["rollouts"]
        assert esr["tokens_trained"] <= esr["tokens_generated"]
        assert esr["tokens_measured"] == 0 and full["tokens_measured"] == 0  # only the guard measures


def test_guard_measurements_are_counted_and_its_checkpoint_is_what_is_reported(first_run):
    metrics = first_run[2]
    for regime in REGIMES:
        guard = _runs(metrics, regime)["guard"]
        # 2 measurements (every 2 of 4 steps) of 4 greedy rollouts, 1 to 37 tokens (max_completion_length) each; a
        # measurement whose rollouts all end within k logs no `kl_beyond_k`
        assert len(guard["kl_beyond_k"]) <= 2 and 2 * 4 <= guard["tokens_measured"] <= 2 * 4 * 37
        last = guard["curve"][-1]
        assert last["tokens"] == guard["tokens_generated"] + guard["tokens_measured"]
        if not guard["kl_beyond_k"]:  # both ended within k (torch 2.6's sampler, here): no checkpoint to keep
            assert guard["kept_step"] is None and guard["final_accuracy"] == last["accuracy"]
            continue
        # the kept checkpoint, reloaded and re-evaluated, scores what the run measured at that step (greedy)
        at_step = {p["step"]: p["accuracy"] for p in guard["curve"]}
        assert guard["kept_step"] in at_step and guard["final_accuracy"] == at_step[guard["kept_step"]]
        best_step = min(guard["kl_beyond_k"], key=lambda entry: entry[1])[0]
        assert guard["kept_step"] == best_step  # the lowest KL beyond k is the one kept


def test_second_run_reuses_cached_models(second_run):
    output_dir, stdout, mtimes = second_run
    assert "Reusing the cached teacher" in stdout
    assert "Reusing the cached student-errors-beyond-k" in stdout
    assert "Reusing the cached student-early-decision" in stdout
    assert "Training the" not in stdout
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    assert (output_dir / "metrics.json").exists()


def test_time_to_accuracy_compares_against_full_rollout_of_the_same_seed():
    def run(k, points, kept=None):
        result = RunResult("m", 0, k, kept_step=kept)
        result.curve = [{"step": s, "train_seconds": t, "tokens": n, "accuracy": a} for s, t, n, a in points]
        if kept is not None:
            result.kept_accuracy = next(p["accuracy"] for p in result.curve if p["step"] == kept)
        return result

    full = run(None, [(0, 0.0, 0, 0.1), (5, 10.0, 1000, 0.8), (10, 20.0, 2000, 0.95)])
    esr = run(4, [(0, 0.0, 0, 0.1), (5, 2.0, 100, 0.9), (10, 4.0, 200, 0.6)], kept=5)
    c = compare(esr, full)  # ESR's kept 90 % at 2 s / 100 tokens; full first reaches >= 90 % at 20 s / 2000 tokens
    assert c["full_reached"] and c["speedup"] == 10.0 and c["token_ratio"] == 20.0
    better = run(4, [(0, 0.0, 0, 0.1), (5, 2.0, 100, 0.99)])
    c = compare(better, full)  # full never reaches 99 %: its whole run is a lower bound
    assert not c["full_reached"] and c["speedup"] == 10.0
    flat = run(4, [(0, 0.0, 0, 0.1), (5, 2.0, 100, 0.1)])
    assert not compare(flat, full)["gain"]


def test_shortcut_is_right_exactly_when_no_column_carries():
    assert shortcut(3471, 5892, 4) == "answer 0 8 2 6 3"  # 3+5, 4+8, 7+9, 1+2, each mod 10
    for a, b in make_splits(4, {"check": 300}, seed=2)["check"]:
        carries = any(
            int(x) + int(y) >= 10 for x, y in zip(f"{a:04d}", f"{b:04d}", strict=True)
        )  # no carry in -> no carry out
        assert is_correct(a, b, 4, shortcut(a, b, 4)) == (not carries)
        assert shortcut(a, b, 4).split()[0] == "answer" != derivation(a, b, 4).split()[0]  # decided at token 1


def test_sft_examples_mix_formats_and_pad():
    pairs = make_splits(4, {"x": 400}, seed=0)["x"]
    responses = sft_responses(pairs, 4, 0.65, seed=1)
    share = sum(r.startswith("answer") for r in responses) / len(responses)
    assert 0.55 < share < 0.75 and responses == sft_responses(pairs, 4, 0.65, seed=1)
    tokenizer = build_tokenizer()
    input_ids, attention_mask, labels = encode_examples(tokenizer, pairs[:8], 4, responses[:8])
    for ids, mask, label, response in zip(input_ids, attention_mask, labels, responses[:8], strict=True):
        n = int(mask.sum())
        assert (ids[n:] == tokenizer.pad_token_id).all() and (label[n:] == -100).all()
        trained = label[label != -100].tolist()
        assert tokenizer.decode(trained) == response + " " + tokenizer.eos_token  # exactly the response + EOS


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


def test_weights_digest_tells_equal_weights_apart_from_changed_ones(tmp_path):
    """The demo measures each set of weights once (ESR and ESR + guard share theirs until the guard stops): the key
    must match for a reloaded copy and differ after any change, however small."""
    tokenizer = build_tokenizer()
    model = build_tiny_causal_lm(tokenizer, "qwen2", hidden_size=16, num_layers=1)
    copy = AutoModelForCausalLM.from_pretrained(save_pretrained(model, tokenizer, tmp_path / "m"))
    assert weights_digest(copy) == weights_digest(model)
    with torch.no_grad():
        next(copy.parameters()).view(-1)[0] += 1e-6
    assert weights_digest(copy) != weights_digest(model)


def test_runs_share_one_frozen_teacher_without_leaking_state(tmp_path):
    """The demo's trainers all get the same teacher instance: a run must leave it as it found it (same weights,
    frozen, eval), so that repeating a run on the shared teacher reproduces it exactly; an unfrozen one is refused."""
    tokenizer = build_tokenizer()
    student_path = save_pretrained(
        build_tiny_causal_lm(tokenizer, hidden_size=16, num_layers=1), tokenizer, tmp_path / "s"
    )
    # a Llama folder like the demo's teacher: the trainer loads the teacher's tokenizer from its path, where
    # `AutoTokenizer` on a Qwen2 folder would swap in `Qwen2Tokenizer` (see `build_word_tokenizer`)
    teacher_path = save_pretrained(
        build_tiny_causal_lm(tokenizer, "llama", hidden_size=16, num_layers=1, seed=1), tokenizer, tmp_path / "t"
    )
    teacher = load_pretrained(teacher_path, "cpu").requires_grad_(False)
    digest = weights_digest(teacher)
    pairs = make_splits(2, {"distill": 8}, seed=0)["distill"]
    inputs = DistillInputs(
        str(student_path), teacher, tokenizer, [chat_prompt(a, b, 2) for a, b in pairs], evaluate=lambda model: 0.0
    )
    settings = DistillSettings(
        response_length(2) + 2,
        steps=2,
        batch_size=4,
        learning_rate=1e-3,
        eval_every=1,
        guard_every=1,
        guard_rollouts=2,
        use_cpu=True,
    )
    outcomes = []
    for attempt in range(2):  # the guarded run: the teacher scores both the loss and the guard's measurements
        result, model = distill(
            DistillRun("ESR + guard", 4, "stop", 0, str(tmp_path / f"run-{attempt}")), inputs, settings
        )
        assert weights_digest(teacher) == digest and not teacher.training
        assert not any(parameter.requires_grad for parameter in teacher.parameters())
        curve = [{key: value for key, value in point.items() if key != "train_seconds"} for point in result.curve]
        outcomes.append(
            (curve, result.tokens_generated, result.tokens_measured, result.kl_beyond_k, weights_digest(model))
        )
    assert outcomes[0] == outcomes[1]
    with pytest.raises(ValueError, match="freeze it"):
        distill(
            DistillRun("ESR", 4, None, 0, str(tmp_path / "unfrozen")),
            replace(inputs, teacher=teacher.requires_grad_(True)),
            settings,
        )


def test_prediction_probes_only_the_prefixes_the_rollouts_can_hold():
    """`--k` above half the rollout length: the probe's 2k prefix would not fit (the probe refuses it), so the
    prediction probes 0 and k only; below half it probes all three."""
    tokenizer = build_tokenizer()
    student = build_tiny_causal_lm(tokenizer, hidden_size=16, num_layers=1)
    teacher = build_tiny_causal_lm(tokenizer, "llama", hidden_size=16, num_layers=1, seed=1).requires_grad_(False)
    pairs = make_splits(2, {"test": 4}, seed=0)["test"]
    length = response_length(2) + 5
    for k, grid in ((length - 1, [0, length - 1]), (length // 2 - 1, [0, length // 2 - 1, 2 * (length // 2 - 1)])):
        prediction = predict(student, teacher, tokenizer, pairs, 2, k, length, seed=0)
        assert prediction.decay_k_grid == grid and len(prediction.decay_accuracy) == len(grid)


def test_reading_tells_a_slower_match_from_a_loss_and_a_win():
    """The verdict follows the numbers: ESR as accurate and faster suits the regime; as accurate but slower than
    full rollout on one seed is no clear choice (not "ESR does not match"); clearly less accurate is a loss."""

    def run(method, seed, k, points):
        result = RunResult(method, seed, k, guard="stop" if "guard" in method else None)
        result.curve = [{"step": s, "train_seconds": t, "tokens": n, "accuracy": a} for s, t, n, a in points]
        return result

    def regime(esr_points):  # two seeds; full rollout reaches 90 % at 10 s on both
        full = [(0, 0.0, 0, 0.1), (5, 10.0, 1000, 0.9), (10, 20.0, 2000, 0.9)]
        runs = []
        for seed, points in enumerate(esr_points):
            runs += [run("full", seed, None, full), run("ESR", seed, 4, points), run("ESR + guard", seed, 4, points)]
        return {"runs": runs, "regime": ERRORS_BEYOND_K, "student_accuracy": 0.1}

    fast = [(0, 0.0, 0, 0.1), (5, 2.0, 100, 0.9), (10, 4.0, 200, 0.9)]  # 90 % at 2 s: 5x faster
    slow = [(0, 0.0, 0, 0.1), (5, 2.0, 100, 0.5), (10, 40.0, 200, 0.9)]  # 90 % only at 40 s: 4x slower
    weak = [(0, 0.0, 0, 0.1), (5, 2.0, 100, 0.5), (10, 4.0, 200, 0.5)]  # 50 %, 40 points below
    assert reading(regime([fast, fast]), 4).endswith("ESR suits this regime.")
    assert "not faster on every seed" in reading(regime([fast, slow]), 4)
    assert reading(regime([weak, weak]), 4).endswith("ESR does not match it here.")


def test_choosing_k_example_script_reruns_the_diagnostics_on_the_demo_models(first_run, tmp_path, monkeypatch, capsys):
    """scripts/choosing_k_example.py (docs/choosing-k.md's worked example) on a demo's cached models: one report per
    student, with the probe's grid, and the numbers it prints are the report's."""
    import runpy

    from trl_esr.demo import kernels

    monkeypatch.setattr(kernels, "pin", lambda: {})  # this process has computed already; leave its environment alone
    script = Path(__file__).parents[1] / "scripts" / "choosing_k_example.py"
    monkeypatch.setattr("sys.argv", [str(script), "--demo-dir", str(first_run[0]), "--output-dir", str(tmp_path)])
    runpy.run_path(str(script), run_name="__main__")
    printed = capsys.readouterr().out
    for name in ("student-errors-beyond-k", "student-early-decision"):
        report = json.loads((tmp_path / name / "diagnostics.json").read_text())
        assert report["teacher_decay"]["k_grid"] == [0, 6, 12, 24, 36] and report["key_numbers"]["num_rollouts"] == 64
        assert (tmp_path / name / "kl_per_position.png").stat().st_size > 0
        assert f'"mean_kl_per_token": {report["key_numbers"]["mean_kl_per_token"]}' in printed
