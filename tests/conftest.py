"""Shared offline fixtures: a word-level tokenizer and tiny Qwen2/Llama models saved to disk and loaded by path."""

import os


os.environ["HF_HUB_OFFLINE"] = "1"  # no test may touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402
from datasets import Dataset  # noqa: E402

from trl_esr import ESRConfig, ESRDistillTrainer  # noqa: E402
from trl_esr.demo.tiny_models import build_tiny_causal_lm, build_word_tokenizer, save_pretrained  # noqa: E402


WORDS = [f"w{i}" for i in range(40)]


@pytest.fixture(scope="session")
def tokenizer():
    return build_word_tokenizer(WORDS)


@pytest.fixture(scope="session")
def model_paths(tmp_path_factory, tokenizer):
    """A Qwen2 student and a wider Llama teacher (same vocabulary), saved like Hub checkpoints."""
    root = tmp_path_factory.mktemp("models")
    student = build_tiny_causal_lm(tokenizer, "qwen2", hidden_size=32, seed=0)
    teacher = build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=1)
    return {
        "student": save_pretrained(student, tokenizer, root / "student"),
        "teacher": save_pretrained(teacher, tokenizer, root / "teacher"),
    }


@pytest.fixture(scope="session")
def vocabularies(tmp_path_factory):
    """Real tokenizers (tests/real_tokenizers.py) by name, each built on first use and kept: ~15 s for all of them,
    most of it Qwen3.5's 248,044 ranks. The Gemma ones come from scripts/fetch_vocabularies.sh: a test that needs them
    skips without them, or fails where `TRL_ESR_REQUIRE_VOCABULARIES=1` (CI)."""
    import real_tokenizers as real

    builders = {
        "qwen2.5": lambda: real.qwen_tokenizer("2.5"),
        "qwen3": lambda: real.qwen_tokenizer("3"),
        "qwen3.5": real.qwen35_tokenizer,
        "llama3": real.llama3_tokenizer,
        "mistral": lambda: real.mistral_tokenizer(tmp_path_factory.mktemp("mistral")),
        "gemma2": lambda: real.gemma_tokenizer("2"),
        "gemma3": lambda: real.gemma_tokenizer("3"),
    }

    class Vocabularies(dict):
        def __missing__(self, name):
            try:
                self[name] = builders[name]()
            except FileNotFoundError as error:
                if os.environ.get("TRL_ESR_REQUIRE_VOCABULARIES") == "1":
                    pytest.fail(str(error))
                pytest.skip(str(error))
            return self[name]

    return Vocabularies()


@pytest.fixture(scope="session")
def train_dataset():
    """Conversational prompts of 3-5 words."""
    prompts = [[{"role": "user", "content": " ".join(WORDS[i : i + 3 + i % 3])}] for i in range(32)]
    return Dataset.from_dict({"prompt": prompts})


@pytest.fixture
def make_args(tmp_path, tokenizer):
    """ESRConfig factory with CPU-friendly defaults; keyword arguments override them."""

    def make(config_class=ESRConfig, suppress_eos: bool = True, **overrides) -> ESRConfig:
        defaults = dict(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            bf16=False,
            gradient_checkpointing=False,
            per_device_train_batch_size=2,
            gradient_accumulation_steps=1,
            max_steps=2,
            max_completion_length=24,
            esr_k=8,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=42,
            # EOS suppressed: every rollout runs until a length cap, so caps are observable
            generation_kwargs={"suppress_tokens": [tokenizer.eos_token_id]} if suppress_eos else None,
        )
        if config_class is not ESRConfig:  # a plain TRL config has no ESR fields
            defaults.pop("esr_k")
        return config_class(**{**defaults, **overrides})

    return make


@pytest.fixture
def make_trainer(model_paths, tokenizer, train_dataset):
    """Trainer factory: the tiny Qwen2 student and Llama teacher, the word tokenizer and the chat prompts, each
    overridable by keyword (`model`, `teacher_model`, `train_dataset`, `processing_class`, ...); `trainer_class`
    builds another trainer (e.g. TRL's `DistillationTrainer`) from the same pieces."""

    def make(args, trainer_class=ESRDistillTrainer, **overrides):
        pieces = dict(model=model_paths["student"], teacher_model=model_paths["teacher"], train_dataset=train_dataset,
                      processing_class=tokenizer)  # fmt: skip
        return trainer_class(args=args, **{**pieces, **overrides})

    return make


def trainable_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def all_snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}
