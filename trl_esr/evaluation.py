r"""MATH-500-style evaluation: n responses per problem, the answer from `\boxed{}`, avg@n and pass@n.

The paper evaluates MATH-500 with avg@4 / pass@4 at temperature 0.7, the answer read from `\boxed{}`. avg@n is the
mean accuracy over all n samples of all problems (an estimate of pass@1 with less variance); pass@n is the share of
problems solved by at least one of the n samples. Both are percentages.

Answers are compared after a normalisation in the spirit of the MATH benchmark's `strip_string` (Hendrycks et al.):
LaTeX spacing and sizing commands, `$`, `\text{}` wrappers, units, degrees and a trailing period are removed,
`\dfrac`/`\tfrac` become `\frac`, `\frac12` becomes `\frac{1}{2}`; then two answers match if the strings are equal or
both are the same rational number (`\frac{1}{2}`, `1/2`, `0.5`). It is a string check, not a symbolic one:
`\sqrt{8}` and `2\sqrt{2}` do not match.

`python examples/scripts/evaluate_boxed.py --help` (or `main`) runs it; generation uses HF `generate`, or vLLM with
`--use_vllm` when installed.
"""

import json
import os
import re
from dataclasses import dataclass, field
from fractions import Fraction


# Scoring


def boxed_answers(text: str) -> list[str]:
    r"""Contents of every `\boxed{...}` (and `\fbox{...}`) in `text`, in order, with nested braces matched."""
    answers = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for i in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            if depth == 0:
                answers.append(text[start:i])
                break
    return answers


def extract_answer(text: str, answer_from: str = "last") -> str | None:
    r"""The `\boxed{}` answer of a response: the last box (the usual convention) or the first; `None` if none."""
    if answer_from not in ("last", "first"):
        raise ValueError(f"`answer_from` must be 'last' or 'first', got {answer_from!r}.")
    answers = boxed_answers(text)
    if not answers:
        return None
    return answers[-1] if answer_from == "last" else answers[0]


_DELETED = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", "$", r"\displaystyle"]
_DEGREES = [r"^{\circ}", r"^\circ", "°"]
_TEXT_COMMANDS = r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}"


def normalize_answer(answer: str) -> str:
    """A canonical string for an answer, so that formatting differences do not count as errors."""
    s = answer.strip().replace("\n", "")
    s = re.sub(r"\\text\s*\{\s+[^{}]*\}$", "", s)  # a trailing unit, "5 \text{ cm}" (a space opens the text)
    for token in _DELETED + _DEGREES:
        s = s.replace(token, "")
    s = re.sub(_TEXT_COMMANDS, r"\1", s)  # \text{(A)} -> (A)
    s = s.replace(r"\dfrac", r"\frac").replace(r"\tfrac", r"\frac")
    s = s.replace(r"\%", "").replace("%", "")
    s = s.replace(" ", "").rstrip(".")
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)  # \frac12 -> \frac{1}{2}
    s = re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)  # \frac{1}2 -> \frac{1}{2}
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)  # \sqrt2 -> \sqrt{2}
    if re.fullmatch(r"[a-zA-Z]\w?=.+", s):  # "x=5" -> "5": a lone variable on the left
        s = s.split("=", 1)[1]
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):  # 1,000 -> 1000 (but not a pair "1,2")
        s = s.replace(",", "")
    if s.startswith("."):
        s = "0" + s
    return s


def _as_number(s: str) -> Fraction | None:
    """`s` (normalised) as an exact rational if it is an integer, decimal, `a/b` or `\\frac{a}{b}`, else `None`."""
    sign = -1 if s.startswith("-") else 1
    s = s.removeprefix("-")
    fraction = re.fullmatch(r"\\frac\{(\d+(?:\.\d+)?)\}\{(\d+(?:\.\d+)?)\}", s) or re.fullmatch(
        r"(\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)", s
    )
    try:
        if fraction:
            return sign * Fraction(fraction[1]) / Fraction(fraction[2])
        if re.fullmatch(r"\d+(?:\.\d+)?", s):
            return sign * Fraction(s)
    except ZeroDivisionError:
        return None
    return None


