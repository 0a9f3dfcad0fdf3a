"""Choosing between an op's Triton kernel and its torch reference."""

from __future__ import annotations

import os
from typing import Any, Literal

import torch

Impl = Literal["auto", "reference", "triton"]
"""`auto`: the kernel for CUDA tensors, the reference elsewhere; `reference` / `triton`:
that path whatever the device (`triton` on CPU needs TRITON_INTERPRET=1)."""

IMPLS = ("auto", "reference", "triton")


def interpreting() -> bool:
    """Whether Triton kernels defined now run in Triton's CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def is_interpreted(kernel: Any) -> bool:
    """Whether `kernel` (a `@triton.jit` function) was defined under TRITON_INTERPRET=1."""
    return type(kernel).__name__ == "InterpretedFunction"


def use_triton(op: str, impl: str, kernel: Any, *tensors: torch.Tensor) -> bool:
    """True to run `kernel`, False for the reference; a clear error when `impl` asks for
    the kernel on tensors it cannot run on."""
    if impl not in IMPLS:
        raise ValueError(f"{op}: impl must be one of {', '.join(IMPLS)}, got {impl!r}")
    on_cuda = all(t.is_cuda for t in tensors)
    if impl == "reference":
        return False
    if impl == "auto":
        return on_cuda
    if on_cuda or is_interpreted(kernel):
        return True
    raise RuntimeError(
        f"{op}: impl='triton' on CPU tensors needs Triton's interpreter; set "
        "TRITON_INTERPRET=1 in the environment before importing the kernels modules"
    )


def dot_upcast(kernel: Any, dtype: torch.dtype) -> bool:
    """Whether `tl.dot` operands of `dtype` must be upcast to fp32 in `kernel`.

    Triton's interpreter multiplies bfloat16 operands of `tl.dot` as their raw bits (it
    holds them as uint16 arrays), so interpreted kernels upcast them; compiled kernels use
    the tensor cores' native bfloat16 product.
    """
    return dtype == torch.bfloat16 and is_interpreted(kernel)
