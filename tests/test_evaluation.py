r"""`trl_esr.evaluation` (`\boxed{}` extraction, answer normalisation, avg@n / pass@n, on hand-checked cases; the
generation helpers) and its command, `trl_esr/scripts/evaluate_boxed.py` (`trl-esr evaluate`)."""

import json

import pytest
from datasets import Dataset

from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.evaluation import (
    answers_match,
    boxed_answers,
    extract_answer,
    length_stats,
    normalize_answer,
    score_responses,
)
from trl_esr.inference import InferenceModelConfig
from trl_esr.scripts.evaluate_boxed import EvaluateArguments, evaluate, main


@pytest.mark.parametrize(
    "text, last, first",
    [
        (r"so $x = \boxed{\frac{1}{2}}$.", r"\frac{1}{2}", r"\frac{1}{2}"),
        (r"\boxed{\left\{ 1, \{2\} \right\}} done", r"\left\{ 1, \{2\} \right\}", r"\left\{ 1, \{2\} \right\}"),
        (r"first \boxed{3}, then \boxed{4}", "4", "3"),
        (r"\boxed {7} and \fbox{8}", "8", "7"),
        ("the answer is 5", None, None),
        (r"unclosed \boxed{5", None, None),
        (r"\boxed{}", "", ""),
    ],
)
def test_extract_answer(text, last, first):
    assert extract_answer(text) == last
    assert extract_answer(text, answer_from="first") == first


def test_boxed_answers_keeps_every_box_in_order():
    assert boxed_answers(r"\boxed{a^{2}} x \boxed{\sqrt{b}}") == ["a^{2}", r"\sqrt{b}"]


@pytest.mark.parametrize(
    "raw, normalised",
    [
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"\dfrac{3}{4}", r"\frac{3}{4}"),
        (r"\tfrac12", r"\frac{1}{2}"),
        (r"\frac{1}2", r"\frac{1}{2}"),
        (r"$90^\circ$", "90"),
        (r"90^{\circ}", "90"),
        (r"\text{(B)}", "(B)"),
        (r"5 \text{ cm}", "5"),
        (r"10\%", "10"),
        ("42.", "42"),
        (r"x = 3", "3"),
        (r"\!1,\!000", "1000"),
        (r"\sqrt2", r"\sqrt{2}"),
        (".5", "0.5"),
        (r"\mathrm{Friday}", "Friday"),
    ],
)
def test_normalize_answer(raw, normalised):
    assert normalize_answer(raw) == normalised


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        (r"\frac{1}{2}", "0.5", True),
        ("1/2", r"\dfrac{1}{2}", True),
        ("-0.25", r"-\frac14", True),
        ("3.0", "3", True),
        ("1,000", "1000", True),
        ("(1,2)", "(1, 2)", True),
        (r"\sqrt{8}", r"2\sqrt{2}", False),  # a string check, not a symbolic one
        ("1/0", "0", False),
        ("4", "5", False),
        (None, "5", False),  # no box
    ],
)
def test_answers_match(prediction, reference, expected):
    assert answers_match(prediction, reference) is expected


def test_avg_and_pass_at_n_on_a_hand_made_table():
    # problem 1: 2 of 4 right; problem 2: 0 of 4 (one without a box); problem 3: 4 of 4 (formats differ)
    responses = [
        [r"\boxed{2}", r"\boxed{3}", r"so \boxed{1} no, \boxed{2}", r"\boxed{22}"],
        [r"\boxed{1}", "no box", r"\boxed{0}", r"\boxed{-7}"],
        [r"\boxed{\frac12}", r"\boxed{0.5}", r"\boxed{\dfrac{1}{2}}", r"\boxed{1/2}"],
    ]
    scores = score_responses(responses, ["2", "7", r"\frac{1}{2}"])
    assert scores["correct"] == [[True, False, True, False], [False] * 4, [True] * 4]
    assert scores["avg@4"] == pytest.approx(100 * 6 / 12)
    assert scores["pass@4"] == pytest.approx(100 * 2 / 3)
    assert scores["no_box"] == pytest.approx(100 * 1 / 12)
    assert scores["multi_box"] == pytest.approx(100 * 1 / 12)  # "so \boxed{1} no, \boxed{2}"
    # reading the first box instead changes the third response of problem 1
    assert score_responses(responses, ["2", "7", r"\frac{1}{2}"], answer_from="first")["avg@4"] == pytest.approx(
        100 * 5 / 12
    )


