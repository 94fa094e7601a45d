"""trl_esr/_lazy.py: a package's names are imported from their submodule on first access, and only then."""

import json
import subprocess
import sys

import pytest


def loaded_after(statement: str) -> dict:
    """`trl_esr` modules and heavy libraries in `sys.modules` after `statement`, in a fresh interpreter."""
    probe = (
        f"import json, sys; {statement}; "
        "print(json.dumps({'ours': sorted(m for m in sys.modules if m.startswith('trl_esr')), "
        "'heavy': [m for m in ('torch', 'transformers', 'trl') if m in sys.modules]}))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120)
    return json.loads(result.stdout.splitlines()[-1])


def test_package_import_loads_no_submodule_with_a_name_behind_it():
    loaded = loaded_after("import trl_esr, trl_esr.diagnostics; names = dir(trl_esr) + dir(trl_esr.diagnostics)")
    assert loaded["heavy"] == []
    assert set(loaded["ours"]) == {"trl_esr", "trl_esr._lazy", "trl_esr.diagnostics"}


def test_first_access_imports_exactly_the_named_submodule():
    loaded = loaded_after("from trl_esr.diagnostics import recommend_k")  # .recommend is plain Python
    assert "trl_esr.diagnostics.recommend" in loaded["ours"]
    assert not {"trl_esr.diagnostics.run", "trl_esr.diagnostics.callback", "trl_esr.trainer"} & set(loaded["ours"])


def test_the_value_is_the_submodules_object_and_is_cached():
    import trl_esr.diagnostics as diagnostics
    from trl_esr.diagnostics import recommend

    assert diagnostics.recommend_k is recommend.recommend_k
    assert vars(diagnostics)["recommend_k"] is recommend.recommend_k  # cached: the hook does not run again


def test_dir_lists_every_export_once_and_unknown_names_raise():
    import trl_esr
    import trl_esr.diagnostics as diagnostics

    assert {"ESRConfig", "ESRDistillTrainer", "esr_k_at_step", "__version__"} <= set(dir(trl_esr))
    assert set(diagnostics.__all__) <= set(dir(diagnostics))
    diagnostics.recommend_k  # noqa: B018  (cached in the namespace now, and still listed once)
    assert len(dir(diagnostics)) == len(set(dir(diagnostics)))
    with pytest.raises(AttributeError, match="'trl_esr.diagnostics' has no attribute 'nope'"):
        diagnostics.nope  # noqa: B018
