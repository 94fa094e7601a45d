r"""Boxed-answer evaluation, as a library: the answer from `\boxed{}`, avg@n and pass@n, and the generation helpers.

The paper evaluates MATH-500 with avg@4 / pass@4 at temperature 0.7, the answer read from `\boxed{}`. avg@n is the
mean accuracy over all n samples of all problems (an estimate of pass@1 with less variance); pass@n is the share of
problems solved by at least one of the n samples. Both are percentages.

Answers are compared after a normalisation in the spirit of the MATH benchmark's `strip_string` (Hendrycks et al.):
LaTeX spacing and sizing commands, `$`, `\text{}` wrappers, units, degrees and a trailing period are removed,
`\dfrac`/`\tfrac` become `\frac`, `\frac12` becomes `\frac{1}{2}`; then two answers match if the strings are equal or
both are the same rational number (`\frac{1}{2}`, `1/2`, `0.5`). It is a string check, not a symbolic one:
`\sqrt{8}` and `2\sqrt{2}` do not match.

Scoring needs no model: `score_responses(responses, references)` on any list of responses. To generate them,
`chat_prompts` renders each problem the way the trainer renders prompts (`trl_esr.prompts`), and `generate_hf` /
`generate_vllm` sample n responses per prompt with the temperature and top-p only (nothing from the checkpoint's
generation config), each a `Response` (its text and its length in tokens).

Next to the accuracy, the scores hold the paper's signs of a degenerating run: the share of responses with several
`\boxed{}` (89 % of a degraded full-rollout run's responses in the paper) and the response lengths (`length_stats`:
median, mean and the share cut at `max_new_tokens`; the paper's ESR responses had a median of ~380 tokens, full
rollout's ~1,530).

The command (`trl-esr evaluate`, `examples/scripts/evaluate_boxed.py`) is `trl_esr/scripts/evaluate_boxed.py`: it adds
the dataset, the model loading, and what a long run needs (inputs checked before the model loads, responses written
batch by batch).
"""

import re
import statistics
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple


# The paper's system prompt: step-by-step reasoning, the final answer in `\boxed{}`.
PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


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


# `\$` before `$`: removing `$` first would leave `\$18.90` as `\18.90`
_DELETED = [r"\left", r"\right", r"\!", r"\,", r"\;", r"\:", r"\ ", r"\$", "$", r"\displaystyle"]
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
        "multi_box": 100 * sum(len(boxed_answers(r)) > 1 for rs in responses for r in rs) / (n * len(correct)),
        "correct": correct,
    }


def length_stats(num_tokens: list[list[int]], truncated: list[list[bool]]) -> dict:
    """Median and mean response length in tokens, and the share (%) of responses cut at `max_new_tokens`."""
    lengths, cut = [t for ts in num_tokens for t in ts], [c for cs in truncated for c in cs]
    if not lengths or len(lengths) != len(cut):
        raise ValueError(
            f"Got {len(lengths)} response lengths and {len(cut)} truncation flags; need one per response."
        )
    return {
        "median_tokens": statistics.median(lengths),
        "mean_tokens": statistics.fmean(lengths),
        "truncated": 100 * sum(cut) / len(cut),
    }


def response_columns(responses: list[list["Response"]]) -> tuple[list[list[str]], list[list[int]], list[list[bool]]]:
    """Texts, lengths in tokens and truncation flags of each problem's responses: the columns `trl-esr evaluate`'s
    `--output_file` keeps and `score_columns` reads."""
    return tuple([[getattr(r, name) for r in rs] for rs in responses] for name in Response._fields)


def score_columns(
    texts: list[list[str]],
    references: list[str],
    answer_from: str = "last",
    num_tokens: list[list[int]] | None = None,
    truncated: list[list[bool]] | None = None,
) -> dict:
    """`score_responses` without the per-response `correct` table, plus `length_stats` when lengths are given:
    what `trl-esr evaluate` prints (of generated or saved responses) and `BoxedAccuracyCallback` logs."""
    scores = score_responses(texts, references, answer_from)
    del scores["correct"]
    return scores if num_tokens is None else {**scores, **length_stats(num_tokens, truncated)}


def score_generated(responses: list[list["Response"]], references: list[str], answer_from: str = "last") -> dict:
    """`score_columns` of generated responses, lengths included."""
    texts, num_tokens, truncated = response_columns(responses)
    return score_columns(texts, references, answer_from, num_tokens, truncated)


# Data


def load_problems(dataset_name: str, split: str, problem_column: str = "problem", answer_column: str = "answer",
                  option_prefix: str = "") -> tuple[list[str], list[str]]:  # fmt: skip
    """The problems and reference answers of an evaluation split: a Hub dataset, a local dataset folder, or one local
    .json/.jsonl/.parquet file (which is the split that `split` names, slicing allowed: "test[:100]"). Errors name
    the command's options, `--{option_prefix}problem_column` and so on."""
    from datasets import load_dataset

    from .validation import explain_split_error

    path = Path(dataset_name).expanduser()
    builder = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}.get(path.suffix.lower())
    try:
        if path.is_file() and builder is not None:
            dataset = load_dataset(builder, data_files={split.split("[")[0]: str(path)}, split=split)
        else:
            dataset = load_dataset(dataset_name, split=split)
    except ValueError as error:  # a split it lacks, a slice that selects nothing: name the option
        explained = explain_split_error(f"{option_prefix}dataset_split", split, False, error)
        if explained is error:
            raise
        raise explained from error
    missing = [
        f"`--{option_prefix}{option}` {column!r}"
        for option, column in (("problem_column", problem_column), ("answer_column", answer_column))
        if column not in dataset.column_names
    ]
    if missing:
        raise ValueError(
            f"The dataset has no column {' and no column '.join(missing)}; its columns are {dataset.column_names}."
        )
    if len(dataset) == 0:
        raise ValueError(f"`--{option_prefix}dataset_split` {split!r} has no rows.")
    return dataset[problem_column], [str(a) for a in dataset[answer_column]]


