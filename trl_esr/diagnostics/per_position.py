"""Per-position statistics of full-length student rollouts scored by the teacher.

Where along a response does the teacher disagree with the student? We sample complete student responses, run one
forward of each model over them, and measure at every response position t (0-based, t = 0 is the first generated
token) the reverse KL the ESR loss minimises, both models' entropies and whether the teacher would have written the
token the student sampled. Statistics are then aggregated over the rollouts still *alive* at t (not yet ended by EOS).

Full `(B, T, V)` logits are materialised here (unlike TRL's chunked loss): fine for a diagnostic, with batches of a few
rollouts and the float32 softmaxes computed a chunk of positions at a time to bound memory.
"""

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase

from ..prompts import left_pad


# float32 softmaxes are computed over this many positions at a time: 256 x 152k vocab x 4 bytes ~ 150 MB per tensor.
POSITION_CHUNK = 256


@dataclass
class PositionStats:
    """Per-token statistics of N rollouts, right-padded to the longest one: every tensor is `(N, T)`.

    Attributes:
        reverse_kl: KL(student ‖ teacher) of the next-token distributions, in nats, on untempered logits.
        student_entropy: entropy of the student's next-token distribution, in nats.
        teacher_entropy: entropy of the teacher's next-token distribution, in nats.
        teacher_agrees: 1.0 where the teacher's argmax equals the token the student sampled, else 0.0.
        mask: True at real response tokens (the EOS token included, as in TRL's loss), False at padding.
    """

    reverse_kl: torch.Tensor
    student_entropy: torch.Tensor
    teacher_entropy: torch.Tensor
    teacher_agrees: torch.Tensor
    mask: torch.Tensor


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    generation_config: GenerationConfig,
    pad_token_id: int,
    eos_token_ids: list[int],
    batch_size: int = 8,
    show_progress: bool = True,
    on_batch: Callable[[int, list[list[int]]], None] | None = None,
) -> list[list[int]]:
    """Sample one completion per prompt with HF `generate` (vLLM is not used here) and return its token ids, cut
    after the first EOS (kept). The caller seeds the RNG; the batch size is part of what a seed reproduces.

    `on_batch(start, completions)`, if given, is called after each batch with the index of its first prompt and its
    completions (to save them as they are made: see `run_diagnostics`' `save_dir`)."""
    model.eval()
    completions = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="student rollouts", disable=not show_progress):
        prompts = prompt_ids[start : start + batch_size]
        input_ids, attention_mask = left_pad(prompts, pad_token_id, model.device)  # (b, P)
        output = model.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=generation_config
        )
        batch = []
        for row in output[:, input_ids.size(1) :].tolist():  # (b, C)
            ends = [i for i, token in enumerate(row) if token in eos_token_ids]
            batch.append(row[: ends[0] + 1] if ends else row)
        completions += batch
        if on_batch is not None:
            on_batch(start, batch)
    return completions


@torch.no_grad()
def score_completions(
    student: PreTrainedModel,
    teacher: PreTrainedModel,
    prompt_ids: list[list[int]],
    completion_ids: list[list[int]],
    pad_token_id: int,
    batch_size: int = 8,
    show_progress: bool = True,
    teacher_prompt_ids: list[list[int]] | None = None,
    length: int | None = None,
    on_batch: Callable[[int, tuple[torch.Tensor, ...]], None] | None = None,
) -> PositionStats:
    """Score each completion with one forward of the student and one of the teacher per batch and return the
    per-token statistics (see [`PositionStats`]). Both models must share the tokenizer and vocabulary. With
    `teacher_prompt_ids`, the teacher reads the completion after its own rendering of the prompt (the trainer's
    `teacher_chat_template`), as in training.

    Every batch is right-padded to `length` positions (default: the longest completion), so scoring a slice of the
    completions with the full set's `length` gives the same numbers as scoring them all. `on_batch(start, stats)`, if
    given, is called after each batch with the index of its first completion and its `PositionStats` fields.

    This is the single place where the per-position reverse KL is computed; anything that plots or aggregates it
    (the `suggest-k` report, the training callback, the demo) calls this function.
    """
    student.eval()
    teacher.eval()
    if length is None:
        length = max(len(completion) for completion in completion_ids)
    batches = []
    for start in tqdm(range(0, len(prompt_ids), batch_size), desc="scoring", disable=not show_progress):
        prompts, completions = prompt_ids[start : start + batch_size], completion_ids[start : start + batch_size]
        teacher_prompts = prompts if teacher_prompt_ids is None else teacher_prompt_ids[start : start + batch_size]
        batches.append(_score_batch(student, teacher, prompts, teacher_prompts, completions, pad_token_id, length))
        if on_batch is not None:
            on_batch(start, batches[-1])
    if not batches:
        return empty_stats(length)
    return PositionStats(*(torch.cat([batch[i] for batch in batches]) for i in range(5)))


