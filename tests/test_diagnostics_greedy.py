"""`esr_diagnostics_greedy`: the measurement's rollouts are the student's greedy continuations, scored as before.

Checked against an independent computation: greedy rollouts from `model.generate(do_sample=False)` and the reverse KL
written out with `log_softmax`, split at k by hand.
"""

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from trl_esr import ESRDistillTrainer
from trl_esr.demo.tiny_models import save_pretrained
from trl_esr.diagnostics import ESRDiagnosticsCallback


def _trainer(model_paths, tokenizer, train_dataset, args):
    return ESRDistillTrainer(
        model=model_paths["student"], teacher_model=model_paths["teacher"], args=args, train_dataset=train_dataset,
        processing_class=tokenizer,
    )  # fmt: skip


def _reference_kl_split(trainer, prompt_ids: list[list[int]], k: int) -> tuple[float, float]:
    """Greedy rollouts, then token-weighted mean KL(student || teacher) over positions < k and >= k."""
    student, teacher = trainer.model.eval(), trainer.teacher_model.eval()
    eos = trainer.processing_class.eos_token_id
    within, beyond = [], []
    for prompt in prompt_ids:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = student.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                max_new_tokens=trainer.args.max_completion_length, eos_token_id=eos, pad_token_id=eos,
            )[0]  # fmt: skip
            completion = out[len(prompt) :].tolist()
            if eos in completion:
                completion = completion[: completion.index(eos) + 1]  # EOS is scored too
            full = torch.tensor([prompt + completion])
            s = F.log_softmax(student(full).logits[0].float(), -1)
            t = F.log_softmax(teacher(full).logits[0].float(), -1)
        for position in range(len(completion)):
            row = len(prompt) - 1 + position  # the logits that predict response token `position`
            kl = (s[row].exp() * (s[row] - t[row])).sum().item()
            (within if position < k else beyond).append(kl)
    return sum(within) / len(within), sum(beyond) / len(beyond)


def test_greedy_measurement_matches_a_hand_computed_kl(model_paths, tokenizer, train_dataset, make_args):
    args = make_args(max_steps=1, esr_k=4, esr_diagnostics_steps=1, esr_diagnostics_num_rollouts=3,
                     esr_diagnostics_greedy=True, temperature=1.0, suppress_eos=False)  # fmt: skip
    trainer = _trainer(model_paths, tokenizer, train_dataset, args)
    diagnostics = next(c for c in trainer.callback_handler.callbacks if isinstance(c, ESRDiagnosticsCallback))
    assert diagnostics.greedy and diagnostics.batch_size == 3  # min(3 rollouts, max(8, per-device batch 2))
    within, beyond = _reference_kl_split(trainer, diagnostics.prompt_ids, k=4)
    stats = diagnostics.measure()
    mask = stats.mask
    positions = torch.arange(mask.size(1))
    got_within = (stats.reverse_kl * (mask & (positions < 4))).sum() / (mask & (positions < 4)).sum()
    got_beyond = (stats.reverse_kl * (mask & (positions >= 4))).sum() / (mask & (positions >= 4)).sum()
    assert abs(got_within.item() - within) < 1e-4 * max(1.0, within)
    assert abs(got_beyond.item() - beyond) < 1e-4 * max(1.0, beyond)


def test_greedy_measurements_repeat_exactly_and_ignore_the_seed(model_paths, tokenizer, train_dataset, make_args):
    args = make_args(max_steps=1, esr_k=4, esr_diagnostics_steps=1, esr_diagnostics_num_rollouts=3,
                     esr_diagnostics_greedy=True)  # fmt: skip
    trainer = _trainer(model_paths, tokenizer, train_dataset, args)
    greedy = [ESRDiagnosticsCallback(trainer, num_rollouts=3, seed=seed, greedy=True) for seed in (0, 0)]
    greedy[1].prompt_ids = greedy[0].prompt_ids  # same prompts, another sampling seed below
    greedy[1].seed = 123
    first, second = (callback.measure() for callback in greedy)
    assert torch.equal(first.mask, second.mask) and torch.allclose(first.reverse_kl, second.reverse_kl)
    sampled = [ESRDiagnosticsCallback(trainer, num_rollouts=3, seed=seed, greedy=False) for seed in (0, 0)]
    sampled[1].prompt_ids, sampled[1].seed = sampled[0].prompt_ids, 123
    a, b = (callback.measure() for callback in sampled)
    assert not (torch.equal(a.mask, b.mask) and torch.allclose(a.reverse_kl, b.reverse_kl))  # sampling differs


@pytest.mark.parametrize("generate_eos", ["model's list", "eos only"])
def test_measurement_rollouts_stop_on_a_second_eos_of_the_generation_config(
    generate_eos, model_paths, tokenizer, train_dataset, make_args, tmp_path
):
    """A student whose generation config lists a second EOS (as Llama-3-Instruct lists end-of-turn ids): TRL ends its
    rollouts at the first of either, and so do the measurement's, even when `generation_kwargs` gives `generate`
    the tokenizer's EOS only (TRL then still cuts at its list)."""
    eos = tokenizer.eos_token_id
    args = make_args(esr_diagnostics_steps=1, esr_diagnostics_greedy=True, max_completion_length=12)  # EOS suppressed
    prompt_ids = ESRDiagnosticsCallback(
        _trainer(model_paths, tokenizer, train_dataset, args), num_rollouts=4
    ).prompt_ids

    # The greedy continuations, never stopped (EOS suppressed as in `args`), by hand
    student = AutoModelForCausalLM.from_pretrained(model_paths["student"]).eval()
    continuations = []
    for prompt in prompt_ids:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            out = student.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=12,
                suppress_tokens=[eos], eos_token_id=eos, pad_token_id=eos,
            )[0]  # fmt: skip
        continuations.append(out[len(prompt) :].tolist())
    second_eos = continuations[0][2]  # a token the first rollout writes at its third position (or before)
    expected = [row.index(second_eos) + 1 if second_eos in row else 12 for row in continuations]
    assert expected[0] <= 3  # so the first rollout stops there

    student.generation_config.eos_token_id = [eos, second_eos]
    paths = {**model_paths, "student": save_pretrained(student, tokenizer, tmp_path / "two_eos")}
    if generate_eos == "eos only":
        args = make_args(esr_diagnostics_steps=1, esr_diagnostics_greedy=True, max_completion_length=12,
                         generation_kwargs={"suppress_tokens": [eos], "eos_token_id": eos})  # fmt: skip
    trainer = _trainer(paths, tokenizer, train_dataset, args)
    diagnostics = ESRDiagnosticsCallback(trainer, num_rollouts=4)
    assert diagnostics.prompt_ids == prompt_ids and diagnostics.greedy
    assert diagnostics.measure().mask.sum(dim=1).tolist() == expected
