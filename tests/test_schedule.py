import pytest

from trl_esr import ESRConfig, esr_k_at_step


def config(**kwargs) -> ESRConfig:
    return ESRConfig(output_dir="unused", use_cpu=True, bf16=False, report_to=[], **kwargs)


def test_constant_schedule_is_esr_k_at_every_step():
    args = config(esr_k=64, esr_k_warmup_steps=10)  # warm-up is ignored by the constant schedule
    assert [esr_k_at_step(args, s) for s in (0, 5, 10, 1000)] == [64, 64, 64, 64]


def test_full_rollout_is_none():
    assert esr_k_at_step(config(esr_k=None), 7) is None


@pytest.mark.parametrize("start, end, warmup", [(16, 100, 10), (1, 7, 4), (5, 5, 3), (2, 200, 1)])
def test_linear_schedule_matches_formula(start, end, warmup):
    args = config(esr_k=end, esr_k_start=start, esr_k_warmup_steps=warmup, esr_k_schedule="linear")
    ks = [esr_k_at_step(args, s) for s in range(warmup + 3)]
    expected = [start + round((end - start) * min(s, warmup) / warmup) for s in range(warmup + 3)]
    assert ks == expected
    assert ks[0] == start and ks[warmup:] == [end] * 3
    assert ks == sorted(ks)  # never shrinks


def test_linear_without_warmup_is_constant():
    args = config(esr_k=50, esr_k_start=10, esr_k_schedule="linear", esr_k_warmup_steps=0)
    assert esr_k_at_step(args, 0) == 50
