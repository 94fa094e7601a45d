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

from functools import partial

import torch
from torch.distributed.tensor import DTensor

from ._trl_compat import chunked_divergence_loss


class DivergenceLoss:
    """A drop-in for TRL's `_chunked_divergence_loss` (same signature: `trainer.py` swaps it in for the duration of
    `_compute_loss`) that reduces as `normalization` says and applies `loss_temperature` to both models' logits. The
    `temperature` TRL passes is ignored: TRL ties it to the sampling temperature, while the paper samples at 0.7 and
    computes the KL on untempered logits.

    Both heads can be restricted to the rows of tokens they share, so that both distributions are renormalised over
    those tokens: with `vocab_size`, their first `vocab_size` rows (a pair whose tokenizers agree but one head is
    padded; a view, no copy); with `shared` (a `trl_esr.cross_tokenizer.SharedVocabulary`), rows `shared.student_ids`
    of the student's head against rows `shared.teacher_ids` of the teacher's (a teacher with another tokenizer).
    Row i of both restricted heads is then the same token.
    """

    def __init__(self, normalization: str, loss_temperature: float, vocab_size: int | None = None, shared=None):
        self._reduce = {"token": self._token_mean, "sequence": self._sequence_mean}[normalization]
        self.loss_temperature = loss_temperature
        self.student_rows = self.teacher_rows = slice(vocab_size) if vocab_size is not None else None
        self.first_rows = None  # the rows of the first completion position, where they differ (see `shared`)
        if shared is not None:
            self.student_rows, self.teacher_rows = shared.student_ids, shared.teacher_ids
            if shared.first_student_ids is not None:
                self.first_rows = (shared.first_student_ids, shared.first_teacher_ids)
        # Indexing rows by id needs a plain tensor, and the sequence reduction calls the kernel once per group: both
        # gather a sharded (FSDP2) head once per call here rather than inside the kernel. TRL's kernel gathers it
        # itself otherwise.
        self.gather_heads = shared is not None or normalization == "sequence"

    def __call__(
        self,
        student_hidden_states: torch.Tensor,  # (B, K, H_s)
        teacher_hidden_states: torch.Tensor,  # (B, K, H_t)
        student_lm_head_weight: torch.Tensor,  # (V_s, H_s)
        teacher_lm_head_weight: torch.Tensor,  # (V_t, H_t)
        completion_mask: torch.Tensor,  # (B, K), 1 = trained position
        beta: float,
        num_items_in_batch: torch.Tensor | int | None = None,
        student_lm_head_bias: torch.Tensor | None = None,  # (V_s,)
        teacher_lm_head_bias: torch.Tensor | None = None,  # (V_t,)
        student_logit_scale: float = 1.0,
        teacher_logit_scale: float = 1.0,
        student_final_logit_softcapping: float | None = None,
        teacher_final_logit_softcapping: float | None = None,
        temperature: float = 1.0,  # ignored, see the class docstring
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The loss, the sum of the student's per-token entropy and the number of trained positions, as TRL's."""
        student_head = self._gathered(student_lm_head_weight, student_lm_head_bias, student_hidden_states.dtype)
        teacher_head = self._gathered(teacher_lm_head_weight, teacher_lm_head_bias, teacher_hidden_states.dtype)
        scales = dict(
            beta=beta,
            student_logit_scale=student_logit_scale,
            teacher_logit_scale=teacher_logit_scale,
            student_final_logit_softcapping=student_final_logit_softcapping,
            teacher_final_logit_softcapping=teacher_final_logit_softcapping,
            temperature=self.loss_temperature,
        )
        kernel = self._kernel(student_head, teacher_head, self.student_rows, self.teacher_rows, scales)
        if self.first_rows is not None:
            first = self._kernel(student_head, teacher_head, *self.first_rows, scales)
            kernel = partial(_first_position_apart, kernel, first)
        return self._reduce(kernel, student_hidden_states, teacher_hidden_states, completion_mask, num_items_in_batch)

    def _kernel(self, student_head, teacher_head, student_rows, teacher_rows, scales: dict):
        """TRL's kernel with everything but the rollouts and the normaliser fixed: d[b, t] of the module docstring,
        summed over the given rollouts' trained positions and divided by `num_items_in_batch`."""
        student_weight, student_bias = _rows(*student_head, student_rows)
        teacher_weight, teacher_bias = _rows(*teacher_head, teacher_rows)
        return partial(
            chunked_divergence_loss,
            student_lm_head_weight=student_weight,
            teacher_lm_head_weight=teacher_weight,
            student_lm_head_bias=student_bias,
            teacher_lm_head_bias=teacher_bias,
            **scales,
        )

    def _gathered(self, weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
        """One model's `lm_head` weight (V, H) and bias (V,), gathered once per call if sharded (the first position's
        rows and the others' are then taken from the same gathered copy)."""
        return _full_tensor(weight, bias, dtype) if self.gather_heads else (weight, bias)

    @staticmethod
    def _token_mean(kernel, student_hidden_states, teacher_hidden_states, completion_mask, num_items_in_batch):
        """TRL's reduction: sum_{b,t} d[b, t] / N_tokens, one kernel call."""
        return kernel(
            student_hidden_states=student_hidden_states,
            teacher_hidden_states=teacher_hidden_states,
            completion_mask=completion_mask,
            num_items_in_batch=num_items_in_batch,
        )

    @staticmethod
    def _sequence_mean(kernel, student_hidden_states, teacher_hidden_states, completion_mask, num_items_in_batch):
        """The paper's reduction: sum_b (sum_t d[b, t] / n_b) / N_seqs. Rollouts with the same number n of trained
        tokens share the weight 1 / (n * N_seqs), so one kernel call per distinct n is exact; under ESR most rollouts
        reach k, so that is usually one or two calls."""
        tokens_per_rollout = completion_mask.sum(dim=1)  # (B,): n_b
        if num_items_in_batch is None:  # evaluation: this micro-batch's rollouts
            num_items_in_batch = (tokens_per_rollout > 0).sum().clamp(min=1)
        loss, entropy_sum, num_valid = 0.0, 0.0, 0
        for n in tokens_per_rollout.unique():
            rows = tokens_per_rollout == n  # (B,)
            # A rollout with no trained token (n = 0) contributes an exact (graph-connected) zero.
            group_loss, group_entropy, group_valid = kernel(
                student_hidden_states=student_hidden_states[rows],
                teacher_hidden_states=teacher_hidden_states[rows],
                completion_mask=completion_mask[rows],
                num_items_in_batch=n.clamp(min=1) * num_items_in_batch,
            )
            loss, entropy_sum, num_valid = loss + group_loss, entropy_sum + group_entropy, num_valid + group_valid
        return loss, entropy_sum, num_valid


def _first_position_apart(kernel, first, student_hidden_states, teacher_hidden_states, completion_mask,
                          num_items_in_batch):  # fmt: skip
    """`kernel` on every trained position but the first, `first` (its own rows) on the first: the same sums, each part
    divided by the normaliser of the whole (without one, the whole's trained positions, as TRL's mean would be)."""
    if num_items_in_batch is None:
        num_items_in_batch = (completion_mask != 0).sum().clamp(min=1)
    rest = completion_mask.clone()
    rest[:, 0] = 0
    parts = (
        kernel(student_hidden_states=student_hidden_states, teacher_hidden_states=teacher_hidden_states,
               completion_mask=rest, num_items_in_batch=num_items_in_batch),
        first(student_hidden_states=student_hidden_states[:, :1], teacher_hidden_states=teacher_hidden_states[:, :1],
              completion_mask=completion_mask[:, :1], num_items_in_batch=num_items_in_batch),
    )  # fmt: skip
    return tuple(a + b for a, b in zip(*parts, strict=True))


def _rows(weight: torch.Tensor, bias: torch.Tensor | None, rows):
    """A head's weight and bias restricted to `rows` (None: all of them)."""
    if rows is None:
        return weight, bias
    if isinstance(rows, torch.Tensor):  # ids: a copy that passes gradients back to the rows it took
        rows = rows.to(weight.device)
    return weight[rows], (bias[rows] if bias is not None else None)


def _full_tensor(weight: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype):
    """Gather a sharded (FSDP2 `DTensor`) `lm_head` into a plain tensor in the activations' dtype, as TRL does."""
    if not isinstance(weight, DTensor):
        return weight, bias
    return weight.full_tensor().to(dtype), (bias.full_tensor() if bias is not None else None)
