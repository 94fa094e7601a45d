"""Moved to [`trl_esr.demo.tiny_models`]: test and demo scaffolding lives in the demo layer, not the core.

A temporary alias for the test files still importing it from here (tests/test_evaluation.py,
tests/test_diagnostics_cli.py, tests/test_teacher_view.py, tests/test_inference.py, tests/test_prompts.py); delete it
once they import from `trl_esr.demo.tiny_models`.
"""

from trl_esr.demo.tiny_models import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    build_tiny_causal_lm,
    build_word_tokenizer,
    save_pretrained,
)


__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "build_tiny_causal_lm", "build_word_tokenizer", "save_pretrained"]
