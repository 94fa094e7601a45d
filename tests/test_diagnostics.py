"""Diagnostics for choosing k: the cumulative-KL-share rule on hand-made curves, per-position statistics checked
against a direct computation, aggregation over alive rollouts, and the teacher-decay probe."""

import copy
import math

import pytest
import torch

from trl_esr.demo.tiny_models import build_tiny_causal_lm
from trl_esr.diagnostics import (
    MeasurementSettings,
    PositionStats,
    boxed_answer_checker,
    recommend_k,
    run_diagnostics,
    score_completions,
    summarize,
    teacher_decay_probe,
)


# Expected k worked out by hand with threshold 0.45: the first k whose cumulative sum reaches 0.45 x total.
RULE_CASES = {
    # total 10, 0.45 x 10 = 4.5; cumulative 1, 2, 3, 4, 5 -> k = 5
    "flat": ([1.0] * 10, None, 5),
    # total 10, 4.5; cumulative 4, 6 -> k = 2
    "front-loaded": ([4.0, 2.0, 1.0, 1.0, 1.0, 1.0], None, 2),
    # total 10, 4.5; cumulative 0 (x8), 5 -> k = 9
    "back-loaded": ([0.0] * 8 + [5.0, 5.0], None, 9),
    # exactly on the threshold: total 20, 9.0; cumulative 3, 6, 9 -> k = 3 (not 4)
    "exact-threshold": ([3.0, 3.0, 3.0, 11.0], None, 3),
    # weights = mean x alive = 10, 10, 1, 1, 1, 1: total 24, 10.8; cumulative 10, 20 -> k = 2
    # (unweighted means would give total 6, 2.7 -> k = 3: the tail reached by one rollout counts once, not ten times)
    "alive-weighted": ([1.0] * 6, [10, 10, 1, 1, 1, 1], 2),
}


@pytest.mark.parametrize("case", RULE_CASES)
def test_recommend_k_on_hand_made_curves(case):
    kl, alive, expected = RULE_CASES[case]
    rec = recommend_k(kl, alive, threshold=0.45)
    assert rec.k == expected
    assert rec.cumulative_share[rec.k - 1] >= 0.45 - 1e-12
    assert rec.k == 1 or rec.cumulative_share[rec.k - 2] < 0.45
    assert rec.cumulative_share[-1] == pytest.approx(1.0)


def test_recommend_k_alive_weighting_differs_from_plain_means():
    assert recommend_k([1.0] * 6, threshold=0.45).k == 3


def test_recommend_k_refuses_an_all_zero_curve():
    rec = recommend_k([0.0] * 50, [4] * 50)
    assert rec.k is None and rec.cumulative_share == []
    assert "below the tolerance" in rec.reason


def test_recommend_k_refuses_float_noise_but_not_a_small_real_signal():
    noise = recommend_k([1e-7, -1e-8, 2e-7], [3, 3, 3])  # what a model scored against itself can give
    assert noise.k is None
    assert recommend_k([1e-2, 1e-3, 1e-3], [3, 3, 3]).k == 1


@pytest.mark.parametrize("threshold", [0.0, -0.1, 1.5])
def test_recommend_k_rejects_a_bad_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        recommend_k([1.0, 1.0], threshold=threshold)


def test_recommend_k_rejects_mismatched_alive_counts():
    with pytest.raises(ValueError, match="one count per position"):
        recommend_k([1.0, 1.0], [3])


@pytest.fixture(scope="module")
def llama_pair(tokenizer):
    """A tiny Llama student and a different tiny Llama teacher sharing the word-level vocabulary."""
    student = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32, seed=0).eval()
    teacher = build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=1).eval()
    return student, teacher


def test_score_completions_matches_a_direct_computation(llama_pair, tokenizer):
    """Score two rollouts in one padded batch (different prompt and completion lengths) and recompute the shorter-
    prompt one by hand, unpadded, from the definitions: the padding must change nothing."""
    student, teacher = llama_pair
    prompts = [[3, 10, 11, 12, 13, 4], [3, 20, 4]]
    completions = [[30, 31, 32], [33, 34, 35, 36, 1]]
    stats = score_completions(student, teacher, prompts, completions, tokenizer.pad_token_id, show_progress=False)

    assert stats.mask.tolist() == [[True, True, True, False, False], [True] * 5]
    assert stats.reverse_kl[0, 3:].eq(0).all()  # padding carries no KL

    ids = torch.tensor([prompts[1] + completions[1]])
    with torch.no_grad():
        student_logits = student(ids).logits[0, len(prompts[1]) - 1 : -1]  # (C, V): predicts each completion token
        teacher_logits = teacher(ids).logits[0, len(prompts[1]) - 1 : -1]  # (C, V)
    for t in range(5):
        p = torch.softmax(student_logits[t].double(), -1)  # student
        q = torch.softmax(teacher_logits[t].double(), -1)  # teacher
        kl = sum(p[v] * (math.log(p[v]) - math.log(q[v])) for v in range(p.numel()))
        assert stats.reverse_kl[1, t].item() == pytest.approx(kl.item(), rel=1e-4, abs=1e-7)
        assert stats.student_entropy[1, t].item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-4)
        assert stats.teacher_entropy[1, t].item() == pytest.approx(-(q * q.log()).sum().item(), rel=1e-4)
        assert stats.teacher_agrees[1, t].item() == float(q.argmax().item() == completions[1][t])
    assert stats.reverse_kl[1].gt(0).all()


