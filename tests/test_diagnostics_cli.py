"""`trl-esr suggest-k` end to end on tiny local Llama models, offline: outputs, determinism, exit codes."""

import json

import pytest
import yaml
from conftest import WORDS

from trl_esr.cli import main as trl_esr_main
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.diagnostics.cli import EXIT_BAD_INPUT, EXIT_NO_RECOMMENDATION, EXIT_RECOMMENDED, main


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def llama_paths(tmp_path_factory, tokenizer):
    """Llama folders load by path with `AutoTokenizer` (Qwen2 ones would swap in a BPE tokenizer)."""
    root = tmp_path_factory.mktemp("llama")
    student = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32, seed=0)
    teacher = build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=1)
    return {
        "student": save_pretrained(student, tokenizer, root / "student"),
        "teacher": save_pretrained(teacher, tokenizer, root / "teacher"),
    }


@pytest.fixture(scope="module")
def dataset_file(tmp_path_factory):
    """Conversational rows whose final assistant turn (the reference) must be dropped, with a boxed answer column."""
    path = tmp_path_factory.mktemp("data") / "prompts.jsonl"
    rows = [
        {
            "messages": [
                {"role": "user", "content": " ".join(WORDS[i : i + 4])},
                {"role": "assistant", "content": WORDS[i + 5]},
            ],
            "answer": f"\\boxed{{{WORDS[i + 5]}}}",
        }
        for i in range(8)
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def command(paths, dataset_file, output_dir, **overrides) -> list[str]:
    options = {
        "model_name_or_path": paths["student"],
        "teacher_model_name_or_path": paths["teacher"],
        "dataset_files": dataset_file,
        "num_prompts": 6,
        "max_completion_length": 12,
        "batch_size": 4,
        "seed": 3,
        "dtype": "float32",
        "output_dir": str(output_dir),
        **overrides,
    }
    argv = []
    for name, value in options.items():
        argv += [f"--{name}", *map(str, value if isinstance(value, list) else [value])]
    return argv


def test_suggest_k_writes_report_and_is_deterministic(llama_paths, dataset_file, tmp_path, capsys):
    argv = command(llama_paths, dataset_file, tmp_path / "a", probe_k_grid=[0, 4])
    assert trl_esr_main(["suggest-k", *argv]) == EXIT_RECOMMENDED  # through the `trl-esr` dispatcher
    assert "Recommended k =" in capsys.readouterr().out

    # The same run from a YAML config file, as TRL scripts accept it.
    config = {"model_name_or_path": llama_paths["student"], "teacher_model_name_or_path": llama_paths["teacher"],
              "dataset_files": [dataset_file], "num_prompts": 6, "max_completion_length": 12, "batch_size": 4,
              "seed": 3, "dtype": "float32", "output_dir": str(tmp_path / "b"), "probe_k_grid": [0, 4]}  # fmt: skip
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["--config", str(tmp_path / "config.yaml")]) == EXIT_RECOMMENDED

    first, second = (json.loads((tmp_path / run / "diagnostics.json").read_text()) for run in ("a", "b"))
    for section in ("per_position", "recommendation", "teacher_decay", "key_numbers"):
        assert first[section] == second[section], section

    per_position = first["per_position"]
    assert per_position["alive"][0] == 6 and len(per_position["kl_mean"]) <= 12
    assert set(per_position["kl_quantiles"]) == {"q10", "q50", "q90"}
    assert all(kl > 0 for kl in per_position["kl_mean"])
    rec = first["recommendation"]
    assert 1 <= rec["k"] <= len(per_position["kl_mean"])
    assert rec["cumulative_share"][rec["k"] - 1] >= 0.45
    assert first["teacher_decay"]["k_grid"] == [0, 4] and first["teacher_decay"]["num_prompts"] == [6, 6]
    for name in ("kl_per_position.png", "cumulative_kl_share.png", "teacher_decay.png"):
        assert (tmp_path / "a" / name).read_bytes().startswith(PNG_SIGNATURE), name
    assert f"Recommended k = {rec['k']}" in (tmp_path / "a" / "diagnostics.md").read_text()

    # A different seed samples different rollouts.
    assert main(command(llama_paths, dataset_file, tmp_path / "c", seed=4)) == EXIT_RECOMMENDED
    third = json.loads((tmp_path / "c" / "diagnostics.json").read_text())
    assert third["per_position"]["kl_mean"] != first["per_position"]["kl_mean"]