def answers_match(prediction: str | None, reference: str) -> bool:
    """Whether a predicted answer (`None`: no box) equals the reference after normalisation, or numerically."""
    if prediction is None:
        return False
    prediction, reference = normalize_answer(prediction), normalize_answer(reference)
    if prediction == reference:
        return True
    a, b = _as_number(prediction), _as_number(reference)
    return a is not None and a == b


def score_responses(responses: list[list[str]], references: list[str], answer_from: str = "last") -> dict:
    """avg@n and pass@n (percentages) of `responses[i]`, the n responses to problem i, against `references[i]`.

    Every problem must have the same number of responses n.
    """
    if len(responses) != len(references) or not responses:
        raise ValueError(
            f"Got {len(responses)} response lists for {len(references)} references; need one per problem."
        )
    n = len(responses[0])
    if n == 0 or any(len(r) != n for r in responses):
        raise ValueError("Every problem needs the same, non-zero number of responses.")
    correct = [
        [answers_match(extract_answer(r, answer_from), ref) for r in rs]
        for rs, ref in zip(responses, references, strict=True)
    ]
    return {
        "n": n,
        "problems": len(references),
        f"avg@{n}": 100 * sum(map(sum, correct)) / (n * len(correct)),
        f"pass@{n}": 100 * sum(map(any, correct)) / len(correct),
        "no_box": 100
        * sum(extract_answer(r, answer_from) is None for rs in responses for r in rs)
        / (n * len(correct)),
        "correct": correct,
    }


# Generation


def chat_prompts(tokenizer, problems: list[str], system_prompt: str | None) -> list[str]:
    """Each problem as the text the model sees: its chat template with the optional system prompt."""
    from .prompts import render_prompts

    conversations = [
        [*([{"role": "system", "content": system_prompt}] if system_prompt else []), {"role": "user", "content": p}]
        for p in problems
    ]
    return render_prompts(tokenizer, conversations, tokenize=False)


def generate_hf(model, tokenizer, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
                batch_size: int = 8, on_batch=None) -> list[list[str]]:  # fmt: skip
    """n sampled responses per prompt with HF `generate` (greedy when `temperature` is 0). `on_batch(start, batch)`,
    if given, is called after each batch of prompts with the index of its first prompt and its responses."""
    import torch

    from .prompts import left_pad

    sampling = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    responses = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start : start + batch_size], add_special_tokens=False)["input_ids"]  # rendered text
        input_ids, attention_mask = left_pad(ids, pad_token_id, model.device)  # (b, P)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad_token_id,
                max_new_tokens=max_new_tokens, num_return_sequences=n, **sampling,
            )  # fmt: skip
        texts = tokenizer.batch_decode(output[:, input_ids.shape[1] :], skip_special_tokens=True)
        responses += [texts[i : i + n] for i in range(0, len(texts), n)]
        if on_batch is not None:
            on_batch(start, responses[start:])
    return responses


def generate_vllm(model_name_or_path: str, prompts: list[str], n: int, temperature: float, top_p: float,
                  max_new_tokens: int) -> list[list[str]]:  # fmt: skip
    """n sampled responses per prompt with vLLM (not exercised by this project's CPU-only tests)."""
    from vllm import LLM, SamplingParams

    llm = LLM(model=model_name_or_path)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
    return [[c.text for c in out.outputs] for out in llm.generate(prompts, params)]


def load_model(model_name_or_path: str, dtype: str = "auto"):
    """A causal LM and its tokenizer; a folder holding a PEFT adapter is loaded on its base model and merged."""
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (Path(model_name_or_path) / "adapter_config.json").is_file():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(model_name_or_path, dtype=dtype)
    return model.eval(), AutoTokenizer.from_pretrained(model_name_or_path)


# Command line


