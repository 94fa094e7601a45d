r"""
MATH-500-style avg@n / pass@n of a model's `\boxed{}` answers, in the shape of TRL's `trl/scripts/*.py`.

`EvaluateArguments` and TRL's `ModelConfig` (`trl_esr.inference.InferenceModelConfig`: the checkpoint's dtype by
default) are parsed by `TrlParser`, then `evaluate(script_args, model_args)` generates and scores. Run it as
`trl-esr evaluate ...` or `python examples/scripts/evaluate_boxed.py ...`; `--config` reads the options from a YAML
file. The scoring and generation are library functions (`trl_esr.evaluation`); this script adds the dataset, the model
and what a long run needs: every input checked before the model loads, and the responses written to `--output_file`
batch by batch, so that a crash or Ctrl-C keeps every finished problem and says how to score them.

```bash
# the paper's protocol: 4 samples per problem at T = 0.7, top-p 0.95
trl-esr evaluate \
    --model_name_or_path Qwen2.5-Math-1.5B-ESR-LoRA \
    --dataset_name HuggingFaceH4/MATH-500 \
    --n 4 \
    --temperature 0.7 \
    --dtype bfloat16 \
    --output_file math500_samples.jsonl

# the same with vLLM (install it first; merge a LoRA adapter into its base model before, vLLM loads full models)
trl-esr evaluate --model_name_or_path merged-model --use_vllm

# greedy: one response per problem (n > 1 is refused, the responses would be identical)
trl-esr evaluate --model_name_or_path Qwen3-1.7B --n 1 --temperature 0 \
    --chat_template_kwargs '{"enable_thinking": false}'

# a template that takes no system message (Gemma-2's): none
trl-esr evaluate --model_name_or_path gemma-2-2b-it --system_prompt ""

# re-score saved responses (one JSON object per line: {"answer": "...", "responses": ["...", ...]})
trl-esr evaluate --responses_file math500_samples.jsonl --answer_from first
```

Sampling uses the temperature and top-p only, as the paper: nothing from the checkpoint's generation config (its
`top_k`, `repetition_penalty`, ...), with HF `generate` and vLLM alike; `--seed` seeds both. `--chat_template_kwargs`
renders the prompts as the model was trained (the trainer's `chat_template_kwargs`). The prompts are rendered before
the model loads, so a tokenizer without a chat template, or a template that refuses the system message, fails at once.

The scores (printed as JSON): `avg@n`, `pass@n`, `no_box` and `multi_box` (% of responses without a box, with several:
the paper's sign of a degenerating run), and for generated responses `median_tokens`, `mean_tokens` and `truncated`
(% cut at `--max_new_tokens`).

Exit codes: 0 = scored; 2 = bad input, one line naming the option; 1 = a crash and
130 = Ctrl-C while generating, the last line saying where the finished problems are.
"""

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from trl import ModelConfig, TrlParser

from .. import inference
from ..evaluation import (
    PAPER_SYSTEM_PROMPT,
    Response,
    answers_match,
    chat_prompts,
    extract_answer,
    generate_hf,
    generate_vllm,
    load_problems,
    response_columns,
    score_columns,
    score_generated,
)
from ..inference import InferenceModelConfig
from ..jsonl import JSONLineError, json_lines


