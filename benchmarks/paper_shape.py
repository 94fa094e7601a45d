"""Paper-shape benchmark: the efficiency comparison of the ESR paper (its Table 3), through `ESRDistillTrainer`.

The paper (arXiv 2605.27028, Table 3) distils Qwen2.5-Math-1.5B from Qwen3-1.7B with LoRA on one 48 GB A6000, 16
prompts per step: ESR with k=100 takes 8 s per step against 194 s for full rollouts of up to 3,584 tokens (24x;
generation 5 s vs 180 s, training 2 s vs 7 s) and peaks at 24.1 GB against 63.3 GB.

This runner builds both models from config with random weights at exactly those architectures (a word-level tokenizer
of the same 151,936-token vocabulary), adds LoRA r=32 on every linear layer, trains in bf16 on 16 prompts of 150-250
tokens, and suppresses EOS so every rollout runs to its cap: k, or the full-rollout cap L. In one process it runs, each
failure-isolated (an error is recorded in the JSON and the next run starts):

- `esr`: `ESRDistillTrainer` with `esr_k=k`;
- `full`: the same with `esr_k=None` and `max_completion_length=L` (the paper's 3,584, or `--full-length`; `auto` takes
  the longest cap that the measured ESR step predicts to fit `--budget-s`);
- `trl`: plain `trl.DistillationTrainer` with `max_completion_length=k` and the same sampling (our overhead);
- `esr_teacher_4bit`: `esr` with the teacher loaded in 4 bits by bitsandbytes (`teacher_model_init_kwargs`);
- `esr_fsdp2`: `esr` under FSDP2 in a distributed job of one process (the teacher and student heads are DTensors,
  gathered in `trl_esr.loss._full_tensor`).

Per run: one warm-up step, then `--steps` measured steps, each timed as step, generation (the student's `generate`),
training (the rest of the step), and its parts teacher forward and student forward + backward + update; the medians;
every training rollout's length; and the peak memory (`torch.cuda.max_memory_allocated`, reset per run; on CPU the
process's peak resident set size). It writes `results.json` (after every run, so a run killed at a time limit keeps
what it measured), `results.md` and `paper_shape.png`.

    python -m benchmarks.paper_shape --full-length auto --budget-s 330 --output-dir DIR   # one H100/H200
    python -m benchmarks.paper_shape --shapes paper-cpu --output-dir DIR   # the same models on CPU, 2 prompts
    python -m benchmarks.paper_shape --shapes tiny --output-dir DIR   # the same runs at tiny shapes on CPU (a test)
"""

import argparse
import gc
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from importlib.metadata import version
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from torch.distributed.tensor import DTensor
from transformers import AutoModelForCausalLM, BitsAndBytesConfig, PrinterCallback, Qwen2Config, Qwen3Config
from trl import DistillationConfig, DistillationTrainer

from benchmarks.step_time import StepTimer, _device_name, _peak_memory_mib, _reset_peak_memory
from trl_esr import ESRConfig, ESRDistillTrainer
from trl_esr import loss as loss_module
from trl_esr.demo.tiny_models import build_word_tokenizer, save_pretrained


REPO = Path(__file__).resolve().parents[1]

