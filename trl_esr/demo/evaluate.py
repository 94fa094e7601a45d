"""Greedy exact-match accuracy on the held-out split, with full-length generation (never capped at k)."""

import hashlib

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerFast

from ..diagnostics import sample_completions, score_completions, summarize
from ..diagnostics.per_position import seeded_sampling
from ..sampling import plain_sampling
from .pretrain import encode_prompts
from .task import is_correct


def weights_digest(model: PreTrainedModel) -> str:
    """A SHA-256 of every tensor of `model`'s state dict (name, dtype, shape and bytes): equal exactly when the
    weights are."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


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


def per_position_reverse_kl(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[tuple[int, int]],
    n_digits: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[float]:
    """Mean KL(student || teacher) at each response position, over full-length student rollouts.

    Rollouts are sampled like ESR's training rollouts (same temperature and top-p) but never stopped at k; the KL
    uses untempered logits of both models, as the training loss does. Position t averages over the rollouts still
    running at t (EOS included). Sampling and scoring are `trl_esr.diagnostics`', as in `trl-esr suggest-k`.
    """
    was_training = student.training
    prompt_ids = encode_prompts(tokenizer, pairs, n_digits)
    sampling = GenerationConfig(
        max_new_tokens=max_new_tokens,
        **plain_sampling(temperature, top_p),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with seeded_sampling(seed, student.device):
        completions = sample_completions(
            student,
            prompt_ids,
            sampling,
            tokenizer.pad_token_id,
            [tokenizer.eos_token_id],
            batch_size=len(pairs),
            show_progress=False,
        )
    stats = score_completions(
        student, teacher, prompt_ids, completions, tokenizer.pad_token_id, batch_size=len(pairs), show_progress=False
    )
    student.train(was_training)
    return summarize(stats).kl_mean