def test_score_responses_rejects_ragged_input():
    with pytest.raises(ValueError, match="same"):
        score_responses([["a"], ["b", "c"]], ["1", "2"])
    with pytest.raises(ValueError, match="one per problem"):
        score_responses([["a"]], ["1", "2"])


def test_scores_a_responses_file(tmp_path):
    rows = [{"answer": "4", "responses": [r"\boxed{4}", r"\boxed{5}"]}, {"answer": "1", "responses": ["?", "?"]}]
    path = tmp_path / "responses.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    out = tmp_path / "scored.jsonl"
    scores = evaluate(EvaluateArguments(responses_file=str(path), output_file=str(out)), InferenceModelConfig())
    assert scores == {"n": 2, "problems": 2, "avg@2": 25.0, "pass@2": 50.0, "no_box": 50.0, "multi_box": 0.0}
    assert [json.loads(line)["extracted"] for line in out.read_text().splitlines()] == [["4", "5"], [None, None]]


def test_length_stats_by_hand():
    stats = length_stats([[3, 10], [7, 10]], [[False, True], [False, True]])
    assert stats == {"median_tokens": 8.5, "mean_tokens": 7.5, "truncated": 50.0}
    with pytest.raises(ValueError, match="one per response"):
        length_stats([[3, 10]], [[False]])


def test_a_saved_file_with_lengths_is_scored_with_them(tmp_path):
    """`--output_file` keeps each response's length and truncation flag, and rescoring the file reads them back."""
    rows = [
        {"answer": "4", "responses": [r"\boxed{4} \boxed{4}", "x"], "num_tokens": [5, 9], "truncated": [False, True]},
        {"answer": "1", "responses": [r"\boxed{1}", "y"], "num_tokens": [2, 9], "truncated": [False, True]},
    ]
    path = tmp_path / "responses.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    out = tmp_path / "rescored.jsonl"
    scores = evaluate(EvaluateArguments(responses_file=str(path), output_file=str(out)), InferenceModelConfig())
    assert (scores["multi_box"], scores["median_tokens"], scores["mean_tokens"], scores["truncated"]) == (
        25.0, 7.0, 6.25, 50.0,
    )  # fmt: skip
    assert [json.loads(line)["num_tokens"] for line in out.read_text().splitlines()] == [[5, 9], [2, 9]]
    rows[1].pop("truncated")  # one row without them (written by hand, or before they were kept): no lengths at all
    path.write_text("\n".join(json.dumps(row) for row in rows))
    assert "median_tokens" not in evaluate(EvaluateArguments(responses_file=str(path)), InferenceModelConfig())


def test_generates_with_a_tiny_model(tokenizer, tmp_path):
    """End to end with HF generate on a local model and dataset: n responses per problem, scores in range."""
    model_path = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=32), tokenizer, tmp_path / "m")
    Dataset.from_dict({"problem": ["w1 w2", "w3 w4 w5"], "answer": ["w1", "w2"]}).to_json(tmp_path / "data/test.jsonl")
    out = tmp_path / "samples.jsonl"
    args = EvaluateArguments(dataset_name=str(tmp_path / "data"), n=3, max_new_tokens=5, system_prompt="be brief",
                             output_file=str(out))  # fmt: skip
    scores = evaluate(args, InferenceModelConfig(model_name_or_path=model_path, dtype="float32"))
    assert scores["n"] == 3 and scores["problems"] == 2 and 0 <= scores["avg@3"] <= scores["pass@3"] <= 100
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [len(row["responses"]) for row in rows] == [3, 3]
    # the printed lengths are the rows'; a response has at least as many tokens as words (special tokens sampled at
    # T = 0.7 are not written), and only one with all 5 is cut (EOS at the 5th leaves 4)
    lengths = [n for row in rows for n in row["num_tokens"]]
    assert all(n >= len(r.split()) for row in rows for n, r in zip(row["num_tokens"], row["responses"], strict=True))
    assert [t for row in rows for t in row["truncated"]] == [n == 5 for n in lengths]
    assert scores["mean_tokens"] == pytest.approx(sum(lengths) / 6)
    assert scores["truncated"] == pytest.approx(100 * sum(n == 5 for n in lengths) / 6)