# The paper's pair, from the models' Hub configs (Qwen/Qwen2.5-Math-1.5B, Qwen/Qwen3-1.7B), and a tiny pair of the
# same families for CPU. Widths of the tiny pair are multiples of 32, which bitsandbytes' 4-bit CPU kernels need.
PAPER_PAIR = {
    "words": 151_930,  # + 6 special tokens = 151,936, both models' vocabulary
    "student": (Qwen2Config, dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                                  num_key_value_heads=2, intermediate_size=8960, max_position_embeddings=4096)),
    "teacher": (Qwen3Config, dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16,
                                  num_key_value_heads=8, head_dim=128, intermediate_size=6144,
                                  max_position_embeddings=40960)),
    "prompt_tokens": (150, 250),  # MATH-style problems rendered with a chat template
}  # fmt: skip
SHAPES = {
    "paper": {
        **PAPER_PAIR,
        "device": "cuda",
        "dtype": "bfloat16",
        "batch_size": 16,  # the paper: 16 prompts x 1 rollout per step
        "k": 100,  # the paper's N
        "full_length": 3584,  # the paper's math cap
    },
    # The paper's pair at its real widths, depth and vocabulary, in bf16 on a CPU, with a batch and caps a 2-core CPU
    # steps through in minutes: not the paper's comparison, but every shape of its pair through our code paths
    # (151,936-way heads, GQA, tied embeddings, LoRA on every linear layer, the 4-bit teacher) before a GPU run.
    "paper-cpu": {
        **PAPER_PAIR,
        "device": "cpu",
        "dtype": "bfloat16",
        "batch_size": 2,
        "k": 16,
        "full_length": 64,
    },
    "tiny": {
        "device": "cpu",
        "dtype": "float32",
        "words": 250,
        "student": (Qwen2Config, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256)),
        "teacher": (Qwen3Config, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=16, intermediate_size=128,
                                      max_position_embeddings=256)),
        "prompt_tokens": (10, 20),
        "batch_size": 4,
        "k": 8,
        "full_length": 24,
    },
}  # fmt: skip

# The paper's LoRA: rank 32, alpha 64, dropout 0.05, on every linear layer of the student.
LORA = dict(r=32, lora_alpha=64, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM")

# The paper's Table 3 (one A6000 48 GB), for the report.
PAPER = {
    "device": "NVIDIA RTX A6000 48 GB",
    "k": 100,
    "full_length": 3584,
    "esr": {"step": 8.0, "generation": 5.0, "training": 2.0, "peak_memory_gb": 24.1},
    "full": {"step": 194.0, "generation": 180.0, "training": 7.0, "peak_memory_gb": 63.3},
    "step_speedup": 24,
    "generation_speedup": 36,
}

AUTO_CAPS = (3072, 2560, 2048, 1536, 1024, 768, 512, 256)  # below the shape's cap, for `--full-length auto`


def build_models(shape: str, root: Path, device: str) -> tuple:
    """Save a student and a teacher with random weights (and one shared word-level tokenizer) under `root`."""
    spec = SHAPES[shape]
    tokenizer = build_word_tokenizer([f"w{i}" for i in range(spec["words"])])
    dtype = getattr(torch, spec["dtype"])
    paths, params = {}, {}
    for seed, name in enumerate(("student", "teacher")):
        config_class, shape_kwargs = spec[name]
        config = config_class(
            vocab_size=len(tokenizer),
            tie_word_embeddings=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
            bos_token_id=None,
            **shape_kwargs,
        )
        with torch.random.fork_rng(), torch.device(device):
            torch.manual_seed(seed)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        params[name] = model.num_parameters()
        paths[name] = save_pretrained(model, tokenizer, root / f"{shape}-{name}")
        del model
    _free_memory()
    return tokenizer, paths, params


def make_prompts(tokenizer, shape: str, count: int, seed: int = 0) -> list:
    """`count` chat prompts of random words whose rendering is `prompt_tokens` long (uniformly drawn)."""
    low, high = SHAPES[shape]["prompt_tokens"]
    template_tokens = prompt_length(tokenizer, [{"role": "user", "content": ""}])
    words = [tokenizer.convert_ids_to_tokens(i) for i in range(6, len(tokenizer))]  # past the special tokens
    rng = random.Random(seed)
    return [
        [{"role": "user", "content": " ".join(rng.choices(words, k=rng.randint(low, high) - template_tokens))}]
        for _ in range(count)
    ]


def prompt_length(tokenizer, prompt: list) -> int:
    """Tokens of a chat prompt as the trainer renders it (its chat template, with the generation prompt)."""
    return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False))