# Generation


class Response(NamedTuple):
    """One generated response: its text (special tokens skipped), its length in tokens (the stop token, EOS, not
    counted) and whether generation cut it (no EOS before `max_new_tokens`)."""

    text: str
    num_tokens: int
    truncated: bool


def chat_prompts(tokenizer, problems: list[str], system_prompt: str | None, **template_options) -> list[str]:
    """Each problem as the text the model sees: its chat template with the optional system prompt. `template_options`
    go to the template (`chat_template_kwargs` such as `enable_thinking=False`: render as the model was trained)."""
    from .prompts import render_prompts

    conversations = [
        [*([{"role": "system", "content": system_prompt}] if system_prompt else []), {"role": "user", "content": p}]
        for p in problems
    ]
    return render_prompts(tokenizer, conversations, tokenize=False, **template_options)


def generate_hf(model, tokenizer, prompts: list[str], n: int, temperature: float, top_p: float, max_new_tokens: int,
                batch_size: int = 8, on_batch=None) -> list[list[Response]]:  # fmt: skip
    """n sampled responses per prompt with HF `generate` (greedy when `temperature` is 0), with temperature and top-p
    only: nothing from the checkpoint's generation config (its `top_k`, `repetition_penalty`, ...; `trl_esr.sampling`).
    `on_batch(start, batch)`, if given, is called after each batch of prompts with the index of its first prompt and
    its responses."""
    import torch

    from .prompts import left_pad
    from .sampling import plain_sampling

    sampling = plain_sampling(temperature, top_p)
    pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = model.generation_config.eos_token_id
    eos = tokenizer.eos_token_id if eos is None else eos  # what `generate` stops at: the generation config's EOS
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos or []), dtype=torch.long, device=model.device)
    responses = []
    for start in range(0, len(prompts), batch_size):
        ids = tokenizer(prompts[start : start + batch_size], add_special_tokens=False)["input_ids"]  # rendered text
        input_ids, attention_mask = left_pad(ids, pad_token_id, model.device)  # (b, P)
        with torch.no_grad():
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, pad_token_id=pad_token_id,
                max_new_tokens=max_new_tokens, num_return_sequences=n, **sampling,
            )  # fmt: skip
        completions = output[:, input_ids.shape[1] :]  # (b * n, <= max_new_tokens), padded after each EOS
        texts = tokenizer.batch_decode(completions, skip_special_tokens=True)
        is_eos = torch.isin(completions, eos_ids)
        ended = is_eos.any(dim=1)  # a response without EOS ran to max_new_tokens (`generate` ran that long)
        lengths = torch.where(ended, is_eos.int().argmax(dim=1), completions.shape[1])  # tokens before the first EOS
        batch = [Response(t, int(length), not bool(e)) for t, length, e in zip(texts, lengths, ended, strict=True)]
        responses += [batch[i : i + n] for i in range(0, len(batch), n)]
        if on_batch is not None:
            on_batch(start, responses[start:])
    return responses


def generate_vllm(model_name_or_path: str, tokenizer, prompts: list[str], n: int, temperature: float, top_p: float,
                  max_new_tokens: int, seed: int = 0, **llm_kwargs) -> list[list[Response]]:  # fmt: skip
    """n sampled responses per prompt with vLLM, in one engine call, seeded with `seed`; `llm_kwargs` go to `vllm.LLM`
    (e.g. `dtype`, `revision`). The prompts go in as token ids, tokenized as `generate_hf` does: vLLM would tokenize
    text with the special tokens added, a second BOS after the one a Llama-3 or Gemma template writes.
    `tests/vllm_engine/test_evaluation_vllm.py` checks it against `generate_hf` (greedy, vLLM's CPU build)."""
    from vllm import LLM, SamplingParams

    ids = tokenizer(prompts, add_special_tokens=False)["input_ids"]  # rendered text: the template wrote its tokens
    llm = LLM(model=model_name_or_path, seed=seed, **llm_kwargs)
    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
    outputs = llm.generate([{"prompt_token_ids": list(row)} for row in ids], params)
    return [[_vllm_response(c) for c in out.outputs] for out in outputs]


def _vllm_response(completion) -> Response:
    """A vLLM `CompletionOutput` as a `Response`: vLLM keeps the EOS (or stop token id) that ended it in `token_ids`;
    "length" means the cap (or the context) cut it."""
    stopped_by_token = completion.finish_reason == "stop" and not isinstance(completion.stop_reason, str)
    num_tokens = len(completion.token_ids) - int(stopped_by_token)
    return Response(completion.text, num_tokens, completion.finish_reason == "length")
