"""Run by test_guards.py in a subprocess: a 6-step ESR run (linear k schedule) that may SIGTERM itself.

Argv: models_dir output_dir mode, mode in {"full", "interrupt", "resume"}. Writes `<mode>.json` with the logged
per-step losses and k.
"""

import json
import os
import signal
import sys


os.environ["HF_HUB_OFFLINE"] = "1"

from datasets import Dataset  # noqa: E402
from transformers import TrainerCallback  # noqa: E402

from trl_esr import ESRConfig, ESRDistillTrainer  # noqa: E402
from trl_esr.demo.tiny_models import build_word_tokenizer  # noqa: E402


class SigtermAtStep(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def main(models_dir: str, output_dir: str, mode: str) -> None:
    tokenizer = build_word_tokenizer([f"w{i}" for i in range(40)])
    prompts = [[{"role": "user", "content": " ".join(f"w{j}" for j in range(i, i + 3))}] for i in range(24)]
    args = ESRConfig(
        output_dir=output_dir, use_cpu=True, bf16=False, gradient_checkpointing=False, report_to=[], logging_steps=1,
        per_device_train_batch_size=2, gradient_accumulation_steps=2, max_steps=6, learning_rate=1e-2, seed=0,
        esr_k=12, esr_k_start=3, esr_k_warmup_steps=5, esr_k_schedule="linear", max_completion_length=16,
        save_strategy="no",
    )  # fmt: skip
    trainer = ESRDistillTrainer(
        model=os.path.join(models_dir, "student"),
        teacher_model=os.path.join(models_dir, "teacher"),
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=tokenizer,
        callbacks=[SigtermAtStep(3)] if mode == "interrupt" else None,
    )
    try:
        trainer.train(resume_from_checkpoint=os.path.join(output_dir, "checkpoint-3") if mode == "resume" else None)
    finally:
        logged = [e for e in trainer.state.log_history if "loss" in e]
        record = {e["step"]: {"loss": e["loss"], "k": e["esr/k"]} for e in logged}
        with open(os.path.join(output_dir, f"{mode}.json"), "w") as f:
            json.dump(record, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