def run_config(kind: str, shape: str, paths: dict, tokenizer, workdir: Path, steps: int, max_completion_length: int,
               esr_k: int | None = None, teacher_4bit: bool = False, fsdp2: bool = False) -> dict:  # fmt: skip
    """Train 1 warm-up + `steps` steps of one configuration; return per-step and median timings, rollout lengths and
    peak memory. `kind` is "esr" (`ESRDistillTrainer`) or "trl" (plain `trl.DistillationTrainer`)."""
    spec = SHAPES[shape]
    on_cuda, dtype = spec["device"] == "cuda", spec["dtype"]
    teacher_init = {"dtype": dtype}
    if teacher_4bit:  # bitsandbytes quantizes while loading, onto the GPU (on CPU, in place)
        teacher_init["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=getattr(torch, dtype)
        )
    config = dict(
        output_dir=str(workdir / "out"),
        use_cpu=not on_cuda,
        bf16=dtype == "bfloat16",
        model_init_kwargs={"dtype": dtype},
        teacher_model_init_kwargs=teacher_init,
        per_device_train_batch_size=spec["batch_size"],
        max_steps=steps + 1,
        max_completion_length=max_completion_length,
        learning_rate=1e-5,
        temperature=0.7,  # the paper's sampling (ESRConfig's defaults), also for the TRL baseline
        top_p=0.95,
        generation_kwargs={"suppress_tokens": [tokenizer.eos_token_id]},  # every rollout runs to its cap
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        shuffle_dataset=False,
        seed=0,
    )
    if fsdp2:  # one process: every parameter is a DTensor sharded over a world of one
        config.update(fsdp=True, fsdp_config={"version": 2, "reshard_after_forward": True})
    trainer_kwargs = {}
    if kind == "esr":
        trainer_class, config_class = ESRDistillTrainer, ESRConfig
        config.update(esr_k=esr_k, esr_diagnostics_steps=0, save_on_interrupt=False)
        trainer_kwargs["teacher_processing_class"] = tokenizer  # the shared tokenizer: TRL's fast path
    else:
        trainer_class, config_class = DistillationTrainer, DistillationConfig

    _free_memory()
    memory_before = torch.cuda.memory_allocated() / 2**20 if on_cuda else None
    start = time.perf_counter()
    trainer = trainer_class(
        model=paths["student"],
        teacher_model=paths["teacher"],
        args=config_class(**config),
        processing_class=tokenizer,
        train_dataset=Dataset.from_dict({"prompt": make_prompts(tokenizer, shape, spec["batch_size"] * (steps + 1))}),
        peft_config=LoraConfig(**LORA),
        **trainer_kwargs,
    )
    setup = time.perf_counter() - start
    if fsdp2 and not trainer.is_fsdp_enabled:
        raise RuntimeError(
            f"FSDP2 was asked for (`fsdp=True`, `fsdp_config={{'version': 2}}`) but accelerate "
            f"{_version('accelerate')} left it off: distributed type {trainer.accelerator.distributed_type.value} "
            "(accelerate enables FSDP only for accelerator distributed types such as MULTI_GPU)"
        )
    trainer.remove_callback(PrinterCallback)
    timer = StepTimer(trainer)
    trainer.add_callback(timer)
    lengths = []  # per step, every training rollout's number of completion tokens
    generate_and_score = trainer._generate_and_score_completions

    def recording(inputs):
        batch = generate_and_score(inputs)
        lengths.append(batch["completion_mask"].sum(dim=1).tolist())
        return batch

    trainer._generate_and_score_completions = recording
    _reset_peak_memory()
    trainer.train()
    peak = _peak_memory_mib()
    wall = time.perf_counter() - start
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    checks = {}  # that the run used what it names
    if teacher_4bit:
        import bitsandbytes

        linear_4bit = bitsandbytes.nn.Linear4bit
        checks["teacher_4bit_linear_layers"] = sum(isinstance(m, linear_4bit) for m in trainer.teacher_model.modules())
    if fsdp2:
        checks["student_dtensor_parameters"] = sum(isinstance(p, DTensor) for p in trainer.model_wrapped.parameters())
    per_step = [dict(s, training=s["step"] - s["generation"]) for s in timer.steps]
    trainer.accelerator.free_memory()
    del trainer, timer  # (with `recording`, which holds the trainer: collected when this returns)
    _free_memory()

    measured = per_step[1:]  # the first step is a warm-up
    result = {"trainer": trainer_class.__name__, "esr_k": esr_k, "max_completion_length": max_completion_length,
              "teacher_4bit": teacher_4bit, "fsdp2": fsdp2}  # fmt: skip
    result.update({part: statistics.median(s[part] for s in measured) for part in measured[0]})
    result.update(
        per_step=per_step,
        rollout_lengths=lengths,
        tokens_per_step=statistics.median(sum(step) for step in lengths[1:]),
        generation_s_per_decode_step=result["generation"] / max(max(step) for step in lengths[1:]),
        peak_memory_mib=peak,
        peak_memory_source="torch.cuda.max_memory_allocated" if on_cuda else "process peak RSS (VmHWM)",
        memory_allocated_before_mib=memory_before,
        trainable_parameters=trainable,
        **checks,
        setup_s=setup,
        wall_s=wall,
    )
    return result


