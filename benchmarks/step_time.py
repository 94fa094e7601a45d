"""What ESR saves per step, measured as ratios in one process: `python -m benchmarks.step_time [--quick]`.

For each model size, the same student/teacher pair trains for the same steps with ESR at each k and with full rollouts
of L tokens (EOS suppressed, so "full" really is L tokens), on identical seeds. Per configuration it reports the median
step time and its parts: generation (the student's `generate`), teacher forward (the teacher backbone), and the rest
(student forward + backward + the divergence + optimizer update), tokens generated per second, and the peak memory
(resident set size on CPU, CUDA peak on GPU); then each as a ratio to the full rollout. An overhead check compares
`ESRDistillTrainer` with plain `trl.DistillationTrainer` capped at the same k. The first step of every run is a
warm-up and is left out of the medians.
"""

import argparse
import functools
import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import PrinterCallback, TrainerCallback
from trl import DistillationConfig, DistillationTrainer

from trl_esr import ESRConfig, ESRDistillTrainer, cross_tokenizer
from trl_esr.demo.tiny_models import build_tiny_causal_lm, build_word_tokenizer, save_pretrained


# Student/teacher shapes. "tiny" is the test suite's pair; "medium" a student of tens of millions of parameters
# (8,000-word vocabulary, untied embeddings) with a larger teacher; the report prints the exact counts.
SIZES = {
    "tiny": {
        "words": 40,
        "student": dict(hidden_size=32, num_layers=2, num_heads=4),
        "teacher": dict(hidden_size=48, num_layers=2, num_heads=4),
    },
    "medium": {
        "words": 8000,
        "student": dict(hidden_size=512, num_layers=8, num_heads=8),
        "teacher": dict(hidden_size=640, num_layers=10, num_heads=10),
    },
}


