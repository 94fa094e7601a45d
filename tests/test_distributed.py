"""Two CPU processes (gloo) under torchrun: the loss normaliser spans both ranks and the gradients are synchronised.

`accelerate launch --cpu --num_processes 2` silently runs one process on this machine, and without `use_cpu=True`
each torchrun rank trains alone; so this test checks the world size and the weight sync, not just that it ran.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest


HERE = Path(__file__).parent


@pytest.mark.parametrize(
    "loss_normalization, eos_on_rank1, alignment",
    [("token", "", "auto"), ("sequence", "", "auto"), ("token", "eos_on_rank1", "auto"), ("sequence", "", "always")],
)
def test_two_processes_share_normaliser_and_gradients(
    loss_normalization, eos_on_rank1, alignment, model_paths, tmp_path
):
    """`alignment="always"` sends the pair through the cross-tokenizer path, whose normaliser counts aligned
    positions (here all of them)."""
    models_dir = str(Path(model_paths["student"]).parent)
    worker = [str(HERE / "distributed_worker.py"), models_dir, str(tmp_path), loss_normalization, eos_on_rank1,
              alignment]  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *worker]
    env = {**os.environ, "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["rank"] for r in ranks] == [0, 1]
    for step in range(2):
        if loss_normalization == "token":  # tokens generated on both ranks in this step's window
            expected = sum(r["local_tokens"][step] for r in ranks)
        else:  # rollouts on both ranks in this step's window
            expected = sum(r["local_rollouts"][step] for r in ranks)
        for r in ranks:  # each micro-batch's normaliser, divided by the world size (DDP averages gradients)
            assert r["normalisers"][2 * step : 2 * step + 2] == [expected / 2, expected / 2]
    if eos_on_rank1:  # rank 1's rollouts end at once (1 token each); rank 0's run to k
        assert ranks[1]["local_tokens"] == [4, 4] and all(n > 4 for n in ranks[0]["local_tokens"])
    assert all(math.isfinite(loss) for r in ranks for loss in r["losses"])
    assert ranks[0]["moved"] > 0
    assert ranks[0]["final_params"] == ranks[1]["final_params"]  # gradients were all-reduced
    # BoxedAccuracyCallback: each rank generated its share (3 + 2 problems), and the gathered responses are every
    # problem's, in order, as one process generates them all on the same weights (tests/test_boxed_eval.py checks the
    # scores themselves)
    for r in ranks:
        assert r["boxed_responses"] == r["boxed_alone"] and len(r["boxed_alone"]) == 5
        assert [step for step, _ in r["boxed_history"]] == [2]
        assert r["boxed_logged"] == [r["boxed_history"][0][1]["mean_tokens"]]
    assert ranks[0]["boxed_history"] == ranks[1]["boxed_history"]
    assert [r["boxed_share"] for r in ranks] == [[0, 1, 2], [3, 4]]