def _free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def isolated(name: str, function, *args, **kwargs) -> dict:
    """Run one configuration; an exception becomes the run's `error` (its exact message) instead of ending the
    benchmark."""
    print(f"[paper-shape] {name} ...", flush=True)
    try:
        result = function(*args, **kwargs)
    except Exception as error:  # any failure of one run is a result to report
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-4000:]}
        print(f"[paper-shape] {name} failed: {result['error']}", flush=True)
    _free_memory()
    return result


class FSDP2Job:
    """`esr` under FSDP2 in a distributed job of one process, apart from this one: accelerate's distributed state is
    per process, and a crash or hang there cannot take this process with it. Started first, so that its imports
    overlap the model build; it then waits for its spec (see `fsdp2_worker`)."""

    def __init__(self, workdir: Path):
        self.spec_file, self.result_file = workdir / "fsdp2_spec.json", workdir / "fsdp2_result.json"
        self.ready_file = workdir / "fsdp2_ready"
        with socket.socket() as s:  # a free port for the rendezvous
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        command = [sys.executable, "-m", "benchmarks.paper_shape", "--fsdp2-worker", str(self.spec_file),
                   "--parent-pid", str(os.getpid())]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            # What `torchrun --nproc_per_node 1` would set: accelerate then initialises a process group of one.
            **dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=str(port)),
        }  # fmt: skip
        self.log = open(workdir / "fsdp2.log", "w+")  # read and closed in `run` / `close`
        self.process = subprocess.Popen(command, cwd=REPO, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)  # fmt: skip

    def wait_until_imported(self, timeout: float = 300.0) -> float:
        """Block until the worker has finished its imports (or exited), and return the seconds waited. Measured runs
        start only then: the worker's start-up is CPU-bound (~25 s of imports) and, on a machine with few cores,
        slowed the first run's steps several-fold."""
        start = time.perf_counter()
        while not self.ready_file.exists() and self.process.poll() is None:
            if time.perf_counter() - start > timeout:
                break
            time.sleep(0.1)
        return time.perf_counter() - start

    def run(self, spec: dict, timeout: float) -> dict:
        start = time.perf_counter()
        partial = self.spec_file.with_suffix(".tmp")
        partial.write_text(json.dumps({**spec, "result": str(self.result_file)}))
        partial.replace(self.spec_file)  # the worker sees the whole spec or none
        try:
            returncode = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill()
            returncode = None
        self.log.seek(0)
        output = self.log.read()
        if self.result_file.exists():
            result = json.loads(self.result_file.read_text())
        elif returncode is None:
            result = {"error": f"TimeoutExpired: the FSDP2 job ran past {timeout:.0f} s"}
        else:
            lines = [line for line in output.splitlines() if line.strip()]
            errors = [line for line in lines if "Error" in line.split(":")[0]]
            result = {"error": (errors or lines or [f"exit status {returncode}"])[-1]}
        result["job_wall_s"] = time.perf_counter() - start  # from the spec to the job's end: loading and training
        if returncode != 0 or "error" in result:
            result["returncode"] = returncode
            result["stderr_tail"] = output[-4000:]
        return result

    def __enter__(self):
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._kill()
        self.log.close()

    def _kill(self) -> None:
        if self.process.poll() is None:  # the job's own process group
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def fsdp2_worker(spec_file: str, parent_pid: int) -> None:
    """The FSDP2 job's body: wait for the spec (imports done), run `esr` under FSDP2, and write its result (or exact
    error) to the spec's `result` file."""
    spec_file = Path(spec_file)
    (spec_file.parent / "fsdp2_ready").touch()  # imports done: the measured runs may start (`wait_until_imported`)
    while not spec_file.exists():
        try:
            os.kill(parent_pid, 0)  # is the benchmark still there?
        except ProcessLookupError:
            return
        time.sleep(0.2)
    spec = json.loads(spec_file.read_text())
    tokenizer = build_word_tokenizer([f"w{i}" for i in range(SHAPES[spec["shape"]]["words"])])
    gathered = []  # the heads `trl_esr.loss._full_tensor` received as DTensors and gathered
    full_tensor = loss_module._full_tensor

    def counting(weight, bias, dtype):
        if isinstance(weight, DTensor):
            gathered.append(tuple(weight.shape))
        return full_tensor(weight, bias, dtype)

    loss_module._full_tensor = counting
    result = isolated("esr_fsdp2 (worker)", run_config, "esr", spec["shape"], spec["paths"], tokenizer,
                      Path(spec["workdir"]), spec["steps"], spec["max_completion_length"], esr_k=spec["esr_k"],
                      fsdp2=True)  # fmt: skip
    if "error" not in result:
        result["world_size"] = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        result["dtensor_heads_gathered"] = len(gathered)
    Path(spec["result"]).write_text(json.dumps(result))


