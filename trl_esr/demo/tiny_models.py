"""Tiny tokenizers and causal LMs built locally from config, for the demo, tests and benchmarks.

Scaffolding, not part of the ESR core: it lives in the demo layer because `trl-esr demo` builds its models with it at
run time, and `import trl_esr` never loads it.

Nothing here touches the network: the tokenizer is a word-level `tokenizers` model wrapped as a fast tokenizer with a
chat template, and models are created from a transformers config with random weights.
"""

from pathlib import Path

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedModel, PreTrainedTokenizerFast, Qwen2Config


SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]

# A minimal chat template: `<|role|> content <eos>` per message, `<|assistant|>` as the generation prompt.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|> {{ message['content'] }} <eos> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

_ARCHITECTURES = {"qwen2": Qwen2Config, "llama": LlamaConfig}


def build_word_tokenizer(words: list[str]) -> PreTrainedTokenizerFast:
    """A whitespace-split, word-level fast tokenizer over `SPECIAL_TOKENS + words`, left-padded, with a chat template.

    Pass it to trainers as `processing_class`: `AutoTokenizer` on a saved Qwen2 folder can swap in `Qwen2Tokenizer`,
    which breaks a word-level vocabulary.
    """
    vocab = {token: i for i, token in enumerate(dict.fromkeys(SPECIAL_TOKENS + list(words)))}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        unk_token="<unk>",
        padding_side="left",
        truncation_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_causal_lm(
    tokenizer: PreTrainedTokenizerFast,
    architecture: str = "qwen2",
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position_embeddings: int = 512,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised causal LM (`"qwen2"` or `"llama"`) sized for the CPU, sharing `tokenizer`'s ids."""
    import torch

    config = _ARCHITECTURES[architecture](
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_pretrained(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: str | Path) -> str:
    """Save a model with its tokenizer so it loads by path, exactly like a Hub id."""
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)
