"""The README's Python snippet runs as written, with tiny local Llama models in place of the Hub ids."""

import json
import re
from pathlib import Path

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
