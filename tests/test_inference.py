"""`trl_esr.inference`: TRL's `ModelConfig` turned into a model to run (the evaluation script and suggest-k)."""

import copy

import torch
from trl import ModelConfig

from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained
from trl_esr.inference import InferenceModelConfig, load_causal_lm, load_tokenizer, model_init_kwargs


def test_defaults_keep_the_checkpoints_dtype_where_trl_trains_in_float32(tokenizer, tmp_path):
    path = save_pretrained(build_tiny_causal_lm(tokenizer, "llama").to(torch.bfloat16), tokenizer, tmp_path / "m")
    assert InferenceModelConfig().dtype == "auto" and ModelConfig().dtype == "float32"
    model = load_causal_lm(path, InferenceModelConfig())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16} and not model.training
    assert {p.dtype for p in load_causal_lm(path, InferenceModelConfig(dtype="float32")).parameters()} == {
        torch.float32
    }


def test_quantization_as_trls_scripts_build_it():
    """`get_quantization_config`'s settings, with a compute dtype that exists for 'auto' (bfloat16, as before)."""
    four_bit = model_init_kwargs(InferenceModelConfig(load_in_4bit=True, bnb_4bit_quant_type="fp4"))
    quantization = four_bit["quantization_config"]
    assert quantization.load_in_4bit and quantization.bnb_4bit_quant_type == "fp4"
    assert quantization.bnb_4bit_compute_dtype == torch.bfloat16 and four_bit["dtype"] == "auto"
    half = model_init_kwargs(InferenceModelConfig(load_in_4bit=True, dtype="float16"))["quantization_config"]
    assert half.bnb_4bit_compute_dtype == torch.float16 and half.bnb_4bit_quant_type == "nf4"
    assert model_init_kwargs(InferenceModelConfig(load_in_8bit=True))["quantization_config"].load_in_8bit
    plain = model_init_kwargs(InferenceModelConfig(attn_implementation="eager"))
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert plain == {"dtype": "auto", "attn_implementation": "eager", "device_map": {"": expected_device}}


def test_an_adapter_folder_loads_merged_on_its_base(tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    base_path = save_pretrained(build_tiny_causal_lm(tokenizer, "llama", seed=0), tokenizer, tmp_path / "base")
    base = build_tiny_causal_lm(tokenizer, "llama", seed=0)
    adapted = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapted.peft_config["default"].base_model_name_or_path = base_path  # where the adapter's base is loaded from
    adapted.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([tokenizer.convert_tokens_to_ids(["w1", "w2", "w3"])])
    merged = load_causal_lm(str(tmp_path / "adapter"), InferenceModelConfig(dtype="float32"))
    assert not any("lora" in name for name, _ in merged.named_parameters())  # merged: a plain model
    with torch.no_grad():
        expected, plain = adapted(ids).logits, build_tiny_causal_lm(tokenizer, "llama", seed=0)(ids).logits
        assert torch.allclose(merged(ids).logits, expected, atol=1e-5)
        assert not torch.allclose(expected, plain, atol=1e-3)  # the adapter changes the outputs


def test_a_tokenizer_without_pad_token_pads_with_eos(tokenizer, tmp_path):
    no_pad = copy.deepcopy(tokenizer)
    no_pad.pad_token = None
    path = save_pretrained(build_tiny_causal_lm(tokenizer, "llama"), no_pad, tmp_path / "m")
    loaded = load_tokenizer(path)
    assert loaded.pad_token == "<eos>" and loaded.pad_token_id == tokenizer.eos_token_id
    with_pad = save_pretrained(build_tiny_causal_lm(tokenizer, "llama"), tokenizer, tmp_path / "n")
    assert load_tokenizer(with_pad).pad_token == "<pad>"
