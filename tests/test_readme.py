"""The README's Python snippet runs as written, with tiny local Llama models in place of the Hub ids; every module the
README and docs/*.md name exists."""

import json
import re
from pathlib import Path

import pytest

import trl_esr
from trl_esr.demo.tiny_models import build_tiny_causal_lm, save_pretrained


README = Path(__file__).parent.parent / "README.md"


def test_readme_snippet_trains(tmp_path, tokenizer, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = [{"prompt": [{"role": "user", "content": f"w{i} w{i + 1} w{i + 2}"}]} for i in range(16)]
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(row) for row in rows))
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.DOTALL).group(1)
    student = save_pretrained(
        build_tiny_causal_lm(tokenizer, "llama", max_position_embeddings=4096, seed=0), tokenizer, tmp_path / "student"
    )
    teacher = save_pretrained(
        build_tiny_causal_lm(tokenizer, "llama", max_position_embeddings=4096, seed=1), tokenizer, tmp_path / "teacher"
    )
    snippet, replaced = re.subn(r"^student, teacher = .*$", f"student, teacher = {student!r}, {teacher!r}", snippet,
                                flags=re.MULTILINE)  # fmt: skip
    assert replaced == 1

    # CPU and a single step; the snippet's ESR settings are kept.
    cpu_overrides = dict(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_steps=1, report_to=[],
                         gradient_checkpointing=False)  # fmt: skip
    real_config = trl_esr.ESRConfig
    built = []
    monkeypatch.setattr(trl_esr, "ESRConfig", lambda **kw: built.append(real_config(**{**kw, **cpu_overrides}))
                        or built[-1])  # fmt: skip
    namespace = {}
    exec(compile(snippet, str(README), "exec"), namespace)

    trainer = namespace["trainer"]
    assert built[0].esr_k == 100 and trainer.state.global_step == 1
    assert trainer.state.log_history[0]["esr/k"] == 100


# Every module the docs name exists: a path `trl_esr/...py` (or a folder `trl_esr/.../`) is in the repository, and a
# dotted name `trl_esr.x.y` is a module or a module's attribute.
DOCS = [README, *sorted((README.parent / "docs").glob("*.md"))]
PATH_REFERENCE = re.compile(r"\btrl_esr(?:/\w+)+(?:\.py|/)")
DOTTED_REFERENCE = re.compile(r"\btrl_esr(?:\.[A-Za-z_]\w*)+")


def doc_references(pattern: re.Pattern) -> list[tuple[str, str]]:
    return sorted({(doc.name, match) for doc in DOCS for match in pattern.findall(doc.read_text())})


def resolve(dotted: str):
    """The module or attribute `dotted` names: the longest importable prefix, then attributes."""
    import importlib
    import importlib.util

    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:  # a parent is not a package
            spec = None
        if spec is not None:
            target = importlib.import_module(name)
            for attribute in parts[end:]:
                target = getattr(target, attribute)  # AttributeError: the docs name something that is not there
            return target
    raise ModuleNotFoundError(dotted)


def test_the_docs_name_only_modules_that_exist():
    root = README.parent
    paths, dotted = doc_references(PATH_REFERENCE), doc_references(DOTTED_REFERENCE)
    assert len(paths) > 20 and len(dotted) > 5  # the patterns find the references (README's "How it works" alone)
    missing = [(doc, path) for doc, path in paths if not (root / path).exists()]
    assert missing == [], f"paths the docs name that do not exist: {missing}"
    unresolved = []
    for doc, name in dotted:
        try:
            resolve(name)
        except (ImportError, AttributeError):
            unresolved.append((doc, name))
    assert unresolved == [], f"modules or names the docs name that do not exist: {unresolved}"


def test_the_reference_patterns():
    text = "see `trl_esr/loss.py`, `trl_esr/demo/`, trl_esr.pairing.pair_kind. And `trl_esr.nope`; trl_esr alone."
    assert PATH_REFERENCE.findall(text) == ["trl_esr/loss.py", "trl_esr/demo/"]
    assert DOTTED_REFERENCE.findall(text) == ["trl_esr.pairing.pair_kind", "trl_esr.nope"]
    assert resolve("trl_esr.pairing.pair_kind").__name__ == "pair_kind"
    with pytest.raises(ModuleNotFoundError):
        resolve("trl_esr_nope.x")
    with pytest.raises(AttributeError):
        resolve("trl_esr.pairing.nope")
