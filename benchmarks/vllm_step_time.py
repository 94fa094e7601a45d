"""ESR with vLLM rollouts, per step, as ratios in one process: `python -m benchmarks.vllm_step_time [--steps N]`.

Runs in the vLLM environment (`make test-vllm` creates `.venv-vllm`):
`.venv-vllm/bin/python -m benchmarks.vllm_step_time`.
The same student/teacher pair trains with EOS never sampled (so "full" really is L tokens) in four configurations:
vLLM colocate with ESR k=64, vLLM colocate with full rollouts of L=512, and HF `generate` with each. It reports the
median step time and generation time (the first step is a warm-up, left out), then the ratios ESR vs full under vLLM
and vLLM vs HF at the same cap. Both vLLM runs share one engine (built once through TRL's own `LLM(...)` call; TRL
syncs each trainer's weights into it before its first rollout).
"""

import argparse
import json
import os
import statistics
import tempfile
import time


os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # TRL's colocated engine lives in this process
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")

import torch  # noqa: E402
import trl.generation.vllm_generation as trl_vllm_generation  # noqa: E402
from datasets import Dataset  # noqa: E402
from transformers import PrinterCallback, TrainerCallback  # noqa: E402

from trl_esr import ESRConfig, ESRDistillTrainer  # noqa: E402
from trl_esr.demo.tiny_models import build_tiny_causal_lm, build_word_tokenizer, save_pretrained  # noqa: E402


WORDS = [f"w{i}" for i in range(2000)]
# Head size 64: vLLM's CPU attention supports 32, 64, 80, ... (`CPUAttentionBackend.get_supported_head_sizes`).
STUDENT = dict(hidden_size=256, num_layers=4, num_heads=4, max_position_embeddings=1024)
TEACHER = dict(hidden_size=384, num_layers=4, num_heads=6, max_position_embeddings=1024)
K, L, BATCH = 64, 512, 4


class StepTimer(TrainerCallback):
    """Wall time per optimizer step and the part spent generating rollouts (vLLM's `LLM.generate` or HF
    `generate`)."""

    def __init__(self, trainer):
        self.steps, self.generation, self._in_step = [], [], 0.0
        if trainer.use_vllm:
            owner, name = trainer.vllm_generation, "generate"
        else:
            owner, name = trainer.accelerator.unwrap_model(trainer.model), "generate"
        inner = getattr(owner, name)

        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                self._in_step += time.perf_counter() - start

        setattr(owner, name, timed)

    def on_step_begin(self, args, state, control, **kwargs):
        self._start, self._in_step = time.perf_counter(), 0.0

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(time.perf_counter() - self._start)
        self.generation.append(self._in_step)


def share_engines():
    engines, build = {}, trl_vllm_generation.LLM

    def cached(**kwargs):
        key = tuple(sorted((name, repr(value)) for name, value in kwargs.items()))
        if key not in engines:
            engines[key] = build(**kwargs)
        return engines[key]

    trl_vllm_generation.LLM = cached


def run(paths, tokenizer, dataset, steps, use_vllm, k, output_dir):
    no_eos = [i for i in range(len(tokenizer)) if i != tokenizer.eos_token_id]
    args = ESRConfig(
        output_dir=output_dir,
        use_cpu=True,
        bf16=False,
        per_device_train_batch_size=BATCH,
        max_steps=steps,
        max_completion_length=L,
        esr_k=k,
        learning_rate=1e-4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=0,
        esr_diagnostics_steps=0,
        use_vllm=use_vllm,
        vllm_mode="colocate",
        vllm_max_model_length=L + 32,
        generation_kwargs={"allowed_token_ids": no_eos} if use_vllm else {"suppress_tokens": [tokenizer.eos_token_id]},
    )
    trainer = ESRDistillTrainer(
        model=paths["student"],
        teacher_model=paths["teacher"],
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
    )
    trainer.remove_callback(PrinterCallback)
    timer = StepTimer(trainer)
    trainer.add_callback(timer)
    trainer.train()
    generated = [entry["esr/tokens_generated"] for entry in trainer.state.log_history if "esr/k" in entry]
    assert set(generated) == {BATCH * (k or L)}, generated  # every rollout ran to its cap
    return {
        "step_s": statistics.median(timer.steps[1:]),
        "generation_s": statistics.median(timer.generation[1:]),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--steps", type=int, default=4, help="optimizer steps per configuration (the first is warm-up)"
    )
    parser.add_argument("--output", default="bench_results/vllm_step_time.json")
    cli = parser.parse_args()

    share_engines()
    tokenizer = build_word_tokenizer(WORDS)
    with tempfile.TemporaryDirectory() as root:
        paths = {
            "student": save_pretrained(
                build_tiny_causal_lm(tokenizer, "qwen2", seed=0, **STUDENT), tokenizer, f"{root}/s"
            ),
            "teacher": save_pretrained(
                build_tiny_causal_lm(tokenizer, "llama", seed=1, **TEACHER), tokenizer, f"{root}/t"
            ),
        }
        prompts = [[{"role": "user", "content": " ".join(WORDS[i : i + 8])}] for i in range(0, 400, 4)]
        dataset = Dataset.from_dict({"prompt": prompts})
        results = {}
        for name, use_vllm, k in [
            ("vllm_esr", True, K),
            ("vllm_full", True, None),
            ("hf_esr", False, K),
            ("hf_full", False, None),
        ]:
            results[name] = run(paths, tokenizer, dataset, cli.steps, use_vllm, k, f"{root}/{name}")
            print(name, results[name], flush=True)

    ratios = {
        "vllm: full / ESR step": results["vllm_full"]["step_s"] / results["vllm_esr"]["step_s"],
        "vllm: full / ESR generation": results["vllm_full"]["generation_s"] / results["vllm_esr"]["generation_s"],
        "k=64: HF / vLLM step": results["hf_esr"]["step_s"] / results["vllm_esr"]["step_s"],
        "k=64: HF / vLLM generation": results["hf_esr"]["generation_s"] / results["vllm_esr"]["generation_s"],
        "L=512: HF / vLLM step": results["hf_full"]["step_s"] / results["vllm_full"]["step_s"],
        "L=512: HF / vLLM generation": results["hf_full"]["generation_s"] / results["vllm_full"]["generation_s"],
    }
    report = {
        "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
        "shape": {
            "student": STUDENT,
            "teacher": TEACHER,
            "vocabulary": len(tokenizer),
            "batch": BATCH,
            "k": K,
            "L": L,
        },
        "steps": cli.steps,
        "results": results,
        "ratios": ratios,
    }
    os.makedirs(os.path.dirname(cli.output) or ".", exist_ok=True)
    with open(cli.output, "w") as file:
        json.dump(report, file, indent=2)
    print("| configuration | step (s) | generation (s) |\n|---|---|---|")
    for name, row in results.items():
        print(f"| {name} | {row['step_s']:.2f} | {row['generation_s']:.2f} |")
    for name, ratio in ratios.items():
        print(f"{name}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