@dataclass
class EvaluateArguments:
    """Arguments of `examples/scripts/evaluate_boxed.py`; the defaults follow the paper's MATH-500 evaluation."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "Model (Hub id or folder; a PEFT adapter folder is merged into its base)."}
    )
    dataset_name: str = field(default="HuggingFaceH4/MATH-500", metadata={"help": "Hub dataset or local folder."})
    dataset_split: str = field(default="test", metadata={"help": "Split, with slicing (e.g. 'test[:100]')."})
    problem_column: str = field(default="problem", metadata={"help": "Column holding the problem."})
    answer_column: str = field(default="answer", metadata={"help": "Column holding the reference answer."})
    system_prompt: str | None = field(
        default="Please reason step by step, and put your final answer within \\boxed{}.",
        metadata={"help": "System message; use the one the model was trained with."},
    )
    n: int = field(default=4, metadata={"help": "Responses per problem (the paper: avg@4 / pass@4)."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature (the paper: 0.7)."})
    top_p: float = field(default=0.95, metadata={"help": "Top-p (the paper: 0.95)."})
    max_new_tokens: int = field(default=3584, metadata={"help": "Max new tokens per response (the paper's math cap)."})
    answer_from: str = field(
        default="last",
        metadata={"help": "Which \\boxed{} is the answer: 'last' or 'first'.", "choices": ["last", "first"]},
    )
    batch_size: int = field(default=8, metadata={"help": "Prompts per HF `generate` call."})
    dtype: str = field(default="auto", metadata={"help": "Model dtype ('auto', 'bfloat16', 'float32', ...)."})
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


def _read_responses_file(path: str) -> list[dict]:
    """The rows of a `--responses_file`, each checked: one JSON object per line with `answer` and `responses`."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"`--responses_file` {path} line {number} is not valid JSON ({error.msg}).") from None
            if not isinstance(row, dict) or "answer" not in row or not isinstance(row.get("responses"), list):
                raise ValueError(
                    f"`--responses_file` {path} line {number} needs an 'answer' and a 'responses' list, as "
                    f"`--output_file` writes them; got {line.strip()[:80]!r}."
                )
            rows.append(row)
    if not rows:
        raise ValueError(f"`--responses_file` {path} is empty.")
    return rows


def _load_problems(args: "EvaluateArguments"):
    """The evaluation split: a Hub dataset, a local dataset folder, or one local .json/.jsonl/.parquet file."""
    from pathlib import Path

    from datasets import load_dataset

    path = Path(args.dataset_name).expanduser()
    builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix.lower())
    if path.is_file() and builder is not None:  # the file is the split that `--dataset_split` names
        split_name = args.dataset_split.split("[")[0]
        dataset = load_dataset(builder, data_files={split_name: str(path)}, split=args.dataset_split)
    else:
        dataset = load_dataset(args.dataset_name, split=args.dataset_split)
    missing = [
        f"`--{option}` {column!r}"
        for option, column in (("problem_column", args.problem_column), ("answer_column", args.answer_column))
        if column not in dataset.column_names
    ]
    if missing:
        raise ValueError(
            f"The dataset has no column {' and no column '.join(missing)}; its columns are {dataset.column_names}."
        )
    if len(dataset) == 0:
        raise ValueError(f"`--dataset_split` {args.dataset_split!r} has no rows.")
    return dataset[args.problem_column], [str(a) for a in dataset[args.answer_column]]


def validate_arguments(args: "EvaluateArguments") -> None:
    """Everything that can be checked before a model is loaded or a response generated: raises `ValueError` naming
    the option."""
    from .validation import check_model_path, check_output_file

    if args.output_file is not None:  # checked first: generating everything, then failing to write it, loses it all
        check_output_file("output_file", args.output_file)
    if args.responses_file is not None:
        from pathlib import Path

        if not Path(args.responses_file).is_file():
            raise ValueError(f"`--responses_file` {args.responses_file!r} not found (or not a file).")
        return
    if args.model_name_or_path is None:
        raise ValueError("Set `--model_name_or_path` (or `--responses_file` to score saved responses).")
    for name in ("n", "max_new_tokens", "batch_size"):
        if getattr(args, name) <= 0:
            raise ValueError(f"`--{name}` must be a positive integer, got {getattr(args, name)}.")
    if args.temperature < 0 or not 0 < args.top_p <= 1:
        raise ValueError(
            f"`--temperature` must be >= 0 (0 = greedy) and `--top_p` in (0, 1]; got {args.temperature} and "
            f"{args.top_p}. The paper samples at 0.7 and 0.95."
        )
    check_model_path("model_name_or_path", args.model_name_or_path, adapter=True)