def test_suggest_k_with_teacher_equal_to_student_recommends_nothing(llama_paths, dataset_file, tmp_path, capsys):
    paths = {"student": llama_paths["student"], "teacher": llama_paths["student"]}
    assert main(command(paths, dataset_file, tmp_path)) == EXIT_NO_RECOMMENDATION
    assert "No k can be recommended" in capsys.readouterr().out
    report = json.loads((tmp_path / "diagnostics.json").read_text())
    assert report["recommendation"]["k"] is None
    assert max(abs(kl) for kl in report["per_position"]["kl_mean"]) < 1e-6
    assert (tmp_path / "kl_per_position.png").read_bytes().startswith(PNG_SIGNATURE)
    assert not (tmp_path / "cumulative_kl_share.png").exists()  # nothing to mark a k on


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"dataset_files": "missing.jsonl"}, "not found"),
        ({"dataset_name": "some/hub-set"}, "exactly one of"),
        ({"threshold": 1.5}, "threshold"),
        ({"probe_k_grid": [0, 12]}, "probe_k_grid"),
        ({"probe_k_grid": [2], "answer_column": "solution"}, "answer_column"),
        ({"teacher_model_name_or_path": "/nonexistent/teacher"}, "teacher"),
    ],
)
def test_suggest_k_bad_input_exits_2(llama_paths, dataset_file, tmp_path, capsys, overrides, message):
    assert main(command(llama_paths, dataset_file, tmp_path, **overrides)) == EXIT_BAD_INPUT
    assert message in capsys.readouterr().err
    assert not (tmp_path / "diagnostics.json").exists()


def test_suggest_k_unknown_argument_exits_2(capsys):
    assert main(["--no_such_option", "1"]) == EXIT_BAD_INPUT


# Hardening (issue 13): no crash after the rollouts, inputs checked before any model loads, caveats in the report.


def synthetic_result(kl_mean, alive):
    from trl_esr.diagnostics import DiagnosticsResult, PositionSummary, recommend_k

    n = len(kl_mean)
    summary = PositionSummary(alive, kl_mean, {"q10": kl_mean, "q90": kl_mean}, [0.0] * n, [0.0] * n, [1.0] * n)
    completions = [[0] * sum(a > i for a in alive) for i in range(max(alive, default=0))]
    return DiagnosticsResult({}, summary, recommend_k(kl_mean, alive, 0.45), completion_ids=completions)


def test_key_numbers_when_k_is_the_last_position():
    """Two positions, all the KL on the last: k = 2 leaves nothing beyond it (was a ZeroDivisionError)."""
    from trl_esr.diagnostics.report import caveats, key_numbers

    result = synthetic_result([0.0, 1.0], [4, 4])
    numbers = key_numbers(result)
    assert numbers["k"] == 2 and numbers["mean_kl_beyond_k"] is None and numbers["mean_kl_within_k"] == 0.5
    notes = caveats(result, numbers)
    assert any("nothing lies beyond it" in note for note in notes)
    assert any("only 1 rollout" in note.lower() or "Only 4 rollout" in note for note in notes)
    assert any("kl_share_within_paper_k is None" in note and "2 tokens" in note for note in notes)


def test_caveats_flag_a_flat_curve_but_not_a_decaying_one():
    from trl_esr.diagnostics.report import caveats

    flat = caveats(synthetic_result([1.0] * 200, [64] * 200))
    assert any(note.startswith("No decay visible") for note in flat)
    assert not any("Only" in note or "paper_k" in note for note in flat)  # 64 rollouts, 200 positions
    early = caveats(synthetic_result([5.0] * 20 + [0.5] * 180, [64] * 200))
    assert early == []


