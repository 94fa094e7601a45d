"""Greedy exact-match accuracy on the held-out split, with full-length generation (never capped at k)."""

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from .pretrain import encode_prompts
from .task import is_correct


@torch.no_grad()
def greedy_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[tuple[int, int]],
    n_digits: int,
    max_new_tokens: int,
    batch_size: int = 256,
) -> float:
    """Fraction of `pairs` whose greedy response ends with the right answer. Restores the model's train/eval mode."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        prompt_ids = torch.tensor(encode_prompts(tokenizer, chunk, n_digits), device=model.device)
        output = model.generate(
            input_ids=prompt_ids,
            attention_mask=torch.ones_like(prompt_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
        responses = tokenizer.batch_decode(output[:, prompt_ids.size(1) :], skip_special_tokens=True)
        correct += sum(is_correct(a, b, n_digits, r) for (a, b), r in zip(chunk, responses, strict=True))
    model.train(was_training)
    return correct / len(pairs)