def empty_stats(length: int) -> PositionStats:
    """`PositionStats` of no rollout, `(0, length)` tensors."""
    zeros = torch.zeros(0, length)
    return PositionStats(zeros, zeros.clone(), zeros.clone(), zeros.clone(), torch.zeros(0, length, dtype=torch.bool))


def _score_batch(
    student, teacher, prompts, teacher_prompts, completions, pad_token_id, length
) -> tuple[torch.Tensor, ...]:
    device = student.device
    completion_tensor = torch.full((len(completions), length), pad_token_id, dtype=torch.long, device=device)
    completion_mask = torch.zeros_like(completion_tensor, dtype=torch.bool)  # (b, C)
    for i, completion in enumerate(completions):
        completion_tensor[i, : len(completion)] = torch.tensor(completion, device=device)
        completion_mask[i, : len(completion)] = True

    def model_inputs(prompt_rows: list[list[int]]) -> dict[str, torch.Tensor]:
        prompt_tensor, prompt_mask = left_pad(prompt_rows, pad_token_id, device)  # (b, P)
        attention_mask = torch.cat([prompt_mask, completion_mask.long()], dim=1)  # (b, P + C)
        # Positions count real tokens only, as `generate` does with left padding, so a padded prompt scores like an
        # unpadded one.
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # (b, P + C)
        input_ids = torch.cat([prompt_tensor, completion_tensor], dim=1)  # (b, P + C)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "position_ids": position_ids}

    # Logits at positions P-1 .. P+C-2 predict completion tokens 0 .. C-1: keep C + 1 and drop the last.
    student_logits = student(**model_inputs(prompts), logits_to_keep=length + 1).logits[:, :-1]  # (b, C, V)
    teacher_inputs = _to(model_inputs(teacher_prompts), teacher.device)
    teacher_logits = teacher(**teacher_inputs, logits_to_keep=length + 1).logits[:, :-1]  # (b, C, V)
    if student_logits.size(-1) != teacher_logits.size(-1):
        raise ValueError(
            f"The student's vocabulary has {student_logits.size(-1)} entries and the teacher's "
            f"{teacher_logits.size(-1)}: the per-token KL needs a shared vocabulary (same tokenizer and vocab_size)."
        )
    teacher_logits = teacher_logits.to(device)

    chunks = [
        _token_stats(
            student_logits[:, t : t + POSITION_CHUNK],
            teacher_logits[:, t : t + POSITION_CHUNK],
            completion_tensor[:, t : t + POSITION_CHUNK],
        )  # fmt: skip
        for t in range(0, length, POSITION_CHUNK)
    ]
    stats = [torch.cat([chunk[i] for chunk in chunks], dim=1) for i in range(4)]
    stats = [(s * completion_mask).float().cpu() for s in stats]  # zero at padding, (b, C) each
    return (*stats, completion_mask.cpu())


