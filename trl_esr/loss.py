"""The divergence reductions of ESR, as drop-ins for TRL's chunked divergence.

TRL's kernel computes, at every trained completion position t of rollout b, the generalized JSD between the student
distribution p_s(. | x, y_<t) and the teacher distribution p_t(. | x, y_<t) over the full vocabulary. With
`beta=1` it is the reverse KL, KL(p_s || p_t) = sum_v p_s(v) (log p_s(v) - log p_t(v)): the student is the sampling
distribution, so the loss is mode-seeking. Call that per-token value d[b, t]. The reductions:

- "token" (TRL):     loss = sum_{b,t} d[b, t] / N_tokens          N_tokens: trained tokens in the window, all processes
- "sequence" (paper): loss = sum_b (sum_t d[b, t] / n_b) / N_seqs  n_b: trained tokens of rollout b;
                                                                  N_seqs: rollouts with n_b > 0, all processes

`DistillationTrainer.compute_loss` divides the normaliser it receives by the process count (DDP averages gradients),
so `num_items_in_batch` arrives here as N_tokens / P or N_seqs / P; `None` (evaluation) means "this micro-batch only".
"""

from collections.abc import Callable

import torch
from torch.distributed.tensor import DTensor

from ._trl_compat import chunked_divergence_loss


def make_divergence_loss(
    normalization: str, loss_temperature: float, vocab_size: int | None = None, shared=None
) -> Callable:
    """Return a function with the signature of TRL's `_chunked_divergence_loss` that reduces as `normalization` says
    and applies `loss_temperature` to both models' logits. The `temperature` TRL passes is ignored: TRL ties it to the
    sampling temperature, while the paper samples at 0.7 and computes the KL on untempered logits.

    Both heads can be restricted to the rows of tokens they share, so that both distributions are renormalised over
    those tokens: with `vocab_size`, their first `vocab_size` rows (a pair whose tokenizers agree but one head is
    padded; a view, no copy); with `shared` (a `trl_esr.cross_tokenizer.SharedVocabulary`), rows `shared.student_ids`
    of the student's head against rows `shared.teacher_ids` of the teacher's (a teacher with another tokenizer).
    """
    student_rows = teacher_rows = slice(vocab_size) if vocab_size is not None else None  # rows past it: no token
    if shared is not None:
        student_rows, teacher_rows = shared.student_ids, shared.teacher_ids

    def divergence_loss(
        student_hidden_states: torch.Tensor,  # (B, K, H_s)
        teacher_hidden_states: torch.Tensor,  # (B, K, H_t)
        student_lm_head_weight: torch.Tensor,  # (V, H_s)
        teacher_lm_head_weight: torch.Tensor,  # (V, H_t)
        completion_mask: torch.Tensor,  # (B, K), 1 = trained position
        beta: float,
        num_items_in_batch: torch.Tensor | int | None = None,
        student_lm_head_bias: torch.Tensor | None = None,
        teacher_lm_head_bias: torch.Tensor | None = None,
        student_logit_scale: float = 1.0,
        teacher_logit_scale: float = 1.0,
        student_final_logit_softcapping: float | None = None,
        teacher_final_logit_softcapping: float | None = None,
        temperature: float = 1.0,  # ignored, see above
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if shared is not None:  # index the rows of a plain tensor (a sharded head is gathered once, here)
            student_lm_head_weight, student_lm_head_bias = _full_tensor(
                student_lm_head_weight, student_lm_head_bias, student_hidden_states.dtype
            )
            teacher_lm_head_weight, teacher_lm_head_bias = _full_tensor(
                teacher_lm_head_weight, teacher_lm_head_bias, teacher_hidden_states.dtype
            )
        if student_rows is not None:  # row i of both restricted heads is the same token
            student_lm_head_weight, student_lm_head_bias = _rows(
                student_lm_head_weight, student_lm_head_bias, student_rows
            )
            teacher_lm_head_weight, teacher_lm_head_bias = _rows(
                teacher_lm_head_weight, teacher_lm_head_bias, teacher_rows
            )
        logit_kwargs = dict(
            student_logit_scale=student_logit_scale,
            teacher_logit_scale=teacher_logit_scale,
            student_final_logit_softcapping=student_final_logit_softcapping,
            teacher_final_logit_softcapping=teacher_final_logit_softcapping,
            temperature=loss_temperature,
        )
        if normalization == "token":
            return chunked_divergence_loss(
                student_hidden_states,
                teacher_hidden_states,
                student_lm_head_weight,
                teacher_lm_head_weight,
                completion_mask,
                beta,
                num_items_in_batch=num_items_in_batch,
                student_lm_head_bias=student_lm_head_bias,
                teacher_lm_head_bias=teacher_lm_head_bias,
                **logit_kwargs,
            )

        # "sequence": rollouts with the same number n of trained tokens share the weight 1 / (n * N_seqs), so one
        # kernel call per distinct n is exact. Under ESR most rollouts reach k, so that is usually one or two calls.
        # Under FSDP2 the heads are DTensors; gather them once here rather than once per call inside the kernel.
        student_lm_head_weight, student_lm_head_bias = _full_tensor(
            student_lm_head_weight, student_lm_head_bias, student_hidden_states.dtype
        )
        teacher_lm_head_weight, teacher_lm_head_bias = _full_tensor(
            teacher_lm_head_weight, teacher_lm_head_bias, teacher_hidden_states.dtype
        )
        tokens_per_rollout = completion_mask.sum(dim=1)  # (B,)
        if num_items_in_batch is None:
            num_items_in_batch = (tokens_per_rollout > 0).sum().clamp(min=1)
        loss, entropy_sum, num_valid = 0.0, 0.0, 0
        for n in tokens_per_rollout.unique():
            rows = tokens_per_rollout == n  # (B,)
            # A rollout with no trained token contributes an exact (graph-connected) zero.
            group_loss, group_entropy, group_valid = chunked_divergence_loss(
                student_hidden_states[rows],
                teacher_hidden_states[rows],
                student_lm_head_weight,
                teacher_lm_head_weight,
                completion_mask[rows],
                beta,
                num_items_in_batch=n.clamp(min=1) * num_items_in_batch,
                student_lm_head_bias=student_lm_head_bias,
                teacher_lm_head_bias=teacher_lm_head_bias,
                **logit_kwargs,
            )
            loss, entropy_sum, num_valid = loss + group_loss, entropy_sum + group_entropy, num_valid + group_valid
        return loss, entropy_sum, num_valid

    return divergence_loss


def _full_tensor(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
    """Gather a sharded (FSDP2 `DTensor`) `lm_head` into a plain tensor in the activations' dtype, as TRL does."""
    if not isinstance(weight, DTensor):
        return weight, bias
    return weight.full_tensor().to(dtype), (bias.full_tensor() if bias is not None else None)


def _rows(weight: torch.Tensor, bias: torch.Tensor | None, rows: slice | torch.Tensor):
    """Rows `rows` (a slice: a view; ids: a copy that passes gradients back) of an `lm_head`'s weight and bias."""
    if isinstance(rows, torch.Tensor):
        rows = rows.to(weight.device)
    return weight[rows], (bias[rows] if bias is not None else None)