@pytest.mark.parametrize("length", ["1", "2"])
def test_suggest_k_with_tiny_rollouts_writes_the_report(llama_paths, dataset_file, tmp_path, capsys, length):
    argv = command(llama_paths, dataset_file, tmp_path, max_completion_length=length, num_prompts=2)
    assert main(argv) in (EXIT_RECOMMENDED, EXIT_NO_RECOMMENDATION)
    out = capsys.readouterr().out
    assert "Caveat: Only 2 rollout(s)" in out and "kl_share_within_paper_k is None" in out
    report = json.loads((tmp_path / "diagnostics.json").read_text())
    assert report["caveats"] and len(report["per_position"]["alive"]) <= int(length)
    assert "**Caveats:**" in (tmp_path / "diagnostics.md").read_text()


def test_suggest_k_prompt_column_and_local_file_as_dataset_name(llama_paths, tmp_path, capsys):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps({"problem": " ".join(WORDS[i : i + 3])}) + "\n" for i in range(4)))
    argv = command(llama_paths, str(path), tmp_path / "out", num_prompts=4)
    assert main(argv) == EXIT_BAD_INPUT
    assert "--prompt_column" in capsys.readouterr().err
    argv = [a if a != "--dataset_files" else "--dataset_name" for a in argv]  # a local file given as a Hub name
    assert main([*argv, "--prompt_column", "problem"]) in (EXIT_RECOMMENDED, EXIT_NO_RECOMMENDATION)
    report = json.loads((tmp_path / "out" / "diagnostics.json").read_text())
    assert report["settings"]["prompt_column"] == "problem" and report["per_position"]["alive"][0] == 4


def bad_inputs(tmp_path, llama_paths):
    """(overrides, expected message) pairs that must all fail before any model is loaded."""
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "broken.jsonl").write_text('{"prompt": "w1 w2"}\n{"prompt": "w3" \n')
    (tmp_path / "list.jsonl").write_text('{"prompt": "w1 w2"}\n["w3"]\n')
    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "a_file").write_text("x")
    return [
        ({"threshold": 1}, "must be in (0, 1)"),
        ({"threshold": 0}, "must be in (0, 1)"),
        ({"temperature": 0}, "`--temperature` must be > 0"),
        ({"top_p": 0}, "`--top_p` in (0, 1]"),
        ({"num_prompts": 0}, "`--num_prompts` must be a positive integer"),
        ({"batch_size": -1}, "`--batch_size` must be a positive integer"),
        ({"model_name_or_path": llama_paths["student"] + "x"}, "`--model_name_or_path`"),
        ({"model_name_or_path": "./models/studnet"}, "not found"),
        ({"teacher_model_name_or_path": "no-such-model"}, "HF_HUB_OFFLINE=1"),
        ({"teacher_model_name_or_path": str(tmp_path / "not_a_model")}, "is a folder but not a model"),
        ({"teacher_model_name_or_path": str(tmp_path / "a_file")}, "is a file"),
        ({"student_adapter_path": str(tmp_path / "not_a_model")}, "`--student_adapter_path`"),
        ({"dataset_files": str(tmp_path / "empty.jsonl")}, "is empty"),
        ({"dataset_files": str(tmp_path / "broken.jsonl")}, "broken.jsonl line 2 is not valid JSON"),
        ({"dataset_files": str(tmp_path / "list.jsonl")}, "line 2 is a JSON list"),
        ({"dataset_files": str(tmp_path)}, "is a folder"),
        ({"dataset_split": "train[:0]"}, "`--dataset_split` 'train[:0]'"),
        ({"dataset_split": "test"}, "single 'train' split"),
        ({"output_dir": str(tmp_path / "a_file")}, "`--output_dir`"),
    ]


def test_suggest_k_bad_inputs_fail_before_loading_models(llama_paths, dataset_file, tmp_path, capsys, monkeypatch):
    import trl_esr.diagnostics.cli as suggest_cli

    def no_loading(*args):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(suggest_cli, "_load_models", no_loading)
    for overrides, message in bad_inputs(tmp_path, llama_paths):
        options = {"output_dir": tmp_path / "out", **overrides}
        assert main(command(llama_paths, dataset_file, **options)) == EXIT_BAD_INPUT, overrides
        err = capsys.readouterr().err
        assert message in err, (overrides, err)
        errors = [line for line in err.splitlines() if "trl-esr suggest-k: error:" in line]
        assert len(errors) == 1 and "Traceback" not in err, err  # one line, no traceback


