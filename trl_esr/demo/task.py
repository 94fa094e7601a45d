"""The demo's synthetic task: column addition of two n-digit numbers, written out digit by digit with carries.

Prompt `3 4 7 1 + 5 8 9 2`, response `1 + 2 + 0 = 0 3 ; 7 + 9 + 0 = 1 6 ; 4 + 8 + 1 = 1 3 ; 3 + 5 + 1 = 0 9 ;
answer 0 9 3 6 3`: one step per column from the right (digit + digit + carry-in = two-digit sum), then the answer,
carry first. The answer is exactly verifiable, the derivation is a few dozen tokens long, and every step depends on
the carries written before it, so a mistake early on decides the rest. Each digit and symbol is its own
whitespace-separated word, so a word-level tokenizer covers the task with 14 words.

The early-decision regime adds a *shortcut* format, `answer 0 8 7 6 3` at once: each column's digits summed without
carries, right only when no column carries (about 9 % of 4-digit problems). Whether a response takes it is decided by
its first token.
"""

import random

from transformers import PreTrainedTokenizerFast

from trl_esr.demo.tiny_models import build_word_tokenizer


VOCAB = [str(d) for d in range(10)] + ["+", "=", ";", "answer"]


def prompt(a: int, b: int, n_digits: int) -> str:
    return f"{_spaced(a, n_digits)} + {_spaced(b, n_digits)}"


def derivation(a: int, b: int, n_digits: int) -> str:
    """The reference response: one `x + y + carry = t u ;` step per column, right to left, then `answer`."""
    steps, carry = [], 0
    for x, y in zip(reversed(f"{a:0{n_digits}d}"), reversed(f"{b:0{n_digits}d}"), strict=True):
        total = int(x) + int(y) + carry
        steps.append(f"{x} + {y} + {carry} = {total // 10} {total % 10} ;")
        carry = total // 10
    return " ".join(steps) + f" answer {_spaced(a + b, n_digits + 1)}"


def shortcut(a: int, b: int, n_digits: int) -> str:
    """The unreliable format: `answer 0` and each column's sum mod 10 (no carries), with no derivation."""
    digits = [(int(x) + int(y)) % 10 for x, y in zip(f"{a:0{n_digits}d}", f"{b:0{n_digits}d}", strict=True)]
    return "answer 0 " + " ".join(map(str, digits))


def answer_of(response: str) -> str | None:
    """The digits after the last `answer` word (None when there is none): what the answer checker compares."""
    words = response.split()
    if "answer" not in words:
        return None
    last = len(words) - 1 - words[::-1].index("answer")
    return "".join(w for w in words[last + 1 :] if w.isdigit()) or None


def is_correct(a: int, b: int, n_digits: int, response: str) -> bool:
    """Exact match of the final answer; the derivation itself is not graded."""
    return answer_of(response) == f"{a + b:0{n_digits + 1}d}"


def response_length(n_digits: int) -> int:
    """Number of words of every reference response (all responses have the same shape)."""
    return 9 * n_digits + 1 + (n_digits + 1)


def make_splits(n_digits: int, sizes: dict[str, int], seed: int) -> dict[str, list[tuple[int, int]]]:
    """Disjoint splits of distinct (a, b) pairs, e.g. `{"sft": 20000, "distill": 2000, "test": 200}`."""
    rng = random.Random(seed)
    pairs: set[tuple[int, int]] = set()
    top = 10**n_digits
    while len(pairs) < sum(sizes.values()):
        pairs.add((rng.randrange(top), rng.randrange(top)))
    ordered = sorted(pairs)
    rng.shuffle(ordered)
    splits, start = {}, 0
    for name, size in sizes.items():
        splits[name] = ordered[start : start + size]
        start += size
    return splits


def build_tokenizer() -> PreTrainedTokenizerFast:
    return build_word_tokenizer(VOCAB)


def _spaced(number: int, width: int) -> str:
    return " ".join(f"{number:0{width}d}")
