"""One rank of tests/test_dtensor_heads.py (run under torchrun, 2 CPU processes, gloo): both `lm_head` weights sharded
by rows over the two ranks as FSDP2 shards them (`DTensor`, `Shard(0)`), `trl_esr.loss.DivergenceLoss` called on
them, and its loss and gradients written next to a float64 reverse KL written from its definition on the full heads.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dtensor_worker.py OUT_DIR
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard, distribute_tensor

from trl_esr.cross_tokenizer import SharedVocabulary
from trl_esr.loss import DivergenceLoss


B, K, H, V = 3, 5, 8, 12
MASK = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]])
# The cross-tokenizer case: student rows 0..8 paired with teacher rows in another order (one-to-one)
STUDENT_IDS, TEACHER_IDS = torch.arange(9), torch.tensor([3, 0, 1, 2, 8, 4, 11, 6, 5])
# The first position of a dummy-prefix pair has a vocabulary of its own (fewer rows, another order)
FIRST_STUDENT_IDS, FIRST_TEACHER_IDS = torch.tensor([1, 4, 7, 10, 11]), torch.tensor([9, 2, 7, 0, 5])
CASES = {
    "sequence": dict(normalization="sequence"),
    "token": dict(normalization="token"),  # TRL's kernel gathers the DTensor heads itself
    "sequence_padded": dict(normalization="sequence", vocab_size=10),
    "token_shared": dict(normalization="token", shared=SharedVocabulary(STUDENT_IDS, TEACHER_IDS, fraction=1.0)),
    "sequence_shared_first": dict(
        normalization="sequence",
        shared=SharedVocabulary(STUDENT_IDS, TEACHER_IDS, 1.0, FIRST_STUDENT_IDS, FIRST_TEACHER_IDS),
    ),
}


def _kl(student_h, teacher_h, student_w, teacher_w, student_rows, teacher_rows):
    student_logits = student_h.double() @ student_w.double()[student_rows].T
    teacher_logits = teacher_h.double() @ teacher_w.double()[teacher_rows].T
    log_p, log_q = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def reverse_kl_by_hand(student_h, teacher_h, student_w, teacher_w, rows, normalization):
    """KL(p_s || p_t) per trained position from the heads' rows (the first position's own, if given), then the
    reduction, in float64."""
    kl = _kl(student_h, teacher_h, student_w, teacher_w, rows["student"], rows["teacher"])  # (B, K)
    if "first" in rows:
        first = _kl(student_h[:, :1], teacher_h[:, :1], student_w, teacher_w, *rows["first"])
        kl = torch.cat([first, kl[:, 1:]], dim=1)
    kl = kl * MASK
    if normalization == "token":
        return kl.sum() / MASK.sum()
    per_rollout = kl.sum(-1) / MASK.sum(-1)
    return per_rollout.sum() / (MASK.sum(-1) > 0).sum()


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    generator = torch.Generator().manual_seed(0)  # the same full tensors on both ranks
    student_h, teacher_h = torch.randn(B, K, H, generator=generator), torch.randn(B, K, H, generator=generator)
    student_w, teacher_w = torch.randn(V, H, generator=generator), torch.randn(V, H, generator=generator)
    results = {"rank": rank, "world_size": world, "cases": {}}
    for name, options in CASES.items():
        # the student's head is trained, the teacher's frozen, as in training
        sharded = {"student": distribute_tensor(student_w.clone(), mesh, [Shard(0)]).requires_grad_(),
                   "teacher": distribute_tensor(teacher_w.clone(), mesh, [Shard(0)])}  # fmt: skip
        hidden = student_h.clone().requires_grad_()
        num_items = MASK.sum() if options["normalization"] == "token" else (MASK.sum(-1) > 0).sum()
        loss, _, _ = DivergenceLoss(loss_temperature=1.0, **options)(
            hidden, teacher_h, sharded["student"], sharded["teacher"], MASK, beta=1.0, num_items_in_batch=num_items
        )
        loss.backward()
        rows = {"student": slice(None), "teacher": slice(None)}
        if "vocab_size" in options:
            rows = {"student": slice(options["vocab_size"]), "teacher": slice(options["vocab_size"])}
        if "shared" in options:
            rows = {"student": STUDENT_IDS, "teacher": TEACHER_IDS}
            if options["shared"].first_student_ids is not None:
                rows["first"] = (FIRST_STUDENT_IDS, FIRST_TEACHER_IDS)
        full_w = student_w.double().requires_grad_()
        full_h = student_h.double().requires_grad_()
        reference = reverse_kl_by_hand(full_h, teacher_h, full_w, teacher_w, rows, options["normalization"])
        reference.backward()
        grad = sharded["student"].grad
        results["cases"][name] = {
            "is_dtensor": isinstance(sharded["student"], DTensor) and isinstance(grad, DTensor),
            "local_rows": sharded["student"].to_local().shape[0],
            "loss": loss.item(),
            "reference": reference.item(),
            "head_grad": grad.full_tensor().tolist(),
            "reference_head_grad": full_w.grad.tolist(),
            "hidden_grad_error": (hidden.grad.double() - full_h.grad).abs().max().item(),
            "teacher_grad": sharded["teacher"].grad is None,
        }
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(results))
    dist.destroy_process_group()
    # torch 2.6 (our floor) finishes all of the above on both ranks, then hangs at interpreter exit (threads left by
    # its DTensor ops on gloo), and torchrun waits for it: everything is written, so leave without that teardown.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv[1])