# Issue 13: no finished work is discarded. Each batch's rows reach `--output_file` when the batch is done; a crash or
# Ctrl-C says where they are and how many.


@pytest.fixture
def three_problems(tokenizer, tmp_path):
    model = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=32), tokenizer, tmp_path / "m")
    data = tmp_path / "math.jsonl"
    Dataset.from_dict({"problem": ["w1 w2", "w3 w4", "w5 w6"], "answer": ["w1", "w2", "w3"]}).to_json(data)
    options = {"model_name_or_path": model, "dataset_name": str(data), "n": 2, "max_new_tokens": 3, "batch_size": 1,
               "dtype": "float32"}  # fmt: skip
    return lambda **overrides: [
        item for name, value in {**options, **overrides}.items() for item in (f"--{name}", str(value))
    ]


def read_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def generate_failing_at_batch(monkeypatch, batch: int, error: BaseException) -> None:
    import trl_esr.inference as inference

    load_causal_lm = inference.load_causal_lm

    def load(*args, **kwargs):
        model = load_causal_lm(*args, **kwargs)
        generate, calls = model.generate, []

        def failing(*generate_args, **generate_kwargs):
            calls.append(1)
            if len(calls) == batch:
                raise error
            return generate(*generate_args, **generate_kwargs)

        model.generate = failing
        return model

    monkeypatch.setattr(inference, "load_causal_lm", load)


def test_a_crash_mid_generation_keeps_the_finished_problems(three_problems, tmp_path, monkeypatch, capsys):
    full, partial = tmp_path / "full.jsonl", tmp_path / "partial.jsonl"
    assert main(three_problems(output_file=full)) == 0
    capsys.readouterr()
    generate_failing_at_batch(monkeypatch, 2, RuntimeError("CUDA out of memory (injected)"))
    assert main(three_problems(output_file=partial)) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: CUDA out of memory (injected)" in err  # the traceback of a real crash is kept
    assert err.strip().splitlines()[-1] == (
        f"evaluate_boxed: failed (RuntimeError). The responses to 1 of 3 problems are in {partial}: score them with "
        f"`--responses_file {partial}`."
    )
    assert read_rows(partial) == read_rows(full)[:1]  # the first batch, as the uninterrupted run wrote it
    assert main(["--responses_file", str(partial)]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == 1


def test_ctrl_c_without_output_file_saves_the_finished_problems(three_problems, tmp_path, monkeypatch, capsys):
    import tempfile

    full = tmp_path / "full.jsonl"
    assert main(three_problems(output_file=full)) == 0
    capsys.readouterr()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    generate_failing_at_batch(monkeypatch, 3, KeyboardInterrupt())
    assert main(three_problems()) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err
    [saved] = (tmp_path / "tmp").iterdir()
    assert err.strip().splitlines()[-1] == (
        f"evaluate_boxed: interrupted. The responses to 2 of 3 problems are in {saved}: score them with "
        f"`--responses_file {saved}`."
    )
    assert read_rows(saved) == read_rows(full)[:2]


# Rendering and padding go through `trl_esr.prompts`, as the trainer's do.


def test_chat_prompts_render_the_system_prompt_and_the_problem(tokenizer):
    from trl_esr.evaluation import chat_prompts

    assert chat_prompts(tokenizer, ["w1 w2", "w3"], "w9") == [
        "<|system|> w9 <eos> <|user|> w1 w2 <eos> <|assistant|>",
        "<|system|> w9 <eos> <|user|> w3 <eos> <|assistant|>",
    ]
    assert chat_prompts(tokenizer, ["w1"], None) == ["<|user|> w1 <eos> <|assistant|>"]


def test_batched_greedy_generation_matches_one_prompt_at_a_time(tokenizer):
    """Prompts of different lengths in one batch, left-padded (with EOS as the pad of a tokenizer that has none):
    each greedy response is the one its prompt gets alone, unpadded."""
    import copy

    import torch

    from trl_esr.evaluation import chat_prompts, generate_hf

    model = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32).eval()
    prompts = chat_prompts(tokenizer, ["w1", "w2 w3 w4 w5 w6", "w7 w8"], None)
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    batched = generate_hf(model, no_pad, prompts, n=1, temperature=0, top_p=1, max_new_tokens=4, batch_size=3)
    alone = []
    for prompt in prompts:
        ids = torch.tensor([tokenizer.convert_tokens_to_ids(prompt.split())])
        output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False,
                                pad_token_id=tokenizer.eos_token_id)  # fmt: skip
        alone.append([tokenizer.decode(output[0, ids.shape[1] :], skip_special_tokens=True)])
    assert [[r.text for r in rs] for rs in batched] == alone
    assert all(r.num_tokens == 4 and r.truncated for rs in batched for r in rs)  # this random model writes no EOS