def test_student_scored_against_itself_has_zero_kl_everywhere(llama_pair, tokenizer):
    student, _ = llama_pair
    prompts, completions = [[3, 10, 4], [3, 11, 12, 4]], [[20, 21, 22, 1], [23, 24]]
    stats = score_completions(student, student, prompts, completions, tokenizer.pad_token_id, show_progress=False)
    assert stats.reverse_kl.abs().max() < 1e-6
    assert recommend_k(summarize(stats).kl_mean, summarize(stats).alive).k is None


def test_summarize_uses_only_alive_rollouts():
    # Three rollouts of lengths 3, 2 and 1; padding positions hold garbage that must be ignored.
    kl = torch.tensor([[1.0, 2.0, 3.0], [3.0, 4.0, 99.0], [5.0, 99.0, 99.0]])
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    kl = kl * mask  # `score_completions` zeroes padding; `summarize` must also not count it
    stats = PositionStats(kl, kl * 2, kl * 3, mask.float(), mask)
    summary = summarize(stats, quantiles=(0.0, 0.5, 1.0))
    assert summary.alive == [3, 2, 1]
    assert summary.kl_mean == pytest.approx([3.0, 3.0, 3.0])  # (1+3+5)/3, (2+4)/2, 3/1
    assert summary.kl_quantiles["q0"] == pytest.approx([1.0, 2.0, 3.0])
    assert summary.kl_quantiles["q50"] == pytest.approx([3.0, 3.0, 3.0])
    assert summary.kl_quantiles["q100"] == pytest.approx([5.0, 4.0, 3.0])
    assert summary.student_entropy_mean == pytest.approx([6.0, 6.0, 6.0])
    assert summary.teacher_agreement == pytest.approx([1.0, 1.0, 1.0])


def test_boxed_answer_checker_normalises_and_reads_boxed_references():
    check = boxed_answer_checker("solution")
    row = {"solution": "Thus the answer is $\\boxed{\\left( 1, 2 \\right)}$."}
    assert check(row, "We get \\boxed{(1,2)}")
    assert not check(row, "We get \\boxed{(1,3)}")
    assert not check(row, "We get (1,2)")
    assert not check(row, "cut off \\boxed{(1,2")  # a response cut inside its box has no answer
    assert boxed_answer_checker()({"answer": " 7 "}, "first \\boxed{8}, finally \\boxed{ 7}")


def test_teacher_decay_probe_continues_from_student_prefixes(llama_pair, tokenizer):
    student, teacher = llama_pair
    prompts, completions = [[3, 10, 4], [3, 11, 12, 4]], [[20, 21, 22, 23, 24, 1], [25, 26, 1]]
    rows = [{"answer": "x"}, {"answer": "y"}]
    texts = []

    def checker(row, text):
        texts.append(text)
        return row["answer"] == "x"

    decay = teacher_decay_probe(teacher, tokenizer, rows, prompts, completions, [0, 4], checker, 8,
                                show_progress=False)  # fmt: skip
    assert decay.k_grid == [0, 4] and decay.num_prompts == [2, 2]
    assert decay.accuracy == [0.5, 0.5]
    assert decay.num_short == [0, 1]  # the second response has 2 tokens before EOS, fewer than 4
    assert texts[2].startswith("w14 w15 w16 w17")  # ids 20-23 are words w14-w17
    assert texts[3].startswith("w19 w20")
    assert all(len(text.split()) <= 8 for text in texts)  # prefix + continuation within max_completion_length
    with pytest.raises(ValueError, match="probe grid"):
        teacher_decay_probe(teacher, tokenizer, rows, prompts, completions, [8], checker, 8)


