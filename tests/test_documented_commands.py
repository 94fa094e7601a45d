"""Every command the README, docs/*.md and the example scripts' usage texts show a user parses with the parser it
reaches (`trl-esr <command>`, `python examples/scripts/<script>.py`, `accelerate launch ... examples/scripts/...`):
an option renamed or removed, a flag written without the value it needs (`--bf16` alone is refused by transformers 5's
parser), or a `--config` / `--config_file` path that moved fails here. Commands with a `...` placeholder are skipped.
Nothing is loaded: parsing only, from the repository root as the docs are written."""

import ast
import re
import shlex
from pathlib import Path

import pytest

from trl_esr.demo.run import parse_args as parse_demo_args
from trl_esr.diagnostics.cli import make_parser as suggest_k_parser
from trl_esr.scripts.esr_distill import make_parser as train_parser
from trl_esr.scripts.evaluate_boxed import make_parser as evaluate_parser


ROOT = Path(__file__).parent.parent
SCRIPTS = {"esr_distill.py": "train", "evaluate_boxed.py": "evaluate"}
# This machine has no GPU: the training parser's GPU checks are switched off after the documented arguments.
CPU_OVERRIDES = ["--use_cpu", "--bf16", "False"]


def _bash_blocks(path: Path) -> list[str]:
    text = path.read_text()
    if path.suffix == ".py":
        text = ast.get_docstring(ast.parse(text)) or ""
    return re.findall(r"```(?:bash|sh|shell)\n(.*?)```", text, re.S)


def shell_lines() -> list[tuple[str, list[str]]]:
    """`(where, words)` for every line of every shell block, continued lines joined, `VAR=value` prefixes dropped."""
    sources = [
        ROOT / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples/scripts").glob("*.py")),
    ]
    found = []
    for source in sources:
        for block in _bash_blocks(source):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line, comments=True)
                while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
                    words = words[1:]
                found.append((f"{source.relative_to(ROOT)}: {line.strip()[:60]}", words))
    return found


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """`(where, command, its arguments)` for every runnable line without a `...` placeholder."""
    found = []
    for where, words in shell_lines():
        command = _command(words)
        if command is not None and "..." not in words:
            found.append((where, *command))
    return found


def _command(words: list[str]) -> tuple[str, list[str]] | None:
    if words[:1] == ["trl-esr"] and len(words) > 1:
        return words[1], words[2:]
    for i, word in enumerate(words):
        script = Path(word).name
        if word.startswith("examples/scripts/") and script in SCRIPTS:
            return SCRIPTS[script], words[i + 1 :]
    return None


COMMANDS = documented_commands()


def test_the_docs_show_each_command():
    shown = {command for _, command, _ in COMMANDS}
    assert {"train", "evaluate", "suggest-k", "demo"} <= shown, shown
    assert len(COMMANDS) >= 12


def test_the_accelerate_config_files_named_exist():
    named = [(where, words[words.index("--config_file") + 1]) for where, words in shell_lines()
             if words[:2] == ["accelerate", "launch"] and "--config_file" in words]  # fmt: skip
    assert len(named) >= 3
    for where, path in named:
        assert (ROOT / path).is_file(), where


@pytest.mark.parametrize(("where", "command", "argv"), COMMANDS, ids=[where for where, _, _ in COMMANDS])
def test_documented_command_parses(where, command, argv, monkeypatch):
    monkeypatch.chdir(ROOT)
    if command == "train":
        script_args, training_args, model_args = train_parser().parse_args_and_config(args=[*argv, *CPU_OVERRIDES])
        assert training_args.teacher_model_name_or_path and model_args.model_name_or_path
        if (
            model_args.model_name_or_path == "Qwen/Qwen2.5-Math-1.5B" and training_args.esr_k == 100
        ):  # the paper's pair
            assert training_args.teacher_chat_template_kwargs == {"enable_thinking": False}, where  # non-thinking
    elif command == "evaluate":
        script_args, model_args = evaluate_parser().parse_args_and_config(args=argv)
        assert script_args.responses_file or model_args.model_name_or_path
    elif command == "suggest-k":
        args, model_args = suggest_k_parser().parse_args_and_config(args=argv)
        assert args.teacher_model_name_or_path and model_args.model_name_or_path
    elif command == "demo":
        parse_demo_args(argv)
    else:
        pytest.fail(f"{where}: `trl-esr {command}` is not a command")


def _python_blocks() -> list[tuple[str, str]]:
    sources = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [(f"{s.relative_to(ROOT)} #{i}", b) for s in sources for i, b in
            enumerate(re.findall(r"```python\n(.*?)```", s.read_text(), re.S))]  # fmt: skip


def _snippet_problems(code: str) -> list[str]:
    """What in a snippet names something `trl_esr` does not have: an import, or a keyword argument of a call to an
    imported `trl_esr` name (a class's `__init__`, a dataclass's fields, a function's parameters)."""
    import importlib
    import inspect

    imported, problems = {}, []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module.split(".")[0] == "trl_esr":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    problems.append(f"{node.module} has no {alias.name}")
                else:
                    imported[alias.asname or alias.name] = getattr(module, alias.name)
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in imported:
            parameters = inspect.signature(imported[node.func.id]).parameters
            takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
            for keyword in node.keywords:
                if keyword.arg is not None and keyword.arg not in parameters and not takes_any:
                    problems.append(f"{node.func.id}() has no argument {keyword.arg!r}")
    return problems


@pytest.mark.parametrize(("where", "code"), _python_blocks(), ids=[where for where, _ in _python_blocks()])
def test_documented_python_names_exist(where, code):
    """Each Python snippet of the README and docs parses, and every `trl_esr` name and keyword argument it uses
    exists (the README's snippet also runs: tests/test_readme.py)."""
    assert not _snippet_problems(code), where


def test_the_snippet_check_catches_a_renamed_argument():
    assert _snippet_problems("from trl_esr import ESRConfig\nESRConfig(esr_k=1, esr_horizon=2)") == [
        "ESRConfig() has no argument 'esr_horizon'"
    ]
    assert _snippet_problems("from trl_esr.data import load_dataset_of_prompts") == [
        "trl_esr.data has no load_dataset_of_prompts"
    ]
