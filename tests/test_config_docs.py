"""`docs/configuration.md` is generated from the fields' `help` metadata by `scripts/gen_config_docs.py`; this test
fails when a help string, default or field changed without regenerating it."""

import importlib.util
from pathlib import Path

from helpers import esr_fields

from trl_esr import ESRConfig


ROOT = Path(__file__).parent.parent


def load_generator():
    spec = importlib.util.spec_from_file_location("gen_config_docs", ROOT / "scripts" / "gen_config_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_configuration_docs_are_up_to_date():
    generator = load_generator()
    assert generator.DOCS.read_text() == generator.render(), "run `python scripts/gen_config_docs.py`"
    assert generator.main(["--check"]) == 0


def test_every_esr_option_and_its_help_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    script_options = ["dataset_files", "prompt_column", "system_prompt", "teacher_load_in_4bit"]
    for name in [*esr_fields(), *script_options]:
        assert f"| `{name}` |" in text
    help_text = ESRConfig.__dataclass_fields__["esr_mode"].metadata["help"]
    assert help_text in text


def test_check_fails_on_a_stale_file(tmp_path, monkeypatch):
    generator = load_generator()
    stale = tmp_path / "configuration.md"
    stale.write_text(generator.render().replace("esr_k", "esr_n", 1))
    monkeypatch.setattr(generator, "DOCS", stale)
    assert generator.main(["--check"]) == 1
