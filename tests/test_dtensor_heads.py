"""FSDP2's sharded heads in our loss, on CPU: two gloo processes under torchrun, each holding half the rows of both
`lm_head` weights as a `DTensor` (`Shard(0)`), as FSDP2 leaves them. `DivergenceLoss` must give, on every rank, the
loss and gradients of a float64 reverse KL written from its definition on the full heads: for the paper's
per-rollout reduction (our `_full_tensor` gathers the heads), TRL's token reduction (TRL's kernel gathers them),
a padded pair (the first rows of both heads) and a cross-tokenizer pair (rows picked by id, in another order), with and
without a first-position vocabulary of its own (a dummy-prefix SentencePiece pair). The
teacher's head is frozen, as in training (with a trainable teacher head, the backward of TRL's kernel hands the
gather a plain gradient, which torch 2.13's DTensor redistribution rejects; distillation never trains the teacher).

FSDP2 itself does not run on CPU through accelerate (it enables FSDP only on accelerator devices; docs/benchmarks.md),
so this checks the loss's DTensor path without it; the GPU benchmark runs it under FSDP2."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


HERE = Path(__file__).parent


def test_sharded_heads_give_the_full_heads_loss_and_gradients(tmp_path):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(HERE / "dtensor_worker.py"), str(tmp_path)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    assert set(ranks[0]["cases"]) == {"sequence", "token", "sequence_padded", "token_shared", "sequence_shared_first"}
    for rank in ranks:
        for name, case in rank["cases"].items():
            assert case["is_dtensor"] and case["local_rows"] == 6, name  # 12 rows, half on each rank
            assert abs(case["loss"] - case["reference"]) < 1e-5 * max(1.0, abs(case["reference"])), name
            grad, expected = torch.tensor(case["head_grad"]), torch.tensor(case["reference_head_grad"])
            assert torch.allclose(grad, expected.float(), atol=1e-6, rtol=1e-4), name
            assert case["hidden_grad_error"] < 1e-5, name
    for name in ranks[0]["cases"]:  # the rows outside a restriction get no gradient, on both ranks alike
        assert ranks[0]["cases"][name]["loss"] == ranks[1]["cases"][name]["loss"]
    assert torch.tensor(ranks[0]["cases"]["sequence_padded"]["head_grad"])[10:].abs().max() == 0
    assert torch.tensor(ranks[0]["cases"]["token_shared"]["head_grad"])[9:].abs().max() == 0