def test_response_lengths_stop_before_the_first_eos_of_the_generation_config(tokenizer):
    """A response's `num_tokens` counts the tokens before the first EOS of the model's generation config (a list,
    as Llama-3-Instruct's), and only a response without one is `truncated`: checked against the words of responses
    generated without that EOS (greedy, so they share the prefix up to it)."""
    from trl_esr.evaluation import chat_prompts, generate_hf

    model = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32).eval()
    prompts = chat_prompts(tokenizer, ["w1", "w2 w3 w4 w5 w6", "w7 w8", "w9 w1 w1"], None)
    free = [rs[0].text.split() for rs in generate_hf(model, tokenizer, prompts, 1, 0, 1.0, 8, batch_size=4)]
    assert all(len(words) == 8 for words in free)  # no EOS in 8 tokens
    stop = free[0][3]  # a word the first response writes at its 4th token: it ends there, others maybe elsewhere
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids(stop)]
    stopped = [rs[0] for rs in generate_hf(model, tokenizer, prompts, 1, 0, 1.0, 8, batch_size=4)]
    expected = [words.index(stop) if stop in words else 8 for words in free]
    assert [r.num_tokens for r in stopped] == expected and expected[0] <= 3
    assert [r.truncated for r in stopped] == [stop not in words for words in free]


# The command: `trl-esr evaluate`, TRL-shaped (`EvaluateArguments` + TRL's `ModelConfig`, parsed by `TrlParser`).


def test_trl_esr_evaluate_scores_a_responses_file(tmp_path, capsys):
    from trl_esr.cli import main as trl_esr_main

    path = tmp_path / "responses.jsonl"
    path.write_text(json.dumps({"answer": r"\frac{1}{2}", "responses": [r"\boxed{0.5}", r"\boxed{2}", "none"]}) + "\n")
    assert trl_esr_main(["evaluate", "--responses_file", str(path)]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["avg@3"] == scores["no_box"] == pytest.approx(100 / 3) and scores["pass@3"] == 100


def test_model_options_are_trls_model_config(tmp_path, capsys):
    from trl import ModelConfig

    from trl_esr.scripts.evaluate_boxed import make_parser

    script_args, model_args = make_parser().parse_args_and_config(
        args=["--model_name_or_path", "m", "--model_revision", "v2", "--attn_implementation", "eager", "--n", "2"]
    )
    assert isinstance(model_args, ModelConfig) and script_args.n == 2
    assert (model_args.model_name_or_path, model_args.model_revision, model_args.dtype) == ("m", "v2", "auto")
    assert main(["--model_name_or_path", "m", "--load_in_4bit", "--load_in_8bit"]) == 2  # ModelConfig's own check
    assert "evaluate_boxed: error: You can't use 8 bit and 4 bit precision" in capsys.readouterr().err


def test_evaluate_help_lists_its_options():
    """Its own options and the model loader's; that `--help` imports nothing heavy is tests/test_hardening.py's."""
    import subprocess
    import sys

    code = "import sys; from trl_esr.cli import main; sys.exit(main(['evaluate', '--help']))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--model_name_or_path" in result.stdout and "--responses_file" in result.stdout


# Review fixes: options refused before the model loads, chat-template arguments, answers and sampling.


def model_folder(tokenizer, path, chat_template: str | None = "unchanged") -> str:
    """A tiny Llama model saved with a copy of `tokenizer` whose chat template is `chat_template` (None: none)."""
    import copy

    tokenizer = copy.deepcopy(tokenizer)
    if chat_template != "unchanged":
        tokenizer.chat_template = chat_template
    return save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=32), tokenizer, path)


