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
import torch.utils.checkpoint
from torch.distributed.tensor import DTensor

from ._trl_compat import chunked_divergence_loss, logit_scale


def make_divergence_loss(normalization: str, loss_temperature: float, vocab_size: int | None = None) -> Callable:
    """Return a function with the signature of TRL's `_chunked_divergence_loss` that reduces as `normalization` says
    and applies `loss_temperature` to both models' logits. The `temperature` TRL passes is ignored: TRL ties it to the
    sampling temperature, while the paper samples at 0.7 and computes the KL on untempered logits. With `vocab_size`,
    both heads are cut to their first `vocab_size` rows (a pair whose tokenizers agree but one head is padded)."""

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
        if vocab_size is not None:  # rows past `vocab_size` belong to no token
            student_lm_head_weight, teacher_lm_head_weight = (
                student_lm_head_weight[:vocab_size],
                teacher_lm_head_weight[:vocab_size],
            )
            student_lm_head_bias = student_lm_head_bias[:vocab_size] if student_lm_head_bias is not None else None
            teacher_lm_head_bias = teacher_lm_head_bias[:vocab_size] if teacher_lm_head_bias is not None else None
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


def aligned_divergence_loss(
    student_hidden_states: torch.Tensor,  # (B, C, H_s): student position t predicts completion token t
    teacher_hidden_states: torch.Tensor,  # (B, J, H_t): teacher position j predicts re-tokenized response token j
    teacher_positions: torch.Tensor,  # (B, C): teacher position aligned with student position t, -1 = not trained
    student_head: torch.nn.Module,
    teacher_head: torch.nn.Module,
    shared,  # `trl_esr.cross_tokenizer.SharedVocabulary`, on the heads' device
    student_logit_post: Callable,
    teacher_logit_post: Callable,
    loss_temperature: float,
    normalization: str,
    num_items_in_batch: torch.Tensor | int | None,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reverse KL(student || teacher) at aligned positions, both distributions restricted to the shared vocabulary and
    renormalised there: p_s = softmax(z_s[shared_s] / T), p_t = softmax(z_t[shared_t] / T). Reduced as in
    `make_divergence_loss`; returns (loss, student entropy sum, number of trained positions) like TRL's kernel.

    Only the shared rows of each head are projected, chunk by chunk under activation checkpointing, so the (N, M)
    logits are never all held for the backward pass.
    """
    trained = teacher_positions >= 0  # (B, C)
    rows, columns = trained.nonzero(as_tuple=True)  # (N,), (N,)
    h_s = student_hidden_states[rows, columns]  # (N, H_s)
    h_t = teacher_hidden_states[rows, teacher_positions[rows, columns]]  # (N, H_t)
    per_rollout = trained.sum(dim=1)  # (B,)
    if normalization == "token":
        normaliser = num_items_in_batch if num_items_in_batch is not None else rows.numel()
        weights = torch.ones_like(rows, dtype=h_s.dtype) / normaliser  # (N,)
    else:
        if num_items_in_batch is None:
            num_items_in_batch = (per_rollout > 0).sum().clamp(min=1)
        weights = 1.0 / (per_rollout[rows] * num_items_in_batch).to(h_s.dtype)  # (N,)
    w_s, b_s = _rows(student_head, shared.student_ids)  # (M, H_s)
    w_t, b_t = _rows(teacher_head, shared.teacher_ids)  # (M, H_t)

    def chunk_loss(h_s, h_t, weights):
        log_p_s = torch.log_softmax(student_logit_post(_project(h_s, w_s, b_s)).float() / loss_temperature, dim=-1)
        with torch.no_grad():
            log_p_t = torch.log_softmax(teacher_logit_post(_project(h_t, w_t, b_t)).float() / loss_temperature, dim=-1)
        p_s = log_p_s.exp()  # (n, M)
        kl = (p_s * (log_p_s - log_p_t)).sum(dim=-1)  # (n,)
        entropy = -(p_s * log_p_s).sum(dim=-1)  # (n,)
        return (kl * weights).sum(), entropy.sum().detach()

    loss = entropy_sum = h_s.new_zeros((), dtype=torch.float32)
    for start in range(0, max(rows.numel(), 1), chunk_size):
        part = slice(start, start + chunk_size)
        chunk, chunk_entropy = torch.utils.checkpoint.checkpoint(
            chunk_loss, h_s[part], h_t[part], weights[part], use_reentrant=False
        )
        loss, entropy_sum = loss + chunk, entropy_sum + chunk_entropy
    return loss, entropy_sum, torch.tensor(rows.numel(), device=h_s.device)


def _rows(head: torch.nn.Module, ids: torch.Tensor):
    return head.weight[ids], (head.bias[ids] if head.bias is not None else None)


def _project(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    logits = hidden.to(weight.dtype) @ weight.T
    return logits + bias if bias is not None else logits


def logit_postprocessor(config) -> Callable:
    """The scale and soft-capping a model applies to its logits, as TRL's `_compute_loss` applies them (scale first,
    see `trl_esr._trl_compat.logit_scale`; then Gemma-2's `final_logit_softcapping`); the identity for most models."""
    config = config.get_text_config()
    scale = logit_scale(config)
    softcap = getattr(config, "final_logit_softcapping", None)

    def post(logits: torch.Tensor) -> torch.Tensor:
        logits = logits * scale
        return softcap * torch.tanh(logits / softcap) if softcap else logits

    return post