# Issue 13: no finished work is discarded. Rollouts, scores and probe results are written batch by batch; a crash or
# Ctrl-C keeps them (and says so), and the same command resumes with the numbers of an uninterrupted run.


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(llama_paths, dataset_file, tmp_path_factory):
    """A run of 6 prompts in 3 batches of 2, with the teacher-decay probe."""
    out = tmp_path_factory.mktemp("uninterrupted")
    argv = command(llama_paths, dataset_file, out, batch_size=2, probe_k_grid=[0, 4])
    assert main(argv) == EXIT_RECOMMENDED
    return out


def failing_on_call(function, call, error):
    """`function`, raising `error` on its `call`-th call (1-based); the wrapper counts every call in `.calls`."""

    def wrapper(*args, **kwargs):
        wrapper.calls += 1
        if wrapper.calls == call:
            raise error
        return function(*args, **kwargs)

    wrapper.calls = 0
    return wrapper


def report(out):
    full = json.loads((out / "diagnostics.json").read_text())
    return {section: full[section] for section in ("per_position", "recommendation", "teacher_decay", "key_numbers")}


def test_suggest_k_keeps_the_rollouts_and_scores_of_a_crash_and_resumes(
    llama_paths, dataset_file, uninterrupted, tmp_path, capsys, monkeypatch
):
    import trl_esr.diagnostics.per_position as per_position

    argv = command(llama_paths, dataset_file, tmp_path, batch_size=2, probe_k_grid=[0, 4])
    original = per_position._score_batch
    monkeypatch.setattr(
        per_position, "_score_batch", failing_on_call(original, 2, RuntimeError("CUDA out of memory (injected)"))
    )
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "RuntimeError: CUDA out of memory (injected)" in err  # the traceback is kept for a real crash
    assert err.strip().splitlines()[-1] == (
        f"trl-esr suggest-k: failed (RuntimeError). Partial results kept in {tmp_path}: 6 of 6 rollouts "
        "(rollouts.jsonl), 2 of 6 scored (scores.jsonl). Run again with the same settings and output folder to "
        "resume from there."
    )
    assert read_jsonl(tmp_path / "rollouts.jsonl") == read_jsonl(uninterrupted / "rollouts.jsonl")
    assert read_jsonl(tmp_path / "scores.jsonl") == read_jsonl(uninterrupted / "scores.jsonl")[:2]  # the 1st batch
    assert not (tmp_path / "diagnostics.json").exists()

    counting = failing_on_call(original, 0, None)  # never fails
    monkeypatch.setattr(per_position, "_score_batch", counting)
    assert main(argv) == EXIT_RECOMMENDED
    assert f"Resuming the unfinished run in {tmp_path}: 6 of 6 rollouts" in capsys.readouterr().err
    assert counting.calls == 2  # only batches 2 and 3 were scored this time
    assert report(tmp_path) == report(uninterrupted)
    assert read_jsonl(tmp_path / "scores.jsonl") == read_jsonl(uninterrupted / "scores.jsonl")