def forbid_loading_the_model(monkeypatch) -> list:
    """Make loading the model fail the test; returns the list of attempts."""
    import trl_esr.inference as inference

    attempts = []
    monkeypatch.setattr(inference, "load_causal_lm", lambda *args, **kwargs: attempts.append(args) or 1 / 0)
    return attempts


def test_greedy_with_several_responses_is_refused_before_the_model_loads(three_problems, monkeypatch, capsys):
    """HF `generate` refuses `num_return_sequences` > 1 when greedy; the command says so before loading anything."""
    import trl_esr.inference as inference

    load_causal_lm = inference.load_causal_lm
    attempts = forbid_loading_the_model(monkeypatch)
    assert main(three_problems(temperature=0)) == 2  # n = 2
    err = capsys.readouterr().err.strip().splitlines()
    assert attempts == [] and len(err) == 1
    assert "`--n` 2 with `--temperature` 0" in err[0] and "Use `--n 1`" in err[0]
    monkeypatch.setattr(inference, "load_causal_lm", load_causal_lm)
    assert main(three_problems(temperature=0, n=1)) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 1


THINKING_TEMPLATE = (  # Qwen3's switch, in the word tokenizer's format: `w39` marks the non-thinking prompt
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% if enable_thinking is defined and not enable_thinking %} w39"
    "{% endif %}{% endif %}"
)


def test_chat_template_kwargs_reach_the_template(tokenizer, tmp_path, monkeypatch, capsys):
    """`--chat_template_kwargs` (JSON, as TRL's option) renders the prompts the model sees as the template renders
    them with those arguments; a YAML `--config` gives the mapping itself; malformed JSON is one line, exit 2."""
    import copy

    from trl_esr.scripts import evaluate_boxed

    model = model_folder(tokenizer, tmp_path / "m", THINKING_TEMPLATE)
    data = tmp_path / "math.jsonl"
    Dataset.from_dict({"problem": ["w1 w2", "w3"], "answer": ["w1", "w2"]}).to_json(data)
    seen, generate_hf = [], evaluate_boxed.generate_hf
    monkeypatch.setattr(evaluate_boxed, "generate_hf", lambda m, t, prompts, *a, **k: seen.append(prompts)
                        or generate_hf(m, t, prompts, *a, **k))  # fmt: skip
    argv = ["--model_name_or_path", model, "--dataset_name", str(data), "--n", "1", "--temperature", "0",
            "--max_new_tokens", "2", "--system_prompt", "w9"]  # fmt: skip
    assert main([*argv, "--chat_template_kwargs", '{"enable_thinking": false}']) == 0
    assert main(argv) == 0
    thinking = copy.deepcopy(tokenizer)
    thinking.chat_template = THINKING_TEMPLATE
    expected = [
        thinking.apply_chat_template([[{"role": "system", "content": "w9"}, {"role": "user", "content": p}]
                                      for p in ("w1 w2", "w3")], add_generation_prompt=True, tokenize=False, **kwargs)
        for kwargs in ({"enable_thinking": False}, {})
    ]  # fmt: skip
    assert seen == expected and all(p.endswith("<|assistant|> w39") for p in seen[0]) and "w39" not in seen[1][0]

    config = tmp_path / "evaluate.yaml"
    config.write_text("chat_template_kwargs:\n  enable_thinking: false\n")
    script_args, _ = evaluate_boxed.make_parser().parse_args_and_config(args=["--config", str(config)])
    assert script_args.chat_template_kwargs == {"enable_thinking": False}
    capsys.readouterr()
    for bad in ("{enable_thinking: false}", '["enable_thinking"]'):
        assert main([*argv, "--chat_template_kwargs", bad]) == 2
        [line] = capsys.readouterr().err.strip().splitlines()
        assert line.startswith("evaluate_boxed: error: `--chat_template_kwargs`") and "JSON" in line


