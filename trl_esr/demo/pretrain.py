"""Supervised pre-training of the demo's teacher and students from scratch, with a plain PyTorch loop.

The teacher is trained on the derivation format until it solves the task. Each regime's student, smaller, gets its
own gap to close: the errors-beyond-k student sees far fewer steps of the same data; the early-decision student sees
a mix in which most examples use the shortcut format (`task.shortcut`). The loss covers the response tokens only,
laid out exactly as TRL lays out a rollout (the chat template's generation prompt, then the response, then EOS).
"""

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained

from .task import build_tokenizer, derivation, prompt, shortcut


def chat_prompt(a: int, b: int, n_digits: int) -> list[dict]:
    """The prompt as TRL receives it: one user message, rendered by the tokenizer's chat template."""
    return [{"role": "user", "content": prompt(a, b, n_digits)}]


def encode_prompts(tokenizer: PreTrainedTokenizerFast, pairs: list[tuple[int, int]], n_digits: int) -> list[list[int]]:
    conversations = [chat_prompt(a, b, n_digits) for a, b in pairs]
    return tokenizer.apply_chat_template(conversations, add_generation_prompt=True, tokenize=True, return_dict=True)[
        "input_ids"
    ]


def sft_responses(pairs: list[tuple[int, int]], n_digits: int, shortcut_fraction: float, seed: int) -> list[str]:
    """The SFT target of each pair: the derivation, or with probability `shortcut_fraction` the shortcut."""
    rng = random.Random(seed)
    return [
        shortcut(a, b, n_digits) if rng.random() < shortcut_fraction else derivation(a, b, n_digits) for a, b in pairs
    ]


def encode_examples(
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[tuple[int, int]],
    n_digits: int,
    responses: list[str],
    prompt_ids: list[list[int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids, attention_mask, labels)` of prompt + response + EOS, right-padded; labels are -100 on the prompt
    and the padding. Every prompt of the task has the same length; responses differ only when shortcuts mix in.
    `prompt_ids`, if given, are `encode_prompts(tokenizer, pairs, n_digits)` (the models share them)."""
    prompt_ids = encode_prompts(tokenizer, pairs, n_digits) if prompt_ids is None else prompt_ids
    response_ids = tokenizer([r + " " + tokenizer.eos_token for r in responses], add_special_tokens=False)["input_ids"]
    rows = [p + r for p, r in zip(prompt_ids, response_ids, strict=True)]
    lengths = torch.tensor([len(row) for row in rows])
    attention_mask = (torch.arange(int(lengths.max()))[None, :] < lengths[:, None]).long()  # (N, width)
    input_ids = torch.full(attention_mask.shape, tokenizer.pad_token_id)
    input_ids[attention_mask.bool()] = torch.tensor([token for row in rows for token in row])  # row-major order
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    labels[:, : len(prompt_ids[0])] = -100
    return input_ids, attention_mask, labels


def supervised_finetune(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[tuple[int, int]],
    n_digits: int,
    steps: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    desc: str,
    shortcut_fraction: float = 0.0,
    prompt_ids: list[list[int]] | None = None,
) -> PreTrainedModel:
    """AdamW with linear warm-up and cosine decay on random mini-batches of `pairs` (with replacement)."""
    responses = sft_responses(pairs, n_digits, shortcut_fraction, seed)
    device = model.device
    examples = encode_examples(tokenizer, pairs, n_digits, responses, prompt_ids)
    input_ids, attention_mask, labels = (t.to(device) for t in examples)
    # foreach: one kernel per step for all tensors, bit-identical to the per-tensor loop here and ~3 % faster
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=0.01, foreach=True)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: (
            min(1.0, (step + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * step / steps))).item()
        ),
    )
    generator = torch.Generator().manual_seed(seed)
    model.train()
    bar = tqdm(range(steps), desc=desc, unit="step")
    for _ in bar:
        index = torch.randint(len(pairs), (batch_size,), generator=generator).to(device)
        loss = model(input_ids=input_ids[index], attention_mask=attention_mask[index], labels=labels[index]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    model.eval()
    return model


@dataclass(frozen=True)
class ModelRecipe:
    """Everything that determines a pre-trained model; the cache is reused only when the saved recipe matches."""

    architecture: str
    hidden_size: int
    num_layers: int
    sft_steps: int
    sft_batch_size: int
    learning_rate: float
    n_digits: int
    seed: int
    shortcut_fraction: float = 0.0  # share of SFT examples in the shortcut format (the early-decision student)
    kernels: str = ""  # the device and CPU kernels that trained it (`kernels.cache_key`): others round differently


def is_cached(recipe: ModelRecipe, path: Path) -> bool:
    """Whether `path` holds a model built from this exact recipe."""
    recipe_file = path / "demo_recipe.json"
    return recipe_file.exists() and json.loads(recipe_file.read_text()) == asdict(recipe)


def pretrain(
    name: str,
    recipe: ModelRecipe,
    tokenizer: PreTrainedTokenizerFast,
    pairs: list[tuple[int, int]],
    path: Path,
    device,
    prompt_ids: list[list[int]] | None = None,
) -> None:
    """Train one model from scratch on `pairs` and save it (with its recipe, the cache key) at `path`."""
    print(
        f"Training the {name} from scratch: {recipe.architecture}, hidden size {recipe.hidden_size}, "
        f"{recipe.num_layers} layers, {recipe.sft_steps} SFT steps of {recipe.sft_batch_size} examples"
        + (f", {recipe.shortcut_fraction:.0%} of them in the shortcut format." if recipe.shortcut_fraction else ".")
    )
    model = build_tiny_causal_lm(
        tokenizer,
        recipe.architecture,
        hidden_size=recipe.hidden_size,
        num_layers=recipe.num_layers,
        num_heads=4,
        max_position_embeddings=128,
        seed=recipe.seed,
    ).to(device)
    supervised_finetune(
        model, tokenizer, pairs, recipe.n_digits, recipe.sft_steps, recipe.sft_batch_size, recipe.learning_rate,
        recipe.seed, desc=f"SFT {name}", shortcut_fraction=recipe.shortcut_fraction, prompt_ids=prompt_ids,
    )  # fmt: skip
    save_pretrained(model, tokenizer, path)
    (path / "demo_recipe.json").write_text(json.dumps(asdict(recipe), indent=2))


def pretrain_missing(
    jobs: list[tuple[str, ModelRecipe, Path]], pairs: list[tuple[int, int]], device, threads: int
) -> None:
    """Train, one after another with `threads` torch threads, every model of `jobs` (name, recipe, path) whose cache
    is missing or was built from another recipe.

    Not side by side: two 1-thread processes on this 2-core CPU trained the three models in 179 s against 186 s for
    one 2-thread process (each process ran at about half its solo speed), not worth a process pool.
    """
    tokenizer, prompt_ids = build_tokenizer(), {}  # n_digits -> the prompts' ids, rendered once for all models
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for name, recipe, path in jobs:
            if is_cached(recipe, path):
                print(f"Reusing the cached {name} from {path} (delete it to retrain).")
                continue
            if recipe.n_digits not in prompt_ids:
                prompt_ids[recipe.n_digits] = encode_prompts(tokenizer, pairs, recipe.n_digits)
            pretrain(name, recipe, tokenizer, pairs, path, device, prompt_ids[recipe.n_digits])
    finally:
        torch.set_num_threads(previous)


def load_pretrained(path: Path, device) -> PreTrainedModel:
    return AutoModelForCausalLM.from_pretrained(path).to(device).eval()