class StepTimer(TrainerCallback):
    """Wall time per optimizer step, and the share spent in the student's `generate`, the teacher's backbone and, for
    a cross-tokenizer teacher, the re-tokenization and alignment of rollouts (`cross_tokenizer.align_batch`)."""

    def __init__(self, trainer):
        self.steps, self._generation, self._teacher, self._alignment = [], 0.0, 0.0, 0.0
        student, teacher = trainer.model, trainer.teacher_model
        student.generate = self._timed(student.generate, "_generation")
        self._align_batch = cross_tokenizer.align_batch
        cross_tokenizer.align_batch = self._timed(self._align_batch, "_alignment")
        teacher.base_model.register_forward_pre_hook(lambda *_: setattr(self, "_teacher_start", _now()))
        teacher.base_model.register_forward_hook(lambda *_: self._add_teacher(_now() - self._teacher_start))

    def _timed(self, function, counter: str):
        def timed(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                setattr(self, counter, getattr(self, counter) + time.perf_counter() - start)

        return timed

    def _add_teacher(self, seconds):
        self._teacher += seconds

    def on_step_begin(self, args, state, control, **kwargs):
        self._generation = self._teacher = self._alignment = 0.0
        self._start = _now()

    def on_train_end(self, args, state, control, **kwargs):
        cross_tokenizer.align_batch = self._align_batch

    def on_step_end(self, args, state, control, **kwargs):
        total = _now() - self._start
        self.steps.append(
            {
                "step": total,
                "generation": self._generation,
                "teacher_forward": self._teacher,
                "alignment": self._alignment,
                "student_and_update": total - self._generation - self._teacher - self._alignment,
            }
        )


def _now() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def _reset_peak_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    else:  # Linux: writing 5 to clear_refs resets the process's peak resident set size (VmHWM)
        Path("/proc/self/clear_refs").write_text("5")


def _peak_memory_mib() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    status = Path("/proc/self/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("VmHWM")).split()[1]) / 1024


def build_pair(size: str, root: Path):
    spec = SIZES[size]
    words = [f"w{i}" for i in range(spec["words"])]
    tokenizer = build_word_tokenizer(words)
    context = 1024
    student = build_tiny_causal_lm(tokenizer, "qwen2", max_position_embeddings=context, seed=0, **spec["student"])
    teacher = build_tiny_causal_lm(tokenizer, "llama", max_position_embeddings=context, seed=1, **spec["teacher"])
    params = {"student": student.num_parameters(), "teacher": teacher.num_parameters()}
    paths = {
        name: save_pretrained(model, tokenizer, root / f"{size}-{name}")
        for name, model in (("student", student), ("teacher", teacher))
    }
    # A teacher whose tokenizer maps the same words to other ids: the pair goes through the cross-tokenizer path
    # (re-tokenization, offset alignment, shared-vocabulary KL) with every position aligned.
    shuffled = build_word_tokenizer(random.Random(0).sample(words, len(words)))
    other = build_tiny_causal_lm(shuffled, "llama", max_position_embeddings=context, seed=1, **spec["teacher"])
    paths["cross_tokenizer_teacher"] = save_pretrained(other, shuffled, root / f"{size}-cross-teacher")
    return tokenizer, paths, params


def run(trainer_class, config_class, paths, tokenizer, output_dir, steps, batch_size, **config) -> dict:
    """Train `steps` + 1 warm-up step and return the median timings, token counts and peak memory."""
    words = [tokenizer.convert_ids_to_tokens(i) for i in range(6, len(tokenizer))]
    prompts = [
        [{"role": "user", "content": " ".join(words[(7 * i + j) % len(words)] for j in range(8))}]
        for i in range(batch_size * (steps + 1))
    ]
    args = config_class(
        output_dir=str(output_dir),
        use_cpu=not torch.cuda.is_available(),
        bf16=False,
        report_to=[],
        gradient_checkpointing=False,
        per_device_train_batch_size=batch_size,
        max_steps=steps + 1,
        logging_steps=1,
        learning_rate=1e-4,
        save_strategy="no",
        seed=0,
        disable_tqdm=True,
        shuffle_dataset=False,
        generation_kwargs={"suppress_tokens": [tokenizer.eos_token_id]},
        **config,
    )
    trainer = trainer_class(
        model=paths["student"],
        teacher_model=paths["teacher"],
        args=args,
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
    )
    trainer.remove_callback(PrinterCallback)  # quiet: the report comes at the end
    timer = StepTimer(trainer)
    trainer.add_callback(timer)
    _reset_peak_memory()
    trainer.train()
    measured = timer.steps[1:]  # leave out the warm-up step
    lengths = [e["completions/mean_length"] for e in trainer.state.log_history if "completions/mean_length" in e][1:]
    tokens = statistics.median(lengths) * batch_size
    result = {part: statistics.median(step[part] for step in measured) for part in measured[0]}
    result.update(
        tokens_generated=tokens,
        max_completion_tokens=max(lengths),
        tokens_per_second=tokens / result["generation"],
        peak_memory_mib=_peak_memory_mib(),
    )
    return result


def benchmark(sizes, ks, full_length, steps, batch_size, workdir: Path) -> dict:
    results = {
        "device": _device_name(),
        "steps": steps,
        "batch_size": batch_size,
        "full_length": full_length,
        "sizes": {},
    }
    for size in sizes:
        tokenizer, paths, params = build_pair(size, workdir)
        print(
            f"[bench] {size}: student {params['student'] / 1e6:.2f} M, teacher {params['teacher'] / 1e6:.2f} M params"
        )

        esr = functools.partial(run, ESRDistillTrainer, ESRConfig, tokenizer=tokenizer, output_dir=workdir / "out",
                                steps=steps, batch_size=batch_size)  # fmt: skip

        configs = {}
        for k in [None, *ks]:
            name = "full" if k is None else f"k={k}"
            print(f"[bench] {size}: ESR {name} ...", flush=True)
            configs[name] = esr(paths=paths, esr_k=k, max_completion_length=full_length)
        full = configs["full"]
        for name, result in configs.items():
            k = full_length if name == "full" else int(name[2:])
            result["speedup"] = full["step"] / result["step"]
            result["ideal_speedup"] = full_length / k  # the token ratio
            result["fraction_of_ideal"] = result["speedup"] / result["ideal_speedup"]
            for part in ("generation", "teacher_forward", "student_and_update", "peak_memory_mib"):
                result[f"{part}_ratio_to_full"] = result[part] / full[part]
        k = ks[len(ks) // 2 - 1] if len(ks) > 1 else ks[0]  # overhead/cross-tokenizer cap: 32 of 16/32/64/128
        print(f"[bench] {size}: overhead check at k={k} ...", flush=True)
        overhead = {
            "k": k,
            "trl": run(
                DistillationTrainer,
                DistillationConfig,
                paths,
                tokenizer,
                workdir / "out",
                steps,
                batch_size,
                max_completion_length=k,
                temperature=0.7,  # ESRConfig's sampling defaults: top-p filtering costs time on its own
                top_p=0.95,
            ),
            "esr_token": esr(paths=paths, esr_k=k, max_completion_length=full_length, loss_normalization="token"),
            "esr_sequence": configs[f"k={k}"],
        }
        for name in ("esr_token", "esr_sequence"):
            overhead[f"{name}_over_trl"] = overhead[name]["step"] / overhead["trl"]["step"] - 1
        print(f"[bench] {size}: cross-tokenizer teacher at k={k} ...", flush=True)
        cross_paths = {"student": paths["student"], "teacher": paths["cross_tokenizer_teacher"]}
        cross = esr(paths=cross_paths, esr_k=k, max_completion_length=full_length)
        cross["k"], cross["alignment_share"] = k, cross["alignment"] / cross["step"]
        cross["step_over_same_tokenizer"] = cross["step"] / configs[f"k={k}"]["step"]
        results["sizes"][size] = {"params": params, "configs": configs, "overhead": overhead, "cross_tokenizer": cross}
    return results


def _device_name() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"CPU, {os.cpu_count()} cores, torch {torch.__version__}"


def write_report(results: dict, output_dir: Path) -> str:
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "results.json").write_text(json.dumps(results, indent=2))
    lines = [
        f"Device: {results['device']}; batch {results['batch_size']} prompts; median of {results['steps']} steps "
        f"after a warm-up step; full rollout = {results['full_length']} tokens (EOS suppressed).",
        "",
    ]
    for size, data in results["sizes"].items():
        p = data["params"]
        lines += [
            f"### {size} (student {p['student'] / 1e6:.2f} M, teacher {p['teacher'] / 1e6:.2f} M parameters)",
            "",
            "| config | step (s) | generation (s) | teacher fwd (s) | student fwd+bwd+update (s) | tokens/step | "
            "gen tok/s | peak mem (MiB) | speed-up vs full | ideal (L/k) | fraction of ideal |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for name, r in data["configs"].items():
            lines.append(
                f"| {name} | {r['step']:.3f} | {r['generation']:.3f} | {r['teacher_forward']:.3f} | "
                f"{r['student_and_update']:.3f} | {r['tokens_generated']:.0f} | {r['tokens_per_second']:.0f} | "
                f"{r['peak_memory_mib']:.0f} | {r['speedup']:.2f}x | {r['ideal_speedup']:.0f}x | "
                f"{r['fraction_of_ideal']:.0%} |"
            )
        o = data["overhead"]
        lines += [
            "",
            f"Overhead at k={o['k']} vs plain `trl.DistillationTrainer` with `max_completion_length={o['k']}`"
            f' (step {o["trl"]["step"]:.3f} s): ESR with `loss_normalization="token"` '
            f'{o["esr_token_over_trl"]:+.1%} ({o["esr_token"]["step"]:.3f} s); ESR default ("sequence") '
            f"{o['esr_sequence_over_trl']:+.1%} ({o['esr_sequence']['step']:.3f} s).",
            "",
            f"Cross-tokenizer teacher at k={data['cross_tokenizer']['k']} (same words, other ids; every position "
            f"aligned): step {data['cross_tokenizer']['step']:.3f} s, of which re-tokenization + alignment "
            f"{data['cross_tokenizer']['alignment']:.3f} s ({data['cross_tokenizer']['alignment_share']:.1%}); "
            f"{data['cross_tokenizer']['step_over_same_tokenizer']:.2f}x the same-tokenizer step.",
            "",
        ]
    report = "\n".join(lines)
    (output_dir / "results.md").write_text(report)
    _plot(results, output_dir / "step_time_vs_k.png")
    return report


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    sizes = list(results["sizes"])
    fig, axes = plt.subplots(1, len(sizes), figsize=(5 * len(sizes), 3.6), squeeze=False)
    for ax, size in zip(axes[0], sizes, strict=True):
        configs = results["sizes"][size]["configs"]
        ks = [int(n[2:]) for n in configs if n != "full"]
        for part, style in (("step", "o-"), ("generation", "s--"), ("teacher_forward", "^:")):
            ax.plot(ks, [configs[f"k={k}"][part] for k in ks], style, label=f"ESR {part.replace('_', ' ')}")
        ax.axhline(configs["full"]["step"], color="black", label=f"full rollout step (L={results['full_length']})")
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="k (tokens per training rollout)",
            ylabel="seconds",
            title=f"{size} pair, {results['device']}",
        )
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())  # only the k values are labelled
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", default="bench_results", help="where results.{json,md} and the plot go")
    parser.add_argument("--quick", action="store_true", help="tiny pair, 2 steps, k in {4, 8}, L=16: a smoke test")
    parser.add_argument("--steps", type=int, default=5, help="measured steps per configuration (after one warm-up)")
    parser.add_argument("--batch-size", type=int, default=4, help="prompts (= rollouts) per step")
    args = parser.parse_args(argv)
    if args.quick:
        sizes, ks, full_length, steps = ["tiny"], [4, 8], 16, 2
    else:
        sizes, ks, full_length, steps = ["tiny", "medium"], [16, 32, 64, 128], 512, args.steps
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as workdir:
        results = benchmark(sizes, ks, full_length, steps, args.batch_size, Path(workdir))
    print(write_report(results, Path(args.output_dir)))
    return results


if __name__ == "__main__":
    main()
