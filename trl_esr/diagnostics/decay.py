"""Teacher-decay probe: how well does the teacher finish a problem from a student-written prefix of k tokens?

The paper's motivation (its "Off-policy Teacher Decay", Figure 1): its Qwen3-1.7B teacher scores 65.30 on MATH-500
alone, 62.70 when continuing greedily from a 100-token student prefix and 51.75 from a 300-token one. The longer the
student prefix, the less the teacher's guidance is worth, which is why ESR trains on early tokens only. This probe
measures that curve for your pair on any task with a verifiable answer.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..evaluation import answers_match, extract_answer
from ..sampling import greedy
from .per_position import eos_token_ids, sample_completions


AnswerChecker = Callable[[dict, str], bool]


@dataclass
class DecayResult:
    """Teacher accuracy per prefix length.

    Attributes:
        k_grid: student-prefix lengths, in tokens; 0 is the teacher answering alone.
        accuracy: fraction of prompts the teacher answers correctly from a student prefix of k tokens.
        num_prompts: prompts scored at each k.
        num_short: student responses shorter than k (EOS excluded): the whole response is the prefix, so the teacher
            only continues after it.
    """

    k_grid: list[int]
    accuracy: list[float]
    num_prompts: list[int]
    num_short: list[int]


def teacher_decay_probe(
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_rows: Sequence[dict],
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    k_grid: Sequence[int],
    answer_checker: AnswerChecker,
    max_completion_length: int,
    batch_size: int = 8,
    show_progress: bool = True,
    done: dict[int, tuple[float, int, int]] | None = None,
    on_k: Callable[[int, float, int, int], None] | None = None,
) -> DecayResult:
    """Cut each student completion after k tokens, let the teacher continue greedily up to `max_completion_length`
    response tokens in all, and check the full response (prefix + continuation) with `answer_checker(row, text)`.

    Greedy decoding makes the probe deterministic given the student rollouts. Teacher and student share the tokenizer.
    `done` maps a k already measured (by an interrupted run) to its `(accuracy, num_prompts, num_short)`, which is
    reused; `on_k(k, accuracy, num_prompts, num_short)` is called after each k measured here.
    """
    if any(not 0 <= k < max_completion_length for k in k_grid):
        raise ValueError(f"Every k of the probe grid must be in [0, {max_completion_length}); got {list(k_grid)}.")
    eos_ids = eos_token_ids(tokenizer, teacher)
    accuracy, num_prompts, num_short = [], [], []
    for k in tqdm(k_grid, desc="teacher-decay probe", disable=not show_progress):
        if done and k in done:
            for values, value in zip((accuracy, num_prompts, num_short), done[k], strict=True):
                values.append(value)
            continue
        prefixes = [[token for token in completion if token not in eos_ids][:k] for completion in completion_ids]
        generation_config = GenerationConfig(
            max_new_tokens=max_completion_length - k,
            **greedy(),  # not the teacher's own `repetition_penalty`: the probe grades what it writes unaided
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=eos_ids,
        )
        continuations = sample_completions(
            teacher,
            [prompt + prefix for prompt, prefix in zip(prompt_ids, prefixes, strict=True)],
            generation_config,
            tokenizer.pad_token_id,
            eos_ids,
            batch_size,
            show_progress=False,
        )
        correct = [
            answer_checker(row, tokenizer.decode(prefix + continuation, skip_special_tokens=True))
            for row, prefix, continuation in zip(prompt_rows, prefixes, continuations, strict=True)
        ]
        accuracy.append(sum(correct) / len(correct))
        num_prompts.append(len(correct))
        num_short.append(sum(len(prefix) < k for prefix in prefixes))
        if on_k is not None:
            on_k(k, accuracy[-1], num_prompts[-1], num_short[-1])
    return DecayResult(list(k_grid), accuracy, num_prompts, num_short)


def boxed_answer_checker(answer_column: str = "answer") -> AnswerChecker:
    """A checker for boxed math: the response's last `\\boxed{}` must match the row's reference, with the answer
    normalisation of `trl_esr.evaluation` (the MATH-500 evaluation script's). The reference is `row[answer_column]`, or
    its own last `\\boxed{}` when it has one (e.g. a NuminaMath-CoT `solution`)."""

    def check(row: dict, response: str) -> bool:
        reference = str(row[answer_column])
        return answers_match(extract_answer(response), extract_answer(reference) or reference)

    return check