def test_an_escaped_dollar_is_removed_whole():
    r"""`\$` goes before `$`: removing `$` first left `\$18.90` as `\18.90`, which matched nothing."""
    assert normalize_answer(r"\$18.90") == "18.90" and normalize_answer(r"$\$5$") == "5"
    assert answers_match(r"\$18.90", "18.90") and answers_match(r"\$1.50", "1.5")


def test_a_responses_file_with_numeric_answers(tmp_path):
    """JSON numbers as answers (`{"answer": 5}`) are read as `load_problems` reads a dataset's: as strings."""
    rows = [
        {"answer": 5, "responses": [r"\boxed{5}", r"\boxed{6}"]},
        {"answer": 0.5, "responses": [r"\boxed{\frac12}", "x"]},
    ]
    path, out = tmp_path / "responses.jsonl", tmp_path / "scored.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in rows))
    scores = evaluate(EvaluateArguments(responses_file=str(path), output_file=str(out)), InferenceModelConfig())
    assert (scores["avg@2"], scores["pass@2"]) == (50.0, 100.0)
    saved = [(row["answer"], row["correct"]) for row in read_rows(out)]
    assert saved == [("5", [True, False]), ("0.5", [True, False])]


GEMMA2_SYSTEM_CHECK = (  # Gemma-2-it's template refuses a system turn
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
)


def test_a_prompt_the_template_refuses_fails_before_the_model_loads(tokenizer, tmp_path, monkeypatch, capsys):
    """A template that refuses the system message (Gemma-2's), or no template at all: one line naming
    `--system_prompt`, exit 2, and the model never loads; `--system_prompt ""` then evaluates."""
    import trl_esr.inference as inference

    gemma_like = model_folder(tokenizer, tmp_path / "gemma_like", GEMMA2_SYSTEM_CHECK + tokenizer.chat_template)
    no_template = model_folder(tokenizer, tmp_path / "base", None)
    data = tmp_path / "math.jsonl"
    Dataset.from_dict({"problem": ["w1 w2"], "answer": ["w1"]}).to_json(data)
    argv = ["--dataset_name", str(data), "--n", "1", "--temperature", "0", "--max_new_tokens", "2"]
    load_causal_lm = inference.load_causal_lm
    attempts = forbid_loading_the_model(monkeypatch)
    for model, reason, fix in ((gemma_like, "System role not supported", 'set `--system_prompt ""`'),
                               (no_template, "has no chat template", "after `--system_prompt`")):  # fmt: skip
        assert main(["--model_name_or_path", model, *argv]) == 2
        err = capsys.readouterr().err  # the dataset's progress bars, then the error: one line, no traceback
        line = err.strip().splitlines()[-1]
        assert "Traceback" not in err and line.startswith("evaluate_boxed: error: The ")
        assert reason in line and fix in line
    assert attempts == []
    monkeypatch.setattr(inference, "load_causal_lm", load_causal_lm)
    assert main(["--model_name_or_path", gemma_like, *argv, "--system_prompt", ""]) == 0
    assert json.loads(capsys.readouterr().out)["problems"] == 1


def test_sampling_ignores_the_checkpoints_generation_config(tokenizer):
    """A checkpoint's `generation_config.top_k = 1` would make every sample the greedy response: `generate_hf` samples
    with temperature and top-p only, so the samples at T = 1 differ from it (and from each other)."""
    import torch

    from trl_esr.evaluation import chat_prompts, generate_hf

    model = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32).eval()
    model.generation_config.top_k = 1
    prompts = chat_prompts(tokenizer, ["w1 w2", "w3"], None)
    greedy = [rs[0].text for rs in generate_hf(model, tokenizer, prompts, 1, 0, 1.0, 6)]
    torch.manual_seed(0)
    sampled = [[r.text for r in rs] for rs in generate_hf(model, tokenizer, prompts, 4, 1.0, 1.0, 6)]
    assert all(len(set(texts)) > 1 and set(texts) != {g} for texts, g in zip(sampled, greedy, strict=True))
    assert model.generation_config.top_k == 1  # the model's own config is left as it was