def test_run_diagnostics_measures_as_its_settings_say(llama_pair, tokenizer):
    student, teacher = llama_pair
    rows = [{"prompt": f"w{i} w{i + 1} w{i + 2}", "answer": f"w{i}"} for i in range(5)]
    settings = MeasurementSettings(max_completion_length=6, batch_size=2, seed=5, threshold=0.3, probe_k_grid=(0, 2))
    checked = []

    def checker(row, text):
        checked.append(row["answer"])
        return text.startswith(row["answer"])

    result = run_diagnostics(student, teacher, tokenizer, rows, settings, checker, show_progress=False)
    assert result.settings == {"num_prompts": 5, "max_completion_length": 6, "temperature": 0.7, "top_p": 0.95,
                               "batch_size": 2, "seed": 5, "threshold": 0.3, "probe_k_grid": [0, 2]}  # fmt: skip
    assert len(result.completion_ids) == 5 and all(1 <= len(ids) <= 6 for ids in result.completion_ids)
    assert result.decay.k_grid == [0, 2] and len(checked) == 10  # every row graded at both prefix lengths

    # The rule at the given threshold, by hand: weights mean x alive, the first k holding 30 % of their total
    weights = [kl * n for kl, n in zip(result.summary.kl_mean, result.summary.alive, strict=True)]
    cumulative = [sum(weights[: t + 1]) / sum(weights) for t in range(len(weights))]
    assert result.recommendation.k == next(t + 1 for t, share in enumerate(cumulative) if share >= 0.3)

    # The seed decides the rollouts: the same one repeats them, another samples others
    again = run_diagnostics(student, teacher, tokenizer, rows, settings, checker, show_progress=False)
    assert again.completion_ids == result.completion_ids and again.summary.kl_mean == result.summary.kl_mean
    other = MeasurementSettings(max_completion_length=6, batch_size=2, seed=6)
    assert run_diagnostics(student, teacher, tokenizer, rows, other, show_progress=False).completion_ids != (
        result.completion_ids
    )
    with pytest.raises(ValueError, match="needs a way to grade answers"):
        run_diagnostics(student, teacher, tokenizer, rows, settings, show_progress=False)


def with_generation_settings(model, **settings):
    """A copy of `model` whose `generation_config.json` would carry `settings` (as Qwen2.5-Instruct's carries
    `top_k=20`, `repetition_penalty=1.05`): `generate` applies them wherever a setting is left unset."""
    model = copy.deepcopy(model)
    for name, value in settings.items():
        setattr(model.generation_config, name, value)
    return model


def test_rollouts_sample_with_temperature_and_top_p_only_whatever_the_checkpoint_says(llama_pair, tokenizer):
    """The checkpoint's `top_k=1` (greedy in disguise) and repetition penalty are not applied: the rollouts are the
    ones a checkpoint without them samples with the same seed."""
    student, teacher = llama_pair
    rows = [{"prompt": f"w{i} w{i + 1} w{i + 2}"} for i in range(6)]
    settings = MeasurementSettings(max_completion_length=8, batch_size=3, seed=1, temperature=1.0, top_p=1.0)
    plain = run_diagnostics(student, teacher, tokenizer, rows, settings, show_progress=False).completion_ids
    opinionated = with_generation_settings(student, top_k=1, repetition_penalty=50.0, no_repeat_ngram_size=1)
    again = run_diagnostics(opinionated, teacher, tokenizer, rows, settings, show_progress=False)
    assert again.completion_ids == plain
    assert len({tuple(ids) for ids in plain}) > 1


def test_decay_probe_continues_greedily_without_the_teachers_repetition_penalty(llama_pair, tokenizer):
    """The probe's continuations are the teacher's argmax, one token at a time (computed here by hand), even when its
    generation config carries a repetition penalty that would forbid repeating a token."""
    _, teacher = llama_pair
    prompts, completions = [[3, 17, 4]], [[20, 21, 1]]
    texts = []
    opinionated = with_generation_settings(teacher, repetition_penalty=1e6, no_repeat_ngram_size=1)
    teacher_decay_probe(opinionated, tokenizer, [{"answer": "x"}], prompts, completions, [2], lambda row, text:
                        texts.append(text) or True, 8, show_progress=False)  # fmt: skip
    ids = [3, 17, 4, 20, 21]
    with torch.no_grad():
        for _ in range(6):
            ids.append(int(teacher(torch.tensor([ids])).logits[0, -1].argmax()))
            if ids[-1] == tokenizer.eos_token_id:
                break
    expected = tokenizer.decode(ids[3:], skip_special_tokens=True)
    assert texts == [expected]
    assert len(set(ids[3:])) < len(ids[3:])  # the argmax repeats a token: the penalty would have changed it