def choose_full_length(requested, esr: dict, k: int, steps: int, seconds: float, longest: int) -> tuple[int, dict]:
    """The full-rollout cap: `requested`, or for "auto" the longest of `longest` and the shorter `AUTO_CAPS` whose run
    the ESR run predicts to take at most `seconds`."""
    if requested != "auto":
        return int(requested), {"requested": int(requested)}
    caps = [longest] + [cap for cap in AUTO_CAPS if k < cap < longest]
    if "error" in esr:
        return caps[-1], {"requested": "auto", "reason": "the ESR run failed: the shortest cap"}
    # A decoding step costs a little more as the KV cache grows (x1.25); training scales with the tokens (L / k).
    predicted = {
        cap: esr["setup_s"]
        + (steps + 1) * (1.25 * esr["generation_s_per_decode_step"] * cap + esr["training"] * cap / k)
        for cap in caps
    }
    fitting = [cap for cap in caps if predicted[cap] <= seconds] or [caps[-1]]
    return fitting[0], {"requested": "auto", "seconds_for_full": seconds, "predicted_s": predicted}


def benchmark(shape: str, full_length, steps: int, budget: float | None, output_dir: Path, workdir: Path) -> dict:
    started = time.perf_counter()
    spec = SHAPES[shape]
    device = spec["device"]
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--shapes {shape} needs a CUDA GPU (1.5 B + 1.7 B parameters); on CPU use --shapes paper-cpu (the same "
            "models, 2 prompts, k=16, L=64; 9 minutes and 12 GB on 2 cores) or --shapes tiny (plumbing, seconds)."
        )
    with FSDP2Job(workdir) as fsdp2_job:  # it imports while the models are built
        return _run_all(spec, shape, device, full_length, steps, budget, output_dir, workdir, started, fsdp2_job)


