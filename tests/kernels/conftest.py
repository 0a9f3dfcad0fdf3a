"""Kernel tests run the Triton path on CUDA when there is a device, else in Triton's CPU
interpreter. TRITON_INTERPRET must be set before any kernel is defined (`@triton.jit`
reads it), i.e. before the first import of a `ttc.kernels` op module."""

from __future__ import annotations

import os
import sys

import pytest
import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"
    ops = ("attention", "sampling", "vocab_stats", "resampling")
    early = [f"ttc.kernels.{op}" for op in ops if f"ttc.kernels.{op}" in sys.modules]
    if early:
        raise RuntimeError(
            f"{early[0]} was imported before tests/kernels/conftest.py set TRITON_INTERPRET=1; "
            "import the kernels modules inside tests, or set the variable in the environment"
        )

DEVICE = "cuda" if CUDA else "cpu"


@pytest.fixture
def device() -> str:
    return DEVICE