def evaluate(args: EvaluateArguments) -> dict:
    """Generate (or read) the responses, score them, optionally write them out; returns the scores.

    Generated responses are written to `--output_file` batch by batch, as each problem's row is finished: a crash or
    Ctrl-C keeps them, and the exception carries a note saying where they are and how many (without `--output_file`,
    the finished rows are written to a temporary file named in the note)."""
    validate_arguments(args)
    if args.responses_file is not None:
        rows = _read_responses_file(args.responses_file)
        problems = [row.get("problem", "") for row in rows]
        references, responses = [row["answer"] for row in rows], [row["responses"] for row in rows]
        scores = score_responses(responses, references, args.answer_from)
        if args.output_file is not None:  # written after reading: it may be the `--responses_file` itself
            ResultRows(args.output_file, args.answer_from).add(problems, references, responses)
        return {key: value for key, value in scores.items() if key != "correct"}

    from transformers import set_seed

    set_seed(args.seed)
    problems, references = _load_problems(args)  # before the model: a wrong column fails in seconds
    rows = ResultRows(args.output_file, args.answer_from)  # created now: an unwritable path fails before generating
    model, tokenizer = load_model(args.model_name_or_path, args.dtype)
    prompts = chat_prompts(tokenizer, problems, args.system_prompt)
    sampling = (args.n, args.temperature, args.top_p, args.max_new_tokens)
    try:
        if args.use_vllm:
            del model  # vLLM loads its own copy
            responses = generate_vllm(args.model_name_or_path, prompts, *sampling)  # one engine call for all
            rows.add(problems, references, responses)
        else:

            def save(start: int, batch: list[list[str]]) -> None:
                end = start + len(batch)
                rows.add(problems[start:end], references[start:end], batch)

            responses = generate_hf(model, tokenizer, prompts, *sampling, batch_size=args.batch_size, on_batch=save)
    except BaseException as error:  # KeyboardInterrupt too: say what was kept, then let it propagate
        error.add_note(rows.kept(len(problems)))
        raise
    scores = score_responses(responses, references, args.answer_from)
    return {key: value for key, value in scores.items() if key != "correct"}


class ResultRows:
    """The `--output_file` rows (problem, reference, responses, extracted answers, correctness), appended as each
    batch of problems is finished; without a file they are kept in memory, to be saved if the run fails."""

    def __init__(self, path: str | None, answer_from: str):
        self.path, self.answer_from, self.rows = path, answer_from, []
        if path is not None:
            open(path, "w").close()

    def add(self, problems: list[str], references: list[str], responses: list[list[str]]) -> None:
        new = []
        for problem, reference, rs in zip(problems, references, responses, strict=True):
            answers = [extract_answer(r, self.answer_from) for r in rs]
            correct = [answers_match(answer, reference) for answer in answers]
            new.append({"problem": problem, "answer": reference, "responses": rs, "extracted": answers,
                        "correct": correct})  # fmt: skip
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


def main(argv: list[str] | None = None) -> int:
    import sys

    from trl import TrlParser

    (args,) = TrlParser((EvaluateArguments,)).parse_args_and_config(args=argv)
    try:
        scores = evaluate(args)
    except ValueError as error:
        if getattr(error, "__notes__", None):  # raised while generating: a crash, not a bad option
            return _stopped(f"failed ({type(error).__name__})", error, 1)
        print(f"evaluate_boxed: error: {error}", file=sys.stderr)  # a bad option: one line, no traceback
        return 2
    except KeyboardInterrupt as interrupt:
        return _stopped("interrupted", interrupt, 130)
    except Exception as error:
        return _stopped(f"failed ({type(error).__name__})", error, 1)
    print(json.dumps(scores))
    return 0


def _stopped(what: str, error: BaseException, code: int) -> int:
    """A crash or Ctrl-C while generating: the traceback of a crash, then one line saying what was kept."""
    import sys
    import traceback

    if not isinstance(error, KeyboardInterrupt):
        traceback.print_exception(error)
    notes = getattr(error, "__notes__", [])
    print(f"evaluate_boxed: {what}. {notes[-1] if notes else ''}".rstrip(), file=sys.stderr)
    return code
