"""The dispatcher: reference off CUDA, the kernel on request, clear errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


def test_auto_picks_the_reference_for_cpu_tensors() -> None:
    from ttc.kernels._dispatch import use_triton
    from ttc.kernels.sampling import _sample_kernel

    cpu = torch.zeros(2)
    assert use_triton("sample", "auto", _sample_kernel, cpu) is False
    assert use_triton("sample", "reference", _sample_kernel, cpu) is False
    assert use_triton("sample", "triton", _sample_kernel, cpu) is True  # interpreted here


def test_unknown_impl_names_the_choices() -> None:
    from ttc.kernels.vocab_stats import vocab_stats

    with pytest.raises(ValueError, match="impl must be one of auto, reference, triton"):
        vocab_stats(torch.zeros(1, 3), impl="cuda")  # type: ignore[arg-type]


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env},
        cwd=ROOT, timeout=120,
    )  # fmt: skip


def test_triton_on_cpu_without_the_interpreter_says_what_to_set() -> None:
    code = (
        "import torch\n"
        "from ttc.kernels.vocab_stats import vocab_stats\n"
        "vocab_stats(torch.zeros(1, 3), impl='triton')\n"
    )
    proc = _run(code)
    assert proc.returncode != 0
    assert "set TRITON_INTERPRET=1 in the environment before importing" in proc.stderr


def test_the_kernels_folder_imports_without_ttc() -> None:
    """benchmarks/kernel_speed.py runs on machines with only torch and triton."""
    code = (
        "import sys\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "import kernels.attention, kernels.sampling, kernels.vocab_stats, kernels.resampling\n"
        "assert not any(m == 'ttc' or m.startswith('ttc.') for m in sys.modules), 'ttc imported'\n"
        "print('ok')\n"
    )
    proc = _run(code, TRITON_INTERPRET="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"