def _run_all(spec, shape, device, full_length, steps, budget, output_dir, workdir, started, fsdp2_job) -> dict:
    k = spec["k"]
    tokenizer, paths, params = build_models(shape, workdir, device)
    worker_wait = fsdp2_job.wait_until_imported()  # nothing else may compete with the timed steps
    prompt_lengths = [
        prompt_length(tokenizer, p) for p in make_prompts(tokenizer, shape, spec["batch_size"] * (steps + 1))
    ]
    results = {
        "shape": shape,
        "device": _device_name(),
        "versions": {
            name: _version(name)
            for name in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets")
        },
        "settings": dict(
            batch_size=spec["batch_size"],
            k=k,
            steps=steps,
            warmup_steps=1,
            fsdp2_worker_import_wait_s=worker_wait,
            lora=LORA,
            dtype=spec["dtype"],
            eos_suppressed=True,
            gradient_checkpointing=True,  # TRL's default for distillation
            prompt_tokens=dict(min=min(prompt_lengths), max=max(prompt_lengths), mean=statistics.mean(prompt_lengths)),
        ),
        "models": {
            name: dict(
                architecture=spec[name][0].model_type,
                parameters=params[name],
                vocab_size=len(tokenizer),
                tie_word_embeddings=True,
                **spec[name][1],
            )
            for name in ("student", "teacher")
        },
        "paper": PAPER,
        "runs": {},
    }

    def seconds_left() -> float:
        return budget - (time.perf_counter() - started) if budget is not None else float("inf")

    def record(name: str, run: dict) -> None:
        results["runs"][name] = run
        results["ratios"] = ratios(results["runs"])
        results["elapsed_s"] = time.perf_counter() - started
        write_json(results, output_dir)

    common = dict(shape=shape, paths=paths, tokenizer=tokenizer, workdir=workdir, steps=steps)
    # ESR runs keep the shape's `max_completion_length` (it caps evaluation only: training rollouts stop at k).
    esr_cap = spec["full_length"]
    record("esr", isolated("esr", run_config, "esr", esr_k=k, max_completion_length=esr_cap, **common))
    # What the runs after `full` should take, from the ESR run's wall time (loading included): TRL about the same, the
    # 4-bit teacher and FSDP2 more (quantizing while loading; sharding, all-gathers). Under a budget, `full` gets the
    # rest, and a later run that is predicted not to fit is recorded as skipped.
    esr_wall = results["runs"]["esr"].get("wall_s", 0.0)
    predicted = {"trl": 1.0 * esr_wall, "esr_teacher_4bit": 1.5 * esr_wall, "esr_fsdp2": 1.5 * esr_wall}
    seconds_for_full = seconds_left() - sum(predicted.values())
    cap, choice = choose_full_length(full_length, results["runs"]["esr"], k, steps, seconds_for_full, esr_cap)
    results["settings"]["full_length"], results["settings"]["full_length_choice"] = cap, choice
    print(f"[paper-shape] full-rollout cap L = {cap}", flush=True)
    record("full", isolated("full", run_config, "esr", esr_k=None, max_completion_length=cap, **common))
    fsdp2_spec = dict(shape=shape, paths=paths, workdir=str(workdir / "fsdp2"), steps=steps,
                      max_completion_length=esr_cap, esr_k=k)  # fmt: skip
    later = [
        ("trl", lambda: run_config("trl", max_completion_length=k, **common)),
        (
            "esr_teacher_4bit",
            lambda: run_config("esr", esr_k=k, max_completion_length=esr_cap, teacher_4bit=True, **common),
        ),
        ("esr_fsdp2", lambda: fsdp2_job.run(fsdp2_spec, timeout=min(seconds_left(), 3600))),
    ]
    for name, function in later:
        if seconds_left() < predicted[name]:
            record(name, {"error": f"skipped: predicted {predicted[name]:.0f} s, {seconds_left():.0f} s of the "
                                   f"{budget:.0f} s budget left"})  # fmt: skip
            continue
        record(name, isolated(name, function))
    return results


