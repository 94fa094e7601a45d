"""Cost of the cross-tokenizer alignment per training step, on real vocabularies.

`python -m benchmarks.alignment` times `trl_esr.cross_tokenizer.Aligner` on 16 rollouts (the paper's prompts per step)
of 100 (ESR's k), 512, 2,048 and 3,584 (the paper's full-rollout math cap) tokens, for a Llama-3 student with a Qwen3
teacher (NFC normaliser), a Qwen2.5 student with a Llama-3 teacher, a Qwen3 student with a Qwen3.5 teacher (a
248,077-token vocabulary) and, when scripts/fetch_vocabularies.sh has fetched them, the paper's Gemma-2 student with a
Gemma-3 teacher (SentencePiece; 256,000 and 262,145 ids). Rollouts are slices of mixed prose, LaTeX,
code, CJK and emoji text, tokenized by the student. Best of 3 runs per length; the ratio to the shortest length
shows the growth (16 rollouts x L tokens: linear means ratio ~ L / 100).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from tests.real_tokenizers import (
    GEMMA_STOP_IDS,
    LLAMA3_STOP_IDS,
    TEXTS,
    gemma_tokenizer,
    llama3_tokenizer,
    qwen35_tokenizer,
    qwen_tokenizer,
)
from trl_esr.cross_tokenizer import Aligner


LENGTHS = (100, 512, 2048, 3584)
ROLLOUTS = 16


def best_seconds(aligner: Aligner, corpus: list[int], length: int, stop_ids: list[int], repeats: int = 3) -> float:
    ids = torch.tensor([corpus[i * 13 : i * 13 + length] for i in range(ROLLOUTS)])
    mask = torch.ones_like(ids)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        aligner(ids, mask, stop_ids)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default="bench_results/alignment")
    parser.add_argument("--lengths", type=int, nargs="+", default=list(LENGTHS))
    args = parser.parse_args(argv)
    qwen3, qwen25, llama3, qwen35 = qwen_tokenizer("3"), qwen_tokenizer("2.5"), llama3_tokenizer(), qwen35_tokenizer()
    pairs = {
        "llama3 <- qwen3": (llama3, qwen3, LLAMA3_STOP_IDS),
        "qwen2.5 <- llama3": (qwen25, llama3, None),
        "qwen3 <- qwen3.5": (qwen3, qwen35, None),
    }
    try:
        pairs["gemma2 <- gemma3"] = (gemma_tokenizer("2"), gemma_tokenizer("3"), GEMMA_STOP_IDS["2"])
    except FileNotFoundError as error:
        print(f"gemma2 <- gemma3: left out ({error})")
    text = " ".join(TEXTS.values()) * 100
    results = {"rollouts": ROLLOUTS, "seconds": {}}
    for name, (student, teacher, stop_ids) in pairs.items():
        aligner = Aligner(student, teacher)
        corpus = student(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        seconds = {n: best_seconds(aligner, corpus, n, stop_ids or [student.eos_token_id]) for n in args.lengths}
        results["seconds"][name] = seconds
        for n, s in seconds.items():
            print(f"{name}: {ROLLOUTS} x {n:>5} tokens: {s * 1000:8.1f} ms  ({s / seconds[args.lengths[0]]:5.1f}x)")
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "alignment.json").write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