def test_suggest_k_interrupted_during_rollouts_keeps_the_first_batch_and_resumes_exactly(
    llama_paths, dataset_file, uninterrupted, tmp_path, capsys, monkeypatch
):
    import trl_esr.diagnostics.cli as suggest_cli

    load_models = suggest_cli._load_models

    def student_interrupted_at_its_second_batch(*args):
        student, teacher, tokenizer, renderer = load_models(*args)
        student.generate = failing_on_call(student.generate, 2, KeyboardInterrupt())
        return student, teacher, tokenizer, renderer

    argv = command(llama_paths, dataset_file, tmp_path, batch_size=2, probe_k_grid=[0, 4])
    monkeypatch.setattr(suggest_cli, "_load_models", student_interrupted_at_its_second_batch)
    assert main(argv) == suggest_cli.EXIT_INTERRUPTED
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"trl-esr suggest-k: interrupted. Partial results kept in {tmp_path}: 2 of 6 rollouts (rollouts.jsonl), "
        "0 of 6 scored (scores.jsonl). Run again with the same settings and output folder to resume from there."
    )
    first_batch = read_jsonl(tmp_path / "rollouts.jsonl")
    assert first_batch == read_jsonl(uninterrupted / "rollouts.jsonl")[:2]
    assert [row["index"] for row in first_batch] == [0, 1] and all(row["completion_ids"] for row in first_batch)

    # Other settings: refused before any model is loaded, naming the difference.
    monkeypatch.setattr(suggest_cli, "_load_models", lambda *args: pytest.fail("a model was loaded"))
    assert main(command(llama_paths, dataset_file, tmp_path, batch_size=2, seed=4)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "holds the partial results of an unfinished run with other settings (seed: 3, now 4)" in err
    assert "Rerun with its settings to resume it" in err

    # The same settings: the sampling RNG is restored, so the resumed run is the uninterrupted one.
    monkeypatch.setattr(suggest_cli, "_load_models", load_models)
    assert main(argv) == EXIT_RECOMMENDED
    assert "Resuming the unfinished run" in capsys.readouterr().err
    assert read_jsonl(tmp_path / "rollouts.jsonl") == read_jsonl(uninterrupted / "rollouts.jsonl")
    assert report(tmp_path) == report(uninterrupted)

    # A finished run is not resumed: other settings start over in the same folder.
    assert main(command(llama_paths, dataset_file, tmp_path, batch_size=2, seed=4)) == EXIT_RECOMMENDED
    assert "Resuming" not in capsys.readouterr().err
    assert json.loads((tmp_path / "progress.json").read_text())["settings"]["seed"] == 4


def test_suggest_k_keeps_the_measurements_when_the_report_fails(
    llama_paths, dataset_file, tmp_path, capsys, monkeypatch
):
    import trl_esr.diagnostics.report as report_module

    def broken_plot(*args, **kwargs):
        raise ZeroDivisionError("injected")

    monkeypatch.setattr(report_module, "_plot", broken_plot)
    assert main(command(llama_paths, dataset_file, tmp_path)) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"trl-esr suggest-k: could not write the report (ZeroDivisionError). The measurements are kept in {tmp_path}: "
        "rollouts.jsonl and scores.jsonl."
    )
    assert len(read_jsonl(tmp_path / "rollouts.jsonl")) == len(read_jsonl(tmp_path / "scores.jsonl")) == 6


def test_suggest_k_interrupted_in_the_probe_reuses_the_lengths_measured(
    llama_paths, dataset_file, uninterrupted, tmp_path, capsys, monkeypatch
):
    import trl_esr.diagnostics.cli as suggest_cli

    load_models, counters = suggest_cli._load_models, []

    def teacher_interrupted_at(call):
        def load(*args):
            student, teacher, tokenizer, renderer = load_models(*args)
            teacher.generate = failing_on_call(teacher.generate, call, KeyboardInterrupt())
            counters.append(teacher.generate)
            return student, teacher, tokenizer, renderer

        return load

    argv = command(llama_paths, dataset_file, tmp_path, batch_size=2, probe_k_grid=[0, 4])
    monkeypatch.setattr(suggest_cli, "_load_models", teacher_interrupted_at(4))  # k = 0 takes calls 1-3
    assert main(argv) == suggest_cli.EXIT_INTERRUPTED
    assert "6 of 6 scored (scores.jsonl), 1 probe length(s) (teacher_decay.jsonl)" in capsys.readouterr().err
    assert [row["k"] for row in read_jsonl(tmp_path / "teacher_decay.jsonl")] == [0]

    monkeypatch.setattr(suggest_cli, "_load_models", teacher_interrupted_at(0))  # never interrupted
    assert main(argv) == EXIT_RECOMMENDED
    assert counters[-1].calls == 3  # only k = 4 was probed this time
    assert report(tmp_path) == report(uninterrupted)


# The models come from TRL's `ModelConfig` (applied to both), the pair is checked with the trainer's rule
# (`trl_esr.pairing`): the teacher reads the student's ids over one vocabulary of one size.