def _token_stats(student_logits, teacher_logits, tokens) -> tuple[torch.Tensor, ...]:
    """Reverse KL, both entropies and teacher agreement at each position: logits `(b, c, V)`, tokens `(b, c)`.

    p = p_student, q = p_teacher, untempered (T = 1) as in the paper's loss:
    KL(p ‖ q) = Σ_v p(v) (log p(v) − log q(v)),   H(p) = −Σ_v p(v) log p(v).
    """
    log_p = torch.log_softmax(student_logits.float(), dim=-1)  # (b, c, V)
    log_q = torch.log_softmax(teacher_logits.float(), dim=-1)  # (b, c, V)
    p = log_p.exp()
    reverse_kl = (p * (log_p - log_q)).sum(-1)  # (b, c)
    student_entropy = -(p * log_p).sum(-1)  # (b, c)
    teacher_entropy = -(log_q.exp() * log_q).sum(-1)  # (b, c)
    # Would the teacher have written the token the student actually sampled? (Not the student's argmax: at T = 0.7
    # the sampled token is what the next prefix, and so the teacher's next judgement, is built on.)
    teacher_agrees = (teacher_logits.argmax(-1) == tokens).float()  # (b, c)
    return reverse_kl, student_entropy, teacher_entropy, teacher_agrees


def _to(inputs: dict[str, torch.Tensor], device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in inputs.items()}


@dataclass
class PositionSummary:
    """Statistics at each response position t, over the rollouts still alive at t. Lists have one entry per position.

    Attributes:
        alive: number of rollouts that reach position t.
        kl_mean: mean reverse KL over those rollouts.
        kl_quantiles: quantiles of the reverse KL over those rollouts, keyed `"q10"`, `"q50"`, ...
        student_entropy_mean, teacher_entropy_mean: mean entropies over those rollouts.
        teacher_agreement: fraction of those rollouts whose sampled token is the teacher's argmax.
    """

    alive: list[int]
    kl_mean: list[float]
    kl_quantiles: dict[str, list[float]]
    student_entropy_mean: list[float]
    teacher_entropy_mean: list[float]
    teacher_agreement: list[float]


def summarize(stats: PositionStats, quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)) -> PositionSummary:
    """Aggregate per-token statistics into per-position ones over the rollouts alive at each position."""
    alive = stats.mask.sum(dim=0)  # (T,)
    length = int(alive.nonzero().max()) + 1 if alive.any() else 0  # trailing positions no rollout reaches are dropped
    alive, mask = alive[:length], stats.mask[:, :length]  # (T,), (N, T)

    def mean(values: torch.Tensor) -> list[float]:
        return (values[:, :length].sum(dim=0) / alive).tolist()  # padding is 0, so the sum runs over alive rollouts

    kl = stats.reverse_kl[:, :length].masked_fill(~mask, float("nan"))  # (N, T)
    kl_quantiles = torch.nanquantile(kl, torch.tensor(quantiles), dim=0)  # (Q, T)
    return PositionSummary(
        alive=alive.tolist(),
        kl_mean=mean(stats.reverse_kl),
        kl_quantiles={f"q{round(q * 100)}": row.tolist() for q, row in zip(quantiles, kl_quantiles, strict=True)},
        student_entropy_mean=mean(stats.student_entropy),
        teacher_entropy_mean=mean(stats.teacher_entropy),
        teacher_agreement=mean(stats.teacher_agrees),
    )


@contextlib.contextmanager
def seeded_sampling(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with torch's RNG (CPU, and `device` if it is a GPU) seeded with `seed`, and put the caller's RNG
    state back afterwards: the same seed gives the same rollouts, and a training run's own sampling is not shifted."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices, device_type=device.type if devices else "cuda"):
        torch.manual_seed(seed)
        yield


def eos_token_ids(tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> list[int]:
    """The tokenizer's EOS plus any the model's generation config adds (chat models often stop on several)."""
    model_eos = model.generation_config.eos_token_id
    model_eos = [] if model_eos is None else [model_eos] if isinstance(model_eos, int) else list(model_eos)
    return list(dict.fromkeys([tokenizer.eos_token_id, *model_eos]))
