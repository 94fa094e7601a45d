"""The paper-shape benchmark (`benchmarks/paper_shape.py`) at tiny shapes on CPU, through the one-shot device script
(`benchmarks/device/run_paper_shape.sh`, with this environment's packages instead of the carried wheels): the same
runs as on the GPU, each rollout exactly k or L tokens, and every figure in the JSON (no timing assertions)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.paper_shape import AUTO_CAPS, SHAPES, choose_full_length, main
from trl_esr.demo.tiny_models import build_word_tokenizer


ROOT = Path(__file__).parent.parent


TIMINGS = ("step", "generation", "training", "teacher_forward", "student_and_update")


def test_tiny_paper_shape_benchmark(tmp_path):
    """The device command itself, as `run` would start it but on CPU: `--full-length auto` under the budget (at tiny
    shapes no shorter cap exists, so L is the shape's own), then every figure checked."""
    env = {**os.environ, "INSTALL": "0", "PYTHON": sys.executable, "OUT": str(tmp_path), "BUDGET_S": "600"}
    script = ROOT / "benchmarks/device/run_paper_shape.sh"
    done = subprocess.run(["bash", str(script), "--shapes", "tiny", "--steps", "1"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "| cuda" in done.stdout and "== exit status 0" in done.stdout  # the versions line, then the benchmark
    for name in ("results.json", "results.md", "paper_shape.png", "log.txt"):
        assert (tmp_path / name).stat().st_size > 0, name
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["settings"]["full_length_choice"]["requested"] == "auto"
    assert results["settings"]["fsdp2_worker_import_wait_s"] >= 0  # timed runs start after the worker's imports

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
        assert run["trainable_parameters"] == lora_parameters(spec["student"][1], r=32), name
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


def lora_parameters(shape: dict, r: int) -> int:
    """LoRA's trainable parameters by hand: r x (in + out) for each of a Qwen2 layer's 7 projections."""
    hidden, inner = shape["hidden_size"], shape["intermediate_size"]
    head_dim = shape.get("head_dim", hidden // shape["num_attention_heads"])
    q, kv = shape["num_attention_heads"] * head_dim, shape["num_key_value_heads"] * head_dim
    shapes = [(hidden, q), (hidden, kv), (hidden, kv), (q, hidden), (hidden, inner), (hidden, inner), (inner, hidden)]
    return shape["num_hidden_layers"] * sum(r * (n_in + n_out) for n_in, n_out in shapes)


def test_auto_full_length_takes_the_longest_cap_predicted_to_fit():
    """`--full-length auto`: each cap's time predicted by hand from the ESR run's figures (set-up, then per step a
    decode step per token, x1.25 for the growing KV cache, and training scaled by L / k)."""
    esr = {"setup_s": 10.0, "generation_s_per_decode_step": 0.02, "training": 1.0}
    k, steps = 100, 2

    def by_hand(cap: int) -> float:
        return 10.0 + 3 * (1.25 * 0.02 * cap + 1.0 * cap / 100)

    assert by_hand(3584) > 300 >= by_hand(2560)  # 386.3 s and 278.8 s
    cap, choice = choose_full_length("auto", esr, k, steps, seconds=300, longest=3584)
    assert cap == 2560 and 3072 in choice["predicted_s"] and abs(choice["predicted_s"][2560] - by_hand(2560)) < 1e-9
    assert choose_full_length("auto", esr, k, steps, seconds=1e6, longest=3584)[0] == 3584  # the paper's cap fits
    assert choose_full_length("auto", esr, k, steps, seconds=1, longest=3584)[0] == min(AUTO_CAPS)  # nothing fits
    assert choose_full_length("auto", {"error": "x"}, k, steps, seconds=1e6, longest=3584)[0] == min(AUTO_CAPS)
    assert choose_full_length("1024", esr, k, steps, seconds=1, longest=3584) == (1024, {"requested": 1024})


# The paper's pair as the issue and the models' Hub configs give it (Qwen/Qwen2.5-Math-1.5B, Qwen/Qwen3-1.7B).
PAPER_STUDENT = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
                     intermediate_size=8960)  # fmt: skip
PAPER_TEACHER = dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
                     head_dim=128, intermediate_size=6144)  # fmt: skip


def test_the_paper_shapes_are_the_papers_models_on_gpu_and_on_cpu():
    """`paper` (the GPU run) and `paper-cpu` (its CPU check) build the same two models, the paper's, with its 151,936
    vocabulary: the CPU check differs only in batch, caps and device."""
    for shape in ("paper", "paper-cpu"):
        spec = SHAPES[shape]
        assert spec["student"][0].model_type == "qwen2" and spec["teacher"][0].model_type == "qwen3"
        assert PAPER_STUDENT.items() <= spec["student"][1].items()
        assert PAPER_TEACHER.items() <= spec["teacher"][1].items()
        assert spec["dtype"] == "bfloat16"
    assert lora_parameters(SHAPES["paper"]["student"][1], r=32) == 36_929_536  # what the CPU run trained (docs)
    vocabulary = build_word_tokenizer([f"w{i}" for i in range(SHAPES["paper-cpu"]["words"])])  # as build_models does
    assert len(vocabulary) == 151_936
    assert SHAPES["paper"]["device"] == "cuda" and SHAPES["paper-cpu"]["device"] == "cpu"
    assert (SHAPES["paper"]["batch_size"], SHAPES["paper"]["k"], SHAPES["paper"]["full_length"]) == (16, 100, 3584)


def test_the_gpu_shapes_without_a_gpu_name_the_cpu_ones(monkeypatch, tmp_path):
    """Asked for `--shapes paper` where no CUDA device is, the benchmark stops before building 3 B parameters and
    names the shapes that run on a CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="--shapes paper needs a CUDA GPU.*--shapes paper-cpu.*--shapes tiny"):
        main(["--shapes", "paper", "--output-dir", str(tmp_path)])
    assert not list(tmp_path.iterdir())  # nothing written
