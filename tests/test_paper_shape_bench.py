"""The paper-shape benchmark (`benchmarks/paper_shape.py`) at tiny shapes on CPU: the same runs as on the GPU, each
rollout exactly k or L tokens, and every figure in the JSON (no timing assertions)."""

import json

from benchmarks.paper_shape import SHAPES, main


TIMINGS = ("step", "generation", "training", "teacher_forward", "student_and_update")


def test_tiny_paper_shape_benchmark(tmp_path):
    results = main(["--shapes", "tiny", "--steps", "1", "--output-dir", str(tmp_path)])
    for name in ("results.json", "results.md", "paper_shape.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "results.json").read_text()) == results

    spec, runs = SHAPES["tiny"], results["runs"]
    k, length, batch = spec["k"], spec["full_length"], spec["batch_size"]
    assert results["settings"]["full_length"] == length and results["settings"]["k"] == k
    assert list(runs) == ["esr", "full", "trl", "esr_teacher_4bit", "esr_fsdp2"]
    low, high = spec["prompt_tokens"]
    assert low <= results["settings"]["prompt_tokens"]["min"] <= results["settings"]["prompt_tokens"]["max"] <= high
    assert results["models"]["student"]["architecture"] == "qwen2" and results["models"]["teacher"]["head_dim"] == 16

    expected_lengths = {"esr": k, "full": length, "trl": k, "esr_teacher_4bit": k, "esr_fsdp2": k}
    for name, run in runs.items():
        if name == "esr_fsdp2" and "error" in run:  # FSDP2 may not run on this CPU: then the exact error is kept
            assert run["error"].strip() and "stderr_tail" in run
            continue
        assert "error" not in run, (name, run.get("error"), run.get("traceback"))
        # EOS suppressed: every training rollout of every step (warm-up + 1 measured) has exactly its cap
        assert run["rollout_lengths"] == [[expected_lengths[name]] * batch] * 2, name
        assert run["tokens_per_step"] == expected_lengths[name] * batch
        assert len(run["per_step"]) == 2
        for part in TIMINGS:
            assert run[part] > 0, (name, part)
        assert abs(run["training"] - (run["step"] - run["generation"])) < 1e-9
        assert run["peak_memory_mib"] > 0 and run["peak_memory_source"]
        assert run["trainable_parameters"] > 0
    assert runs["trl"]["trainer"] == "DistillationTrainer" and runs["esr"]["trainer"] == "ESRDistillTrainer"
    assert runs["esr_teacher_4bit"]["teacher_4bit_linear_layers"] == 7 * 2  # q, k, v, o, gate, up, down x 2 layers
    if "error" not in runs["esr_fsdp2"]:
        fsdp2 = runs["esr_fsdp2"]
        assert fsdp2["world_size"] == 1 and fsdp2["student_dtensor_parameters"] > 0
        assert fsdp2["dtensor_heads_gathered"] > 0  # our `_full_tensor` gathered sharded heads

    ratios = results["ratios"]
    assert ratios["ideal_token_ratio"] == length / k
    keys = ["full_over_esr_step", "full_over_esr_generation", "full_over_esr_training", "esr_over_full_peak_memory"]
    for key in [*keys, "esr_over_trl_step_minus_1", "esr_teacher_4bit_over_esr_step"]:
        assert isinstance(ratios[key], float), key
    assert results["paper"]["esr"]["step"] == 8.0 and results["paper"]["full"]["peak_memory_gb"] == 63.3
    report = (tmp_path / "results.md").read_text()
    assert "| ESR k=8 (`ESRDistillTrainer`) |" in report and "plain `trl.DistillationTrainer`" in report