def ratios(runs: dict) -> dict:
    """The paper's comparisons: full / ESR (speed-ups, as its 24x), ESR / full memory, ESR / TRL - 1 (overhead)."""
    ok = {name: run for name, run in runs.items() if "error" not in run}
    out = {}
    if "esr" in ok and "full" in ok:
        esr, full = ok["esr"], ok["full"]
        for part in ("step", "generation", "training", "teacher_forward", "student_and_update"):
            out[f"full_over_esr_{part}"] = full[part] / esr[part] if esr[part] > 0 else None
        out["esr_over_full_peak_memory"] = esr["peak_memory_mib"] / full["peak_memory_mib"]
        out["ideal_token_ratio"] = full["tokens_per_step"] / esr["tokens_per_step"]
    if "esr" in ok and "trl" in ok:
        out["esr_over_trl_step_minus_1"] = ok["esr"]["step"] / ok["trl"]["step"] - 1
        out["esr_over_trl_peak_memory"] = ok["esr"]["peak_memory_mib"] / ok["trl"]["peak_memory_mib"]
    for name in ("esr_teacher_4bit", "esr_fsdp2"):
        if "esr" in ok and name in ok:
            out[f"{name}_over_esr_step"] = ok[name]["step"] / ok["esr"]["step"]
            out[f"{name}_over_esr_peak_memory"] = ok[name]["peak_memory_mib"] / ok["esr"]["peak_memory_mib"]
    return out


def _version(name: str) -> str | None:
    try:
        return version(name)
    except Exception:  # a missing package is reported as None
        return None


