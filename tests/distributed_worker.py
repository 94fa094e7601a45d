"""Run by `torchrun --nproc_per_node 2` from test_distributed.py: trains one ESR step per rank and writes a report.

Argv: models_dir output_dir loss_normalization [eos_on_rank1] [tokenizer_alignment]. With `eos_on_rank1`, rank 1's
student can only emit EOS, so every rollout there ends at its first token while rank 0's run on.
"""

import json
import os
import sys


os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from helpers import DivergenceSpy, record_batches  # noqa: E402

from trl_esr import BoxedAccuracyCallback, ESRConfig, ESRDistillTrainer, boxed_eval  # noqa: E402
from trl_esr.demo.tiny_models import build_word_tokenizer  # noqa: E402
from trl_esr.evaluation import generate_hf  # noqa: E402


def main(models_dir: str, output_dir: str, loss_normalization: str, eos_on_rank1: str = "", alignment="auto") -> None:
    tokenizer = build_word_tokenizer([f"w{i}" for i in range(40)])
    only_eos = [i for i in range(len(tokenizer)) if i != tokenizer.eos_token_id]
    generation_kwargs = {"suppress_tokens": only_eos} if eos_on_rank1 and os.environ["RANK"] == "1" else None
    prompts = [[{"role": "user", "content": " ".join(f"w{j}" for j in range(i, i + 3))}] for i in range(16)]
    args = ESRConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[],
        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=2, learning_rate=1e-2,
        esr_k=6, max_completion_length=12, loss_normalization=loss_normalization, save_strategy="no", seed=0,
        generation_kwargs=generation_kwargs, tokenizer_alignment=alignment, esr_diagnostics_steps=0,
    )  # fmt: skip
    trainer = ESRDistillTrainer(
        model=os.path.join(models_dir, "student"),
        teacher_model=os.path.join(models_dir, "teacher"),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
    )
    spy, batches = DivergenceSpy(trainer), record_batches(trainer)  # the aligned path goes through it too
    # 5 problems: shares of 3 (rank 0) and 2 (rank 1), measured after the last step, greedy
    problems = [" ".join(f"w{j}" for j in range(i, i + 1 + i % 3)) for i in range(5)]
    boxed = BoxedAccuracyCallback(trainer, problems, [str(i) for i in range(5)], every_n_steps=2, system_prompt=None)
    trainer.add_callback(boxed)
    shares = []  # the prompts this rank's measurement generated
    boxed_eval.generate_hf = lambda model, tok, prompts, *a, **kw: (
        shares.append(prompts) or generate_hf(model, tok, prompts, *a, **kw)
    )
    initial = torch.cat([p.detach().flatten().clone() for p in trainer.model.parameters()])
    trainer.train()
    final = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    student = trainer.accelerator.unwrap_model(trainer.model).eval()
    alone = generate_hf(student, tokenizer, boxed.prompts, 1, 0.0, 1.0, args.max_completion_length)  # all 5 here
    report = {
        "world_size": trainer.accelerator.num_processes,
        "rank": trainer.accelerator.process_index,
        # per optimizer step: what this rank generated, and the normaliser its loss received (already / world size)
        "local_tokens": [b["completion_mask"].sum().item() for b in batches],
        "local_rollouts": [b["completion_mask"].size(0) for b in batches],
        "normalisers": [float(c["num_items_in_batch"]) for c in spy.calls],
        "losses": [e["loss"] for e in trainer.state.log_history if "loss" in e],
        "moved": (final - initial).abs().max().item(),
        "final_params": final.tolist()[:2000],
        "boxed_history": boxed.history,
        "boxed_logged": [e["boxed/mean_tokens"] for e in trainer.state.log_history if "boxed/mean_tokens" in e],
        "boxed_responses": boxed.responses,  # gathered from both ranks
        "boxed_alone": alone,  # this rank's own generation of every problem
        "boxed_share": [boxed.prompts.index(prompt) for prompts in shares for prompt in prompts],
    }
    with open(os.path.join(output_dir, f"rank{report['rank']}.json"), "w") as f:
        json.dump(report, f)
    # Everything the test reads is written. Without destroying the process group, a rank was once aborted at
    # interpreter exit ("terminate called without an active exception", gloo's threads torn down unjoined, exit code
    # -6) after finishing its work; leave without that teardown, as tests/dtensor_worker.py does.
    trainer.accelerator.end_training()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main(*sys.argv[1:])
