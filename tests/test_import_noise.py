"""`import trl_esr` quietens exactly two notices bitsandbytes' CPU backend causes at import (trl_esr/__init__.py), and
nothing else from those loggers."""

import logging
import os
import subprocess
import sys

import trl_esr  # noqa: F401  (installs the filter and the level)


NOTICES = ("Failed to load CPU gemm_4bit_forward", "Skipping publisher trust check for 'kernels-community/")


def _import_stderr(statement: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-c", statement], capture_output=True, text=True, check=True, timeout=120, env=env
    ).stderr


def test_bitsandbytes_import_notices_are_gone_after_trl_esr():
    quiet = _import_stderr("import trl_esr, bitsandbytes")
    assert not any(notice in quiet for notice in NOTICES), quiet
    # Where this CPU makes bitsandbytes print them at all (AVX512-BF16), the same import without trl_esr shows them,
    # so the check above is not vacuous there; elsewhere there is nothing to quieten.
    loud = _import_stderr("import bitsandbytes")
    if "avx512_bf16" in open("/proc/cpuinfo").read():
        assert all(notice in loud for notice in NOTICES), loud


def test_the_filter_drops_only_the_bitsandbytes_kernel_notice():
    logger = logging.getLogger("kernels._internals.hf_hub")
    seen = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())
    logger.addHandler(handler)
    try:
        logger.warning("Skipping publisher trust check for 'kernels-community/quantization-bitsandbytes' because ...")
        logger.warning("Skipping publisher trust check for 'someone/other-kernel' because ...")
        logger.warning("Kernel 'kernels-community/quantization-bitsandbytes' is not trusted")
    finally:
        logger.removeHandler(handler)
    assert seen == [
        "Skipping publisher trust check for 'someone/other-kernel' because ...",
        "Kernel 'kernels-community/quantization-bitsandbytes' is not trusted",
    ]