def write_json(results: dict, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    partial = output_dir / "results.json.tmp"
    partial.write_text(json.dumps(results, indent=2))
    partial.replace(output_dir / "results.json")


ROWS = (
    ("esr", "ESR k={k} (`ESRDistillTrainer`)"),
    ("full", "full rollout L={L} (`ESRDistillTrainer`, `esr_k=None`)"),
    ("trl", "plain `trl.DistillationTrainer`, `max_completion_length={k}`"),
    ("esr_teacher_4bit", "ESR k={k}, 4-bit (nf4) teacher"),
    ("esr_fsdp2", "ESR k={k}, FSDP2, one process"),
)


def write_report(results: dict, output_dir: Path) -> str:
    write_json(results, output_dir)
    s, r = results["settings"], results.get("ratios", {})
    k, length = s["k"], s.get("full_length")
    student, teacher = results["models"]["student"], results["models"]["teacher"]
    lines = [
        f"Device: {results['device']}. Student {student['architecture']} {student['parameters'] / 1e6:,.1f} M, "
        f"teacher {teacher['architecture']} {teacher['parameters'] / 1e6:,.1f} M parameters (random weights, "
        f"vocabulary {student['vocab_size']:,}), LoRA r={s['lora']['r']} on all linear layers, {s['dtype']}; "
        f"{s['batch_size']} prompts of {s['prompt_tokens']['min']}-{s['prompt_tokens']['max']} tokens per step, EOS "
        f"suppressed; median of {s['steps']} steps after a warm-up step.",
        "",
        "| run | step (s) | generation (s) | training (s) | teacher fwd (s) | student fwd+bwd+update (s) | "
        "rollout tokens | peak memory (MiB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, label in ROWS:
        run = results["runs"].get(name)
        if run is None:
            continue
        label = label.format(k=k, L=length)
        if "error" in run:
            error = run["error"][:300].replace("`", "'").replace("|", "/")
            lines.append(f"| {label} | error: `{error}` | | | | | | |")
            continue
        widths = sorted({n for step in run["rollout_lengths"] for n in step})
        lines.append(
            f"| {label} | {run['step']:.3f} | {run['generation']:.3f} | {run['training']:.3f} | "
            f"{run['teacher_forward']:.3f} | {run['student_and_update']:.3f} | {'/'.join(map(str, widths))} | "
            f"{run['peak_memory_mib']:,.0f} |"
        )
    lines.append("")
    if "full_over_esr_step" in r:
        lines.append(
            f"ESR k={k} vs full L={length}: step {r['full_over_esr_step']:.1f}x faster (paper at L=3,584: 24x), "
            f"generation {r['full_over_esr_generation']:.1f}x (paper: 36x), training "
            f"{r['full_over_esr_training']:.1f}x (paper: 7 s / 2 s = 3.5x); peak memory "
            f"{r['esr_over_full_peak_memory']:.2f} of full (paper: 24.1 / 63.3 GB = 0.38). Token ratio L/k = "
            f"{r['ideal_token_ratio']:.1f}."
        )
    if "esr_over_trl_step_minus_1" in r:
        lines.append(f"ESR vs plain TRL at the same cap (k={k}): step {r['esr_over_trl_step_minus_1']:+.1%}.")
    lines.append(f"Peak memory: {results['runs'].get('esr', {}).get('peak_memory_source', 'n/a')}.")
    report = "\n".join(lines) + "\n"
    (output_dir / "results.md").write_text(report)
    _plot(results, output_dir / "paper_shape.png")
    return report


def _plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = {name: run for name, run in results["runs"].items() if "error" not in run}
    names = list(runs)
    fig, (time_ax, memory_ax) = plt.subplots(1, 2, figsize=(11, 3.8))
    generation = [runs[n]["generation"] for n in names]
    training = [runs[n]["training"] for n in names]
    time_ax.bar(names, generation, label="generation")
    time_ax.bar(names, training, bottom=generation, label="training (teacher + student fwd/bwd + update)")
    time_ax.set(ylabel="seconds per step", yscale="log" if len(names) > 1 else "linear",
                title=f"{results['shape']} shapes, L={results['settings'].get('full_length')}, "
                      f"k={results['settings']['k']}")  # fmt: skip
    time_ax.legend(fontsize=7)
    memory_ax.bar(names, [runs[n]["peak_memory_mib"] / 1024 for n in names], color="tab:gray")
    memory_ax.set(ylabel="peak memory (GiB)", title=results["device"][:60])
    for ax in (time_ax, memory_ax):
        ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shapes",
        choices=list(SHAPES),
        default="paper",
        help="'paper': the paper's pair on a CUDA GPU, bf16; 'paper-cpu': the same models in bf16 on CPU, 2 prompts, "
        "k=16, L=64; 'tiny': the same runs at tiny shapes on CPU, float32",
    )
    parser.add_argument(
        "--full-length",
        default=None,
        help="the full-rollout cap L: an int, or 'auto' (the longest that fits --budget-s); "
        "default: the shape's (3,584 for 'paper', the paper's math cap)",
    )
    parser.add_argument("--steps", type=int, default=2, help="measured steps per run, after one warm-up step")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="seconds for the whole benchmark: 'auto' sizes L to it; runs that would start past it "
        "are recorded as skipped",
    )
    parser.add_argument(
        "--output-dir", default="bench_results/paper_shape", help="results.{json,md} and paper_shape.png"
    )
    parser.add_argument("--fsdp2-worker", metavar="SPEC", help=argparse.SUPPRESS)  # the FSDP2 job (internal)
    parser.add_argument("--parent-pid", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.fsdp2_worker:
        fsdp2_worker(args.fsdp2_worker, args.parent_pid)
        return {}
    if args.full_length == "auto" and args.budget_s is None:
        parser.error("--full-length auto needs --budget-s")
    full_length = args.full_length or SHAPES[args.shapes]["full_length"]
    output_dir = Path(args.output_dir)
    with tempfile.TemporaryDirectory() as workdir:
        results = benchmark(args.shapes, full_length, args.steps, args.budget_s, output_dir, Path(workdir))
    print(write_report(results, output_dir), flush=True)
    return results


if __name__ == "__main__":
    main()