def test_suggest_k_model_options_are_trls_model_config(capsys):
    from trl import ModelConfig

    from trl_esr.diagnostics.cli import make_parser

    args, model_args = make_parser().parse_args_and_config(
        ["--model_name_or_path", "s", "--teacher_model_name_or_path", "t", "--load_in_4bit", "--num_prompts", "3"]
    )
    assert isinstance(model_args, ModelConfig) and model_args.load_in_4bit and model_args.dtype == "auto"
    assert (model_args.model_name_or_path, args.teacher_model_name_or_path, args.num_prompts) == ("s", "t", 3)
    assert main(["--model_name_or_path", "s", "--load_in_4bit", "--load_in_8bit"]) == EXIT_BAD_INPUT
    assert "You can't use 8 bit and 4 bit precision" in capsys.readouterr().err


def extended_tokenizer(tokenizer):
    """`tokenizer` plus one added token: every student id keeps its meaning (like Qwen3's tokenizer over Qwen2.5's)."""
    import copy

    extended = copy.deepcopy(tokenizer)
    extended.add_tokens(["w40"])
    return extended


@pytest.fixture(scope="module")
def other_pairs(tmp_path_factory, tokenizer):
    """A student whose head has one spare row, a teacher of that size with a tokenizer that adds one token (the pair
    the trainer takes its fast path for), the same teacher saved with the student's tokenizer (one row more than
    `llama_paths`' student: the trainer would cut both heads to the shared rows), and a teacher with another
    tokenizer (the trainer would re-tokenize the rollouts for it)."""
    root = tmp_path_factory.mktemp("pairs")
    extended = extended_tokenizer(tokenizer)
    student = build_tiny_causal_lm(tokenizer, "llama", hidden_size=32, seed=0)
    student.resize_token_embeddings(len(extended), mean_resizing=False)
    teacher = build_tiny_causal_lm(extended, "llama", hidden_size=48, seed=1)
    reordered = copy_with_swapped_words(tokenizer)
    return {
        "student": save_pretrained(student, tokenizer, root / "student"),
        "adding_teacher": save_pretrained(teacher, extended, root / "adding_teacher"),
        "same_teacher": save_pretrained(teacher, tokenizer, root / "same_teacher"),
        "other_tokenizer": save_pretrained(build_tiny_causal_lm(reordered, "llama", seed=2), reordered, root / "o"),
    }


def copy_with_swapped_words(tokenizer):
    """The word tokenizer with two words' ids swapped: same size, another token -> id mapping."""
    from trl_esr.demo.tiny_models import build_word_tokenizer

    words = [f"w{i}" for i in range(40)]
    words[0], words[1] = words[1], words[0]
    return build_word_tokenizer(words)


def test_a_teacher_whose_tokenizer_only_adds_tokens_is_measured(other_pairs, llama_paths, dataset_file, tmp_path):
    """Refused before (the vocabularies differ); the trainer's fast path applies, so the teacher scores the student's
    ids as they are: the same numbers as the same teacher with the student's own tokenizer."""
    student = other_pairs["student"]
    for teacher in ("adding_teacher", "same_teacher"):
        paths = {"student": student, "teacher": other_pairs[teacher]}
        assert main(command(paths, dataset_file, tmp_path / teacher)) in (EXIT_RECOMMENDED, EXIT_NO_RECOMMENDATION)
    assert report(tmp_path / "adding_teacher") == report(tmp_path / "same_teacher")
    assert max(report(tmp_path / "same_teacher")["per_position"]["kl_mean"]) > 0


@pytest.mark.parametrize(
    ("teacher", "message"),
    [("other_tokenizer", "the tokenizers differ"), ("same_teacher", "their heads have different sizes")],
)
def test_pairs_the_trainer_would_align_or_cut_are_refused_before_loading(
    other_pairs, llama_paths, dataset_file, tmp_path, capsys, monkeypatch, teacher, message
):
    import trl_esr.inference as inference

    monkeypatch.setattr(inference, "load_causal_lm", lambda *args: pytest.fail("a model was loaded"))
    paths = {"student": llama_paths["student"], "teacher": other_pairs[teacher]}
    assert main(command(paths, dataset_file, tmp_path)) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert "do not share one vocabulary" in err and message in err and "Traceback" not in err


