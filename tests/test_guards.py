"""Progress is never lost silently: non-finite updates are skipped, interrupts write a checkpoint, resume is exact."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import LearningRateJump, callbacks_of
from transformers import TrainerCallback

from trl_esr.guards import CheckpointOnInterrupt


HERE = Path(__file__).parent


class WeightsPerStep(TrainerCallback):
    def __init__(self):
        self.weights = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights[0] = torch.cat([p.detach().flatten().clone() for p in model.parameters()])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.weights[state.global_step] = torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def poison_teacher(trainer, calls_to_poison):
    """Make the teacher's backbone return NaN hidden states on the given (0-based) forward calls."""
    calls = {"n": 0}

    def hook(module, args, output):
        calls["n"] += 1
        if calls["n"] - 1 in calls_to_poison:
            output.last_hidden_state.fill_(float("nan"))
        return output

    trainer.teacher_model.base_model.register_forward_hook(hook)


def test_nan_teacher_step_is_skipped_and_training_continues(make_trainer, make_args):
    recorder = WeightsPerStep()
    args = make_args(max_steps=4, learning_rate=1e-2)
    trainer = make_trainer(args, callbacks=[recorder])
    poison_teacher(trainer, calls_to_poison={1})  # the teacher forward of step 2
    trainer.train()

    w = recorder.weights
    assert not torch.equal(w[0], w[1])
    assert torch.equal(w[1], w[2])  # step 2 skipped: weights unchanged
    assert not torch.equal(w[2], w[3]) and not torch.equal(w[3], w[4])  # training went on
    assert torch.isfinite(w[4]).all()
    assert [e["esr/nonfinite_steps"] for e in trainer.state.log_history if "loss" in e] == [0, 1, 1, 1]


def test_too_many_nonfinite_steps_in_a_row_stop_with_a_checkpoint(make_trainer, make_args, tmp_path):
    args = make_args(max_steps=5, max_consecutive_nonfinite_steps=2, output_dir=str(tmp_path / "nan"))
    trainer = make_trainer(args)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    poison_teacher(trainer, calls_to_poison=set(range(100)))
    with pytest.raises(RuntimeError, match=r"stopped at step 2: the last 2 steps had a non-finite"):
        trainer.train()
    assert (tmp_path / "nan" / "checkpoint-2" / "model.safetensors").is_file()
    assert all(torch.equal(p, initial[n]) for n, p in trainer.model.named_parameters())


def fp16_loss_scaling(trainer, init_scale: float) -> torch.amp.GradScaler:
    """fp16 mixed precision as on a GPU: accelerate's `GradScaler` (it makes one on CUDA only) and gradients that
    overflow where float16's range ends (each parameter's gradient is rounded through float16, max 65504)."""
    scaler = trainer.accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=init_scale)
    trainer.accelerator.native_amp = True
    for param in trainer.model.parameters():
        param.register_hook(lambda grad: grad.half().to(grad.dtype))
    return scaler


def test_fp16_loss_scale_overflows_are_the_scalers_not_a_nonfinite_stop(make_trainer, make_args):
    """An fp16 run starts with a scale too large for its gradients: GradScaler skips those updates and halves its
    scale until they fit. The guard used to count each skip as non-finite and stop a healthy run after the limit."""
    recorder = WeightsPerStep()
    trainer = make_trainer(make_args(max_steps=8, fp16=True, max_consecutive_nonfinite_steps=2), callbacks=[recorder])
    scaler = fp16_loss_scaling(trainer, init_scale=2.0**26)  # the tiny student's gradients are ~6e-3: 2**26 overflows
    trainer.train()  # no RuntimeError

    logs = [e for e in trainer.state.log_history if "loss" in e]
    overflows = [e["esr/loss_scale_overflows"] for e in logs]
    skipped = int(overflows[-1])
    assert skipped >= 3 and scaler.get_scale() == 2.0**26 / 2**skipped  # each overflow halved the scale once
    assert overflows == [float(min(step, skipped)) for step in range(1, 9)]  # the first steps, in a row
    assert [e["esr/nonfinite_steps"] for e in logs] == [0.0] * 8
    w = recorder.weights
    assert all(torch.equal(w[0], w[step]) for step in range(1, skipped + 1))  # the scaler skipped those updates
    assert all(not torch.equal(w[step - 1], w[step]) for step in range(skipped + 1, 9))  # then it trained
    assert torch.isfinite(w[8]).all()


def test_fp16_a_nan_loss_still_stops_once_the_scale_is_down_to_one(make_trainer, make_args, tmp_path):
    args = make_args(max_steps=8, fp16=True, max_consecutive_nonfinite_steps=2, output_dir=str(tmp_path / "nan16"))
    trainer = make_trainer(args)
    initial = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    fp16_loss_scaling(trainer, init_scale=4.0)
    poison_teacher(trainer, calls_to_poison=set(range(100)))
    # scale 4 and 2: the scaler's skips; scale 1 and 0.5: non-finite unscaled, counted -> the limit of 2 at step 4
    with pytest.raises(RuntimeError, match=r"stopped at step 4: the last 2 steps had a non-finite"):
        trainer.train()
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["esr/loss_scale_overflows"] for e in logs] == [1.0, 2.0, 2.0, 2.0]
    assert [e["esr/nonfinite_steps"] for e in logs] == [0.0, 0.0, 1.0, 2.0]
    assert (tmp_path / "nan16" / "checkpoint-4" / "model.safetensors").is_file()
    assert all(torch.equal(p, initial[n]) for n, p in trainer.model.named_parameters())