@dataclass
class EvaluateArguments:
    """Everything but the model (TRL's `ModelConfig`); the defaults follow the paper's MATH-500 evaluation."""

    dataset_name: str = field(default="HuggingFaceH4/MATH-500", metadata={"help": "Hub dataset or local folder."})
    dataset_split: str = field(default="test", metadata={"help": "Split, with slicing (e.g. 'test[:100]')."})
    problem_column: str = field(default="problem", metadata={"help": "Column holding the problem."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the reference answer."})
    system_prompt: str | None = field(
        default=PAPER_SYSTEM_PROMPT,
        metadata={
            "help": "System message; use the one the model was trained with. '' for none (a template that takes no "
            "system message, such as Gemma-2's)."
        },
    )
    chat_template_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Extra keyword arguments for the chat template, as JSON: render the prompts as the model was "
            "trained, e.g. '{\"enable_thinking\": false}' (the trainer's `chat_template_kwargs`)."
        },
    )
    n: int = field(default=4, metadata={"help": "Responses per problem (the paper: avg@4 / pass@4)."})
    temperature: float = field(
        default=0.7, metadata={"help": "Sampling temperature (the paper: 0.7); 0 = greedy, with `--n 1`."}
    )
    top_p: float = field(default=0.95, metadata={"help": "Top-p (the paper: 0.95)."})
    max_new_tokens: int = field(default=3584, metadata={"help": "Max new tokens per response (the paper's math cap)."})
    answer_from: str = field(
        default="last",
        metadata={"help": "Which \\boxed{} is the answer: 'last' or 'first'.", "choices": ["last", "first"]},
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per HF `generate` call."})
    use_vllm: bool = field(default=False, metadata={"help": "Generate with vLLM (must be installed)."})
    seed: int = field(default=0, metadata={"help": "Sampling seed."})
    responses_file: str | None = field(
        default=None,
        metadata={
            "help": "Score the responses in this JSONL file ({'responses': [...], 'answer': ...} per line) "
            "instead of generating."
        },  # fmt: skip
    )
    output_file: str | None = field(
        default=None,
        metadata={
            "help": "Write each problem's responses, answers and correctness here (JSONL), batch by batch: after a "
            "crash or Ctrl-C it holds every finished problem, ready for `--responses_file`."
        },
    )

    def __post_init__(self):
        from ..validation import cli_none, json_dict

        cli_none(self, "system_prompt")  # `--system_prompt None`: no system message, as ''
        # the command line gives a JSON string (as TRL's `chat_template_kwargs`), a `--config` YAML file a mapping
        self.chat_template_kwargs = json_dict("chat_template_kwargs", self.chat_template_kwargs)


def make_parser() -> TrlParser:
    return TrlParser((EvaluateArguments, InferenceModelConfig), prog="trl-esr evaluate")


def main(argv: list[str] | None = None) -> int:
    """The command line: parse, evaluate, print the scores as JSON; returns the exit status (see the docstring)."""
    try:
        script_args, model_args = make_parser().parse_args_and_config(args=argv)
    except (ValueError, OSError) as error:  # `ModelConfig`'s own checks, an unreadable `--config` file
        return _bad_input(error)
    try:
        scores = evaluate(script_args, model_args)
    except ValueError as error:
        if getattr(error, "__notes__", None):  # raised while generating: a crash, not a bad option
            return _stopped(f"failed ({type(error).__name__})", error, 1)
        return _bad_input(error)
    except KeyboardInterrupt as interrupt:
        return _stopped("interrupted", interrupt, 130)
    except Exception as error:
        return _stopped(f"failed ({type(error).__name__})", error, 1)
    print(json.dumps(scores))
    return 0


def evaluate(script_args: EvaluateArguments, model_args: ModelConfig) -> dict:
    """Generate (or read) the responses, score them, optionally write them out; returns the scores.

    Generated responses are written to `--output_file` batch by batch, as each problem's row is finished: a crash or
    Ctrl-C keeps them, and the exception carries a note saying where they are and how many (without `--output_file`,
    the finished rows are written to a temporary file named in the note)."""
    validate_arguments(script_args, model_args)
    if script_args.responses_file is not None:
        rows = _read_responses_file(script_args.responses_file)
        problems = [row.get("problem", "") for row in rows]
        references = [str(row["answer"]) for row in rows]  # a number ({"answer": 5}) too, as `load_problems` reads it
        responses = [row["responses"] for row in rows]
        lengths = _saved_lengths(rows)
        if script_args.output_file is not None:  # written after reading: it may be the `--responses_file` itself
            ResultRows(script_args.output_file, script_args.answer_from).add(problems, references, responses, *lengths)
        return score_columns(responses, references, script_args.answer_from, *lengths)

    from transformers import set_seed

    set_seed(script_args.seed)
    problems, references = load_problems(  # before the model: a wrong column fails in seconds
        script_args.dataset_name, script_args.dataset_split, script_args.problem_column, script_args.answer_column
    )
    rows = ResultRows(script_args.output_file, script_args.answer_from)  # an unwritable path fails before generating
    name, revision = model_args.model_name_or_path, model_args.model_revision
    tokenizer = inference.load_tokenizer(name, revision)
    prompts = render_problems(tokenizer, problems, script_args, name)  # before the model: a refusal fails in seconds
    model = None if script_args.use_vllm else inference.load_causal_lm(name, model_args, revision)  # vLLM: its own
    sampling = (script_args.n, script_args.temperature, script_args.top_p, script_args.max_new_tokens)
    try:
        if script_args.use_vllm:  # one engine call for all prompts
            generated = generate_vllm(name, tokenizer, prompts, *sampling, seed=script_args.seed,
                                      dtype=model_args.dtype or "auto", revision=revision)  # fmt: skip
            rows.add(problems, references, *response_columns(generated))
        else:

            def save(start: int, batch: list[list[Response]]) -> None:
                end = start + len(batch)
                rows.add(problems[start:end], references[start:end], *response_columns(batch))

            generated = generate_hf(
                model, tokenizer, prompts, *sampling, batch_size=script_args.batch_size, on_batch=save
            )
    except BaseException as error:  # KeyboardInterrupt too: say what was kept, then let it propagate
        error.add_note(rows.kept(len(problems)))
        raise
    return score_generated(generated, references, script_args.answer_from)


def render_problems(tokenizer, problems: list[str], script_args: EvaluateArguments, name: str) -> list[str]:
    """The prompts (`chat_prompts`), rendered before the model loads, or a `ValueError` naming the option to change:
    for a tokenizer without a chat template, a template that refuses a system message (Gemma-2's) or its arguments."""
    from jinja2 import TemplateError

    if tokenizer.chat_template is None:
        raise ValueError(
            f"The tokenizer of {name!r} has no chat template: each problem is rendered as a chat, after "
            "`--system_prompt`. Evaluate a checkpoint that has one (a chat or trained model), or add one to its "
            "tokenizer_config.json."
        )
    try:
        return chat_prompts(tokenizer, problems, script_args.system_prompt, **(script_args.chat_template_kwargs or {}))
    except (TemplateError, ValueError) as error:
        fix = (
            'if it takes no system message (Gemma-2\'s), set `--system_prompt ""`'
            if script_args.system_prompt
            else "check `--chat_template_kwargs`"
        )
        reason = " ".join(str(error).split())  # one line
        raise ValueError(
            f"The chat template of {name!r} refused the prompt ({type(error).__name__}: {reason}): {fix}."
        ) from None


def _saved_lengths(rows: list[dict]) -> tuple:
    """The lengths and truncation flags of a `--responses_file`, if every row has them (rows that `--output_file`
    wrote from generated responses do); else `(None, None)`: the scores then leave the lengths out."""
    if all(
        isinstance(row.get(key), list) and len(row[key]) == len(row["responses"])
        for row in rows
        for key in ("num_tokens", "truncated")
    ):
        return [row["num_tokens"] for row in rows], [row["truncated"] for row in rows]
    return None, None


def validate_arguments(script_args: EvaluateArguments, model_args: ModelConfig) -> None:
    """Everything that can be checked before a model is loaded or a response generated: raises `ValueError` naming
    the option."""
    from ..validation import check_model_path, check_output_file

    if script_args.output_file is not None:  # checked first: generating everything, then failing to write it, loses it
        check_output_file("output_file", script_args.output_file)
    if script_args.responses_file is not None:
        if not Path(script_args.responses_file).is_file():
            raise ValueError(f"`--responses_file` {script_args.responses_file!r} not found (or not a file).")
        return
    if model_args.model_name_or_path is None:
        raise ValueError("Set `--model_name_or_path` (or `--responses_file` to score saved responses).")
    for name in ("n", "max_new_tokens", "batch_size"):
        if getattr(script_args, name) <= 0:
            raise ValueError(f"`--{name}` must be a positive integer, got {getattr(script_args, name)}.")
    if script_args.temperature < 0 or not 0 < script_args.top_p <= 1:
        raise ValueError(
            f"`--temperature` must be >= 0 (0 = greedy) and `--top_p` in (0, 1]; got {script_args.temperature} and "
            f"{script_args.top_p}. The paper samples at 0.7 and 0.95."
        )
    if script_args.temperature == 0 and script_args.n > 1:  # HF `generate` refuses it, after the model has loaded
        raise ValueError(
            f"`--n` {script_args.n} with `--temperature` 0: greedy decoding gives {script_args.n} identical "
            "responses. Use `--n 1` (or a `--temperature` above 0 to sample)."
        )
    check_model_path(
        "model_name_or_path", model_args.model_name_or_path, adapter=True, revision=model_args.model_revision
    )


def _read_responses_file(path: str) -> list[dict]:
    """The rows of a `--responses_file`, each checked: one JSON object per line with `answer` and `responses`."""
    rows = []
    try:
        for number, line, row in json_lines(path):
            if not isinstance(row, dict) or "answer" not in row or not isinstance(row.get("responses"), list):
                raise ValueError(
                    f"`--responses_file` {path} line {number} needs an 'answer' and a 'responses' list, as "
                    f"`--output_file` writes them; got {line[:80]!r}."
                )
            rows.append(row)
    except JSONLineError as error:
        raise ValueError(
            f"`--responses_file` {path} line {error.line_number} is not valid JSON ({error.msg})."
        ) from None
    if not rows:
        raise ValueError(f"`--responses_file` {path} is empty.")
    return rows


class ResultRows:
    """The `--output_file` rows (problem, reference, responses, extracted answers, correctness), appended as each
    batch of problems is finished; without a file they are kept in memory, to be saved if the run fails."""

    def __init__(self, path: str | None, answer_from: str):
        self.path, self.answer_from, self.rows = path, answer_from, []
        if path is not None:
            open(path, "w").close()

    def add(self, problems: list[str], references: list[str], responses: list[list[str]],
            num_tokens: list[list[int]] | None = None, truncated: list[list[bool]] | None = None) -> None:  # fmt: skip
        new = []
        for i, (problem, reference, rs) in enumerate(zip(problems, references, responses, strict=True)):
            answers = [extract_answer(r, self.answer_from) for r in rs]
            correct = [answers_match(answer, reference) for answer in answers]
            new.append({"problem": problem, "answer": reference, "responses": rs, "extracted": answers,
                        "correct": correct})  # fmt: skip
            if num_tokens is not None:
                new[-1].update(num_tokens=num_tokens[i], truncated=truncated[i])
        self.rows += new
        if self.path is not None:
            with open(self.path, "a") as f:
                f.writelines(json.dumps(row) + "\n" for row in new)

    def kept(self, total: int) -> str:
        """Where the finished rows are, for the note of an exception; writes them to a temporary file if needed."""
        if not self.rows:
            return "No problem was finished."
        path = self.path
        if path is None:
            import tempfile

            handle, path = tempfile.mkstemp(prefix="evaluate_boxed-partial-", suffix=".jsonl")
            with os.fdopen(handle, "w") as f:
                f.writelines(json.dumps(row) + "\n" for row in self.rows)
        return (
            f"The responses to {len(self.rows)} of {total} problems are in {path}: score them with "
            f"`--responses_file {path}`."
        )


def _bad_input(error: Exception) -> int:
    print(f"evaluate_boxed: error: {error}", file=sys.stderr)  # a bad option: one line, no traceback
    return 2


def _stopped(what: str, error: BaseException, code: int) -> int:
    """A crash or Ctrl-C while generating: the traceback of a crash, then one line saying what was kept."""
    import traceback

    if not isinstance(error, KeyboardInterrupt):
        traceback.print_exception(error)
    notes = getattr(error, "__notes__", [])
    print(f"evaluate_boxed: {what}. {notes[-1] if notes else ''}".rstrip(), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