def test_suggest_k_renders_the_prompts_as_training_does(tokenizer, tmp_path, capsys):
    """`--system_prompt`, `--chat_template_kwargs` and the teacher's own view (`--teacher_chat_template teacher` with
    its kwargs): the saved per-token KL equals one computed here by hand, from prompts rendered here with each model's
    template, and differs from the KL with the student's rendering for both (so the options reach the scores)."""
    import copy

    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from trl_esr.demo.tiny_models import CHAT_TEMPLATE

    def with_template(after_turn: str):
        templated = copy.deepcopy(tokenizer)
        templated.chat_template = CHAT_TEMPLATE.replace(
            "<|assistant|>{% endif %}", f"<|assistant|>{after_turn}{{% endif %}}"
        )
        return templated

    switch = "{% if enable_thinking is false %} w38 w39{% endif %}"  # Qwen3's: an empty thinking block
    student_tok, teacher_tok = with_template(switch), with_template(" w36" + switch)  # the teacher's template differs
    paths = {
        "student": save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=32, seed=0), student_tok,
                                   tmp_path / "student"),
        "teacher": save_pretrained(build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=1), teacher_tok,
                                   tmp_path / "teacher"),
    }  # fmt: skip
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"problem": " ".join(WORDS[i : i + 3])}) + "\n" for i in range(4)))
    off = json.dumps({"enable_thinking": False})
    prompt_options = dict(prompt_column="problem", system_prompt="w30", chat_template_kwargs=off,
                          teacher_chat_template="teacher", teacher_chat_template_kwargs=off)  # fmt: skip
    argv = command(paths, str(problems), tmp_path / "out", num_prompts=4, **prompt_options)
    assert main(argv) in (EXIT_RECOMMENDED, EXIT_NO_RECOMMENDATION), capsys.readouterr().err
    out = tmp_path / "out"
    rollouts = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    scores = {row["index"]: row for row in map(json.loads, (out / "scores.jsonl").read_text().splitlines())}
    report = json.loads((out / "diagnostics.json").read_text())
    assert report["settings"]["chat_template_kwargs"] == {"enable_thinking": False}
    assert report["settings"]["teacher_chat_template"] == "teacher"

    student = AutoModelForCausalLM.from_pretrained(paths["student"]).eval()
    teacher = AutoModelForCausalLM.from_pretrained(paths["teacher"]).eval()

    def kl(row, teacher_template):
        prompt = row["prompt"]
        assert prompt[0] == {"role": "system", "content": "w30"}  # the system prompt was put first
        s_ids = student_tok.apply_chat_template(prompt, add_generation_prompt=True, enable_thinking=False)["input_ids"]
        t_ids = teacher_template.apply_chat_template(prompt, add_generation_prompt=True,
                                                     enable_thinking=False)["input_ids"]  # fmt: skip
        completion = row["completion_ids"]
        with torch.no_grad():
            s = student(torch.tensor([s_ids + completion])).logits[0, len(s_ids) - 1 : -1].log_softmax(-1)
            t = teacher(torch.tensor([t_ids + completion])).logits[0, len(t_ids) - 1 : -1].log_softmax(-1)
        return F.kl_div(t, s, log_target=True, reduction="none").sum(-1)  # KL(student || teacher) per position

    for row in rollouts:
        saved = torch.tensor(scores[row["index"]]["reverse_kl"])
        assert torch.allclose(saved, kl(row, teacher_tok), atol=1e-5)
        assert not torch.allclose(saved, kl(row, student_tok), atol=1e-4)  # the teacher's own view made a difference


def test_suggest_k_prompt_options_are_checked_before_loading(llama_paths, tmp_path, capsys):
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"problem": w}) + "\n" for w in WORDS[:4]))
    argv = command(llama_paths, str(problems), tmp_path / "out", prompt_column="problem")
    assert main([*argv, "--chat_template_kwargs", "[1]"]) == EXIT_BAD_INPUT
    assert "`--chat_template_kwargs` must be a JSON object" in capsys.readouterr().err
    assert main([*argv, "--teacher_chat_template", "teacher"]) == EXIT_BAD_INPUT  # plain-text prompts
    assert "apply to chat prompts" in capsys.readouterr().err