def test_sigint_checkpoints_then_raises(make_trainer, make_args, tmp_path):
    class SigintAtStep2(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    args = make_args(max_steps=5, output_dir=str(tmp_path / "int"))
    trainer = make_trainer(args, callbacks=[SigintAtStep2()])
    with pytest.raises(KeyboardInterrupt, match="Interrupted at step 2; checkpoint saved"):
        trainer.train()
    assert trainer.state.global_step == 2
    assert (tmp_path / "int" / "checkpoint-2" / "trainer_state.json").is_file()
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored


def test_interrupt_off(make_trainer, make_args):
    assert len(callbacks_of(make_trainer(make_args()), CheckpointOnInterrupt)) == 1  # on by default
    assert callbacks_of(make_trainer(make_args(save_on_interrupt=False)), CheckpointOnInterrupt) == []


def test_sigterm_then_resume_matches_the_uninterrupted_run(model_paths, tmp_path):
    models_dir = str(Path(model_paths["student"]).parent)

    def run(mode, output_dir):
        command = [sys.executable, str(HERE / "interrupt_worker.py"), models_dir, str(output_dir), mode]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    full, interrupted = run("full", tmp_path / "full"), run("interrupt", tmp_path / "run")
    full_out, interrupted_out = full.communicate(timeout=300), interrupted.communicate(timeout=300)
    assert full.returncode == 0, full_out[1][-3000:]
    assert interrupted.returncode == 128 + signal.SIGTERM, interrupted_out[1][-3000:]
    assert "Interrupted at step 3; checkpoint saved" in interrupted_out[1]
    assert (tmp_path / "run" / "checkpoint-3").is_dir()
    resumed = run("resume", tmp_path / "run")
    resumed_out = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, resumed_out[1][-3000:]

    full_log = json.loads((tmp_path / "full" / "full.json").read_text())
    before = json.loads((tmp_path / "run" / "interrupt.json").read_text())
    after = json.loads((tmp_path / "run" / "resume.json").read_text())  # its history starts with the checkpoint's
    assert sorted(before, key=int) == ["1", "2", "3"] and sorted(after, key=int) == ["1", "2", "3", "4", "5", "6"]
    after = {step: entry for step, entry in after.items() if int(step) > 3}
    stitched = {**before, **after}
    assert [stitched[s]["k"] for s in sorted(stitched, key=int)] == [
        full_log[s]["k"] for s in sorted(full_log, key=int)
    ]
    for step, entry in full_log.items():  # tolerance: float32 round-off of the resumed optimizer state
        assert stitched[step]["loss"] == pytest.approx(entry["loss"], rel=1e-5), step


def logits_are_finite(checkpoint, tokenizer) -> bool:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint)
    ids = tokenizer("w1 w2 w3 w4", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return bool(torch.isfinite(model(ids).logits).all())


def test_a_huge_learning_rate_stops_and_names_the_last_good_checkpoint(make_trainer, tokenizer, make_args, tmp_path):
    """lr 1e15 at step 3: that update has finite gradients but leaves weights whose logits overflow. Sampling must not
    crash (it used to: `probability tensor contains either inf, nan or element < 0`); steps 4-5 are skipped, the run
    stops, and the checkpoint it names (checkpoint-2, before the bad update) gives finite logits."""
    out = tmp_path / "huge"
    args = make_args(max_steps=8, max_consecutive_nonfinite_steps=2, output_dir=str(out), save_strategy="steps",
                     save_steps=1, suppress_eos=False)  # fmt: skip
    trainer = make_trainer(args, callbacks=[LearningRateJump(3, 1e15)])
    with pytest.raises(RuntimeError, match="Training stopped at step 5") as error:
        trainer.train()
    assert f"Resume from {out / 'checkpoint-2'}, written before that update" in str(error.value)
    assert logits_are_finite(out / "checkpoint-2", tokenizer)
    assert not logits_are_finite(out / "checkpoint-3", tokenizer)  # the test's premise: step 3 broke the weights


def test_an_update_that_leaves_nan_weights_stops_at_once_without_saving_them(make_trainer, make_args, tmp_path):
    out = tmp_path / "nan_weights"
    args = make_args(max_steps=6, output_dir=str(out), save_strategy="steps", save_steps=1)
    trainer = make_trainer(args, callbacks=[LearningRateJump(3, float("nan"))])
    with pytest.raises(RuntimeError, match="stopped at step 3: the update left non-finite weights") as error:
        trainer.train()
    assert f"Resume from {out / 'checkpoint-2'}" in str(error.value)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == [
        "checkpoint-1",
        "checkpoint-2",
    ]


def test_a_signal_during_an_update_that_leaves_nan_weights_saves_nothing(make_trainer, make_args, tmp_path):
    """The interrupt's checkpoint used to override the guard's veto and write the NaN weights as checkpoint-3."""

    class SigintDuringStep3(TrainerCallback):
        def on_optimizer_step(self, args, state, control, **kwargs):
            if state.global_step + 1 == 3:
                os.kill(os.getpid(), signal.SIGINT)

    handler_before = signal.getsignal(signal.SIGINT)
    out = tmp_path / "nan_int"
    args = make_args(max_steps=6, output_dir=str(out), save_strategy="steps", save_steps=2)
    trainer = make_trainer(args, callbacks=[LearningRateJump(3, float("nan")), SigintDuringStep3()])
    with pytest.raises(RuntimeError, match="stopped at step 3: the update left non-finite weights") as error:
        trainer.train()
    assert f"Resume from {out / 'checkpoint-2'}" in str(error.value)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint-")) == ["checkpoint-2"]
    assert signal.getsignal(signal.SIGINT) is handler_before
