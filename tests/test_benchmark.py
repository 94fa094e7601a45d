"""The benchmark's quick mode runs, writes its outputs and generates exactly k tokens per rollout (no timing)."""

import json

from benchmarks.step_time import main


def test_quick_benchmark(tmp_path):
    results = main(["--quick", "--output-dir", str(tmp_path), "--batch-size", "2"])
    for name in ("results.json", "results.md", "step_time_vs_k.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert json.loads((tmp_path / "results.json").read_text()) == results
    configs = results["sizes"]["tiny"]["configs"]
    assert list(configs) == ["full", "k=4", "k=8"]
    for name, k in (("full", 16), ("k=4", 4), ("k=8", 8)):  # EOS suppressed: every rollout is exactly k tokens
        assert configs[name]["max_completion_tokens"] == k and configs[name]["tokens_generated"] == 2 * k
        assert configs[name]["ideal_speedup"] == 16 / k
        assert configs[name]["step"] > 0 and configs[name]["generation"] > 0 and configs[name]["teacher_forward"] > 0
    overhead = results["sizes"]["tiny"]["overhead"]
    assert overhead["trl"]["max_completion_tokens"] == overhead["esr_token"]["max_completion_tokens"] == 4
    cross = results["sizes"]["tiny"]["cross_tokenizer"]  # a teacher with other token ids: the aligned path
    assert cross["max_completion_tokens"] == 4 and cross["alignment"] > 0 and 0 < cross["alignment_share"] < 1
    assert configs["k=4"]["alignment"] == 0
    assert "| k=4 |" in (tmp_path / "results.md").read_text()
