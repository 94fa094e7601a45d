r"""`BoxedAccuracyCallback`: the `\boxed{}` scores of the student during training, equal to `trl-esr evaluate`'s on the
same weights; logged at its interval; training unchanged by it; a LoRA student; bad arguments refused. Its two-process
run (shares gathered in order) is in tests/test_distributed.py."""

import pytest
import torch
from conftest import trainable_snapshot
from datasets import Dataset
from peft import LoraConfig

from trl_esr import BoxedAccuracyCallback
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.inference import InferenceModelConfig
from trl_esr.scripts.evaluate_boxed import EvaluateArguments, evaluate


PROBLEMS = ["w1 w2", "w3 w4 w5", "w6", "w7 w8", "w9 w10 w11"]
ANSWERS = ["1", "2", "3", "4", "5"]
KEYS = ("boxed/avg@1", "boxed/pass@1", "boxed/no_box", "boxed/multi_box", "boxed/median_tokens",
        "boxed/mean_tokens", "boxed/truncated")  # fmt: skip


def logged(trainer, key="boxed/avg@1") -> list[tuple[int, dict]]:
    return [(e["step"], e) for e in trainer.state.log_history if key in e]


def test_scores_are_trl_esr_evaluates_on_the_same_weights(make_trainer, make_args, tokenizer, tmp_path):
    """Measured at steps 2 and 4 (logging every 3), the step-4 scores equal `trl-esr evaluate`'s (greedy, the same
    system prompt and cap) on the saved final student. A Llama student: its saved folder keeps the word tokenizer."""
    student = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=32, seed=3), tokenizer,
                              tmp_path / "student")  # fmt: skip
    trainer = make_trainer(make_args(max_steps=4, logging_steps=3), model=student)
    callback = BoxedAccuracyCallback(trainer, PROBLEMS, ANSWERS, every_n_steps=2, system_prompt="w12", batch_size=2)
    trainer.add_callback(callback)
    trainer.train()
    assert [step for step, _ in logged(trainer)] == [2, 4] and [step for step, _ in callback.history] == [2, 4]
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == [2, 3, 4]  # off the logging grid too
    assert trainer.model.training
    final = dict(logged(trainer))[4]
    assert {key: final[key] for key in KEYS} == {f"boxed/{k}": v for k, v in callback.history[-1][1].items()
                                                 if k not in ("n", "problems")}  # fmt: skip
    assert [len(rs) for rs in callback.responses] == [1] * 5  # greedy: one response per problem
    assert all(r.num_tokens <= trainer.args.max_completion_length for rs in callback.responses for r in rs)

    trainer.save_model(str(tmp_path / "final"))
    Dataset.from_dict({"problem": PROBLEMS, "answer": ANSWERS}).to_json(tmp_path / "math.jsonl")
    args = EvaluateArguments(dataset_name=str(tmp_path / "math.jsonl"), n=1, temperature=0, top_p=1.0,
                             max_new_tokens=trainer.args.max_completion_length, system_prompt="w12")  # fmt: skip
    expected = evaluate(args, InferenceModelConfig(model_name_or_path=str(tmp_path / "final"), dtype="float32"))
    assert callback.history[-1][1] == expected
    assert callback.history[0][1] != expected  # the step-2 student wrote otherwise: each measurement is current


def test_callback_leaves_training_unchanged(make_trainer, make_args):
    """Sampled measurements (T = 0.7) under a forked RNG: the same seed trains to the same weights without it."""
    runs = []
    for attach in (False, True):
        trainer = make_trainer(make_args(max_steps=2))
        if attach:
            trainer.add_callback(
                BoxedAccuracyCallback(trainer, PROBLEMS, ANSWERS, every_n_steps=1, n=2, temperature=0.7, top_p=0.95)
            )
        trainer.train()
        runs.append(trainer)
    without, with_callback = runs
    assert logged(without) == [] and [step for step, _ in logged(with_callback, "boxed/avg@2")] == [1, 2]
    for name, param in trainable_snapshot(without.model).items():
        assert torch.equal(param, with_callback.model.get_parameter(name)), name


def test_lora_student_sampled_with_the_same_seed_each_time(make_trainer, make_args):
    """A LoRA-wrapped student generates with its adapter; a measurement repeated on unchanged weights gives the same
    responses (the seed is reset each time), and the student goes back to train mode."""
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = make_trainer(make_args(max_steps=1), peft_config=lora)
    callback = BoxedAccuracyCallback(trainer, PROBLEMS, ANSWERS, every_n_steps=1, n=3, temperature=1.0, top_p=1.0)
    trainer.add_callback(callback)
    trainer.train()
    first = callback.responses
    trainer.model.train()
    assert callback.measure() == callback.history[-1][1] and callback.responses == first
    assert trainer.model.training
    assert len({r.text for rs in first for r in rs}) > 1  # sampled, not one greedy answer


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"every_n_steps": 0}, "`every_n_steps` must be a positive integer"),
        ({"n": 0}, "`n` must be a positive integer"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be a positive integer"),
        ({"answers": ANSWERS[:2]}, "one answer per problem"),
        ({"temperature": -1.0}, "`temperature` must be >= 0"),
        ({"top_p": 0.0}, "`top_p` in"),
        ({"answer_from": "middle"}, "`answer_from` must be"),
    ],
)
def test_rejects_bad_arguments(make_trainer, make_args, overrides, match):
    trainer = make_trainer(make_args())
    arguments = {"problems": PROBLEMS, "answers": ANSWERS, **overrides}
    with pytest.raises(ValueError, match=match):
        BoxedAccuracyCallback(trainer, **arguments)


def test_greedy_with_several_responses_is_refused(make_trainer, make_args):
    """Greedy decoding gives n identical responses (and HF `generate` refuses n > 1 greedy, at the first measurement):
    refused when the callback is built; sampling several stays allowed."""
    trainer = make_trainer(make_args())
    with pytest.raises(ValueError, match=r"`n` = 2 with `temperature` 0: .* Use `n=1`"):
        BoxedAccuracyCallback(trainer, PROBLEMS, ANSWERS, n=2)
    assert BoxedAccuracyCallback(trainer, PROBLEMS, ANSWERS, n=2, temperature=0.7).sampling[:2] == (2, 0.7)


def test_samples_ignore_the_students_generation_config(make_trainer, make_args):
    """A student whose generation config says `top_k = 1` is still sampled at the callback's temperature and top-p
    only: its responses at T = 1 differ from its greedy ones (with top_k = 1 inherited, they would all be greedy)."""
    trainer = make_trainer(make_args())
    trainer.model.generation_config.top_k = 1
    greedy = BoxedAccuracyCallback(trainer, PROBLEMS, ANSWERS, max_new_tokens=6)
    sampled = BoxedAccuracyCallback(trainer, PROBLEMS, ANSWERS, n=3, temperature=1.0, max_new_tokens=6)
    greedy.measure()
    sampled.measure()
    greedy_texts = [rs[0].text for rs in greedy.responses]
    assert all(
        {r.text for r in rs} != {text} for rs, text in zip(sampled.responses, greedy_texts, strict=True)
    )  # fmt: skip
