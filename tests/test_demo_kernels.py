"""trl_esr/demo/kernels.py: the demo pins torch's and MKL's CPU kernels before anything computes, so that its
numbers repeat on other x86-64 CPUs; a user's own setting and `--native-kernels` are respected."""

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

from trl_esr.demo import kernels
from trl_esr.demo.pretrain import ModelRecipe, is_cached


pytestmark = pytest.mark.skipif(not kernels.can_pin(), reason="the pinned kernels need an x86-64 CPU with AVX2")

# Pins, then reports what torch itself says after a computation: the kernel level is fixed at the first kernel.
PROBE = """
import json, os, sys
from trl_esr.demo import kernels
chosen = kernels.pin()
import torch
torch.ones(8).exp().sum()
print(json.dumps({"chosen": chosen, "capability": torch.backends.cpu.get_cpu_capability(),
                  "mkl_cbwr": os.environ.get("MKL_CBWR"), "describe": kernels.describe()}))
"""


def _probe(env: dict[str, str], code: str = PROBE) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in kernels.PINNED}
    out = subprocess.run([sys.executable, "-c", code], env=clean | env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_pin_sets_both_before_the_first_kernel():
    result = _probe({})
    assert result["chosen"] == kernels.PINNED
    assert result["capability"] == "AVX2"  # torch's own report, not ours
    assert result["mkl_cbwr"] == "AVX2"
    assert result["describe"]["pinned"] is True


def test_a_users_own_setting_is_kept():
    result = _probe({"ATEN_CPU_CAPABILITY": "default"})
    assert result["chosen"] == {"MKL_CBWR": "AVX2"}
    assert result["capability"] == "DEFAULT"
    assert result["describe"]["pinned"] is False


def test_pinning_after_torch_has_computed_is_reported_as_not_pinned():
    """What a library user who calls `trl_esr.demo.run.main` in a warm process gets: the report must not claim the
    pinned kernels when torch had already chosen others (only possible where the CPU has more than AVX2)."""
    code = PROBE.replace("chosen = kernels.pin()\nimport torch\n", "import torch\ntorch.ones(8).exp()\n")
    code = code.replace("torch.ones(8).exp().sum()", "chosen = kernels.pin()")
    result = _probe({}, code)
    assert result["mkl_cbwr"] == "AVX2"
    assert result["describe"]["pinned"] is (result["capability"] == "AVX2")


@pytest.mark.parametrize(("argv", "expected"), [([], "AVX2"), (["--native-kernels"], None)])
def test_demo_main_pins_unless_native_kernels(argv, expected):
    """`trl_esr.demo.main` (what `trl-esr demo` and `python -m trl_esr.demo` call) pins before importing the demo;
    the demo module is stubbed, so this checks the order without TRL's import."""
    code = (
        "import os, sys, types\n"
        "stub = types.SimpleNamespace(main=lambda argv: print(os.environ.get('MKL_CBWR')))\n"
        "sys.modules['trl_esr.demo.run'] = stub\n"
        f"from trl_esr.demo import main\nmain({argv!r})\n"
    )
    clean = {k: v for k, v in os.environ.items() if k not in kernels.PINNED}
    out = subprocess.run([sys.executable, "-c", code], env=clean, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(expected)


def test_a_model_cached_with_other_kernels_is_not_reused(tmp_path):
    recipe = ModelRecipe("qwen2", 32, 2, 10, 8, 1e-3, 3, 0, kernels="cpu AVX512 MKL_CBWR=unset")
    (tmp_path / "demo_recipe.json").write_text(json.dumps(recipe.__dict__))
    assert is_cached(recipe, tmp_path)
    assert not is_cached(replace(recipe, kernels="cpu AVX2 MKL_CBWR=AVX2"), tmp_path)
    assert kernels.cache_key("cuda") == "cuda"
