"""Systematic and residual resampling for particle filters, batched over problems.

`weights` `[problems, particles]` (non-negative, normalised per row here) and
`uniforms` `[problems, n]` in [0, 1) give `ancestors` `[problems, n]`: new particle `j`
of problem `b` copies particle `ancestors[b, j]`. The schemes are those of
`ttc.strategies.resampling`, made deterministic functions of the uniforms:

- `systematic`: points `(u[b, 0] + j) / n` on the CDF, each mapped to the first particle
  whose cumulative weight reaches it (`bisect_left`);
- `residual`: `floor(n w_i)` copies of each particle in order, then the remaining
  `r = n - sum floor(n w_i)` slots drawn from the leftover weights `n w_i - floor(n w_i)`,
  slot `C + i` with uniform `u[b, i]`.

The CDF is accumulated in float64 and its top is raised to at least 1, so rounding never
leaves a point above it. A row of zero weights resamples uniformly.
"""

from __future__ import annotations

from typing import Literal

import torch
import triton
import triton.language as tl

from ._dispatch import Impl, use_triton

Scheme = Literal["systematic", "residual"]

MAX_PARTICLES = 8192
"""The kernel holds a problem's particles in one block."""


def _normalised(weights: torch.Tensor) -> torch.Tensor:
    w = weights.double().clamp_min(0)
    total = w.sum(-1, keepdim=True)
    uniform = torch.full_like(w, 1.0 / w.shape[-1])
    return torch.where(total > 0, w / torch.where(total > 0, total, 1.0), uniform)


def _cdf(w: torch.Tensor) -> torch.Tensor:
    cdf = w.cumsum(-1)
    cdf[:, -1] = cdf[:, -1].clamp_min(1.0)
    return cdf


def reference(weights: torch.Tensor, uniforms: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """The specification: `[problems, n]` int64 ancestors (see the module docstring)."""
    problems, particles = weights.shape
    n = uniforms.shape[1]
    w = _normalised(weights)
    u = uniforms.double()
    j = torch.arange(n, device=weights.device, dtype=torch.float64)
    if scheme == "systematic":
        points = u[:, :1] / n + j / n
        return torch.searchsorted(_cdf(w), points).clamp_(max=particles - 1)
    copies = torch.floor(n * w)
    ends = copies.cumsum(-1)  # exact: sums of small integers in float64
    fixed = ends[:, -1:]
    slot = j.expand(problems, n).contiguous()
    copied = torch.searchsorted(ends, slot, right=True)
    leftover = n * w - copies
    spread = leftover.sum(-1, keepdim=True) <= 0  # weights summed to slightly under 1
    leftover = torch.where(spread, torch.ones_like(leftover), leftover)
    rest_cdf = _cdf(leftover / leftover.sum(-1, keepdim=True))
    r = (slot - fixed).clamp_(min=0).long()  # slot C + i draws with uniform i
    drawn = torch.searchsorted(rest_cdf, u.gather(1, r.clamp_(max=n - 1)))
    out = torch.where(slot < fixed, copied, drawn)
    return out.clamp_(max=particles - 1)


@triton.jit
def _resample_kernel(
    w_ptr,
    u_ptr,
    out_ptr,
    particles,
    n,
    stride_w,
    stride_u,
    stride_o,
    RESIDUAL: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    # One program per problem: its particles' CDF in one block (float64), then the n
    # slots BLOCK_N at a time, each counting the CDF entries below its point.
    b = tl.program_id(0)
    i = tl.arange(0, BLOCK_P)
    i_ok = i < particles
    w = tl.load(w_ptr + b * stride_w + i, mask=i_ok, other=0.0).to(tl.float64)
    w = tl.maximum(w, 0.0)
    total = tl.sum(w, 0)
    w = tl.where(total > 0, w / tl.where(total > 0, total, 1.0), 1.0 / particles)
    w = tl.where(i_ok, w, 0.0)
    nf = n.to(tl.float64)
    if RESIDUAL:
        copies = tl.floor(nf * w)
        ends = tl.cumsum(copies, 0)
        fixed = tl.sum(copies, 0)
        left = nf * w - copies
        left_total = tl.sum(left, 0)
        left = tl.where(left_total > 0, left, tl.where(i_ok, 1.0, 0.0))
        left = left / tl.sum(left, 0)
        cdf = tl.cumsum(left, 0)
    else:
        cdf = tl.cumsum(w, 0)
    # raise the top of the CDF to at least 1; padding positions lie above every point
    cdf = tl.where(i == particles - 1, tl.maximum(cdf, 1.0), cdf)
    cdf = tl.where(i_ok, cdf, 2.0)
    u0 = tl.load(u_ptr + b * stride_u).to(tl.float64)
    for start in range(0, n, BLOCK_N):
        j = start + tl.arange(0, BLOCK_N)
        j_ok = j < n
        jf = j.to(tl.float64)
        if RESIDUAL:
            # deterministic copies: the slot's particle is the number of copy-ends <= it
            copied = tl.sum(
                (tl.where(i_ok, ends, nf + 1.0)[None, :] <= jf[:, None]).to(tl.int32), 1
            )
            r = tl.maximum(jf - fixed, 0.0).to(tl.int32)
            r = tl.minimum(r, n - 1)
            point = tl.load(u_ptr + b * stride_u + r, mask=j_ok, other=0.0).to(tl.float64)
        else:
            point = u0 / nf + jf / nf
        # bisect_left: the number of CDF entries strictly below the point
        drawn = tl.sum((cdf[None, :] < point[:, None]).to(tl.int32), 1)
        if RESIDUAL:
            drawn = tl.where(jf < fixed, copied, drawn)
        drawn = tl.minimum(drawn, particles - 1)
        tl.store(out_ptr + b * stride_o + j, drawn.to(tl.int64), mask=j_ok)


def triton_resample(weights: torch.Tensor, uniforms: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    problems, particles = weights.shape
    n = uniforms.shape[1]
    out = torch.empty(problems, n, dtype=torch.int64, device=weights.device)
    w = weights.contiguous()
    u = uniforms.to(torch.float64).contiguous()
    block_p = triton.next_power_of_2(particles)
    block_n = max(1, min(triton.next_power_of_2(n), 8192 // block_p))
    if problems and n:
        _resample_kernel[(problems,)](
            w, u, out, particles, n, w.stride(0), u.stride(0), out.stride(0),
            RESIDUAL=scheme == "residual", BLOCK_P=block_p, BLOCK_N=block_n,
        )  # fmt: skip
    return out


def resample(
    weights: torch.Tensor, uniforms: torch.Tensor, *, scheme: Scheme, impl: Impl = "auto"
) -> torch.Tensor:
    """Ancestors `[problems, n]` for `weights` `[problems, particles]` and `uniforms`
    `[problems, n]` by `scheme` (`systematic` or `residual`)."""
    if scheme not in ("systematic", "residual"):
        raise ValueError(f"resample: scheme must be systematic or residual, got {scheme!r}")
    if weights.dim() != 2 or uniforms.dim() != 2 or uniforms.shape[0] != weights.shape[0]:
        raise ValueError(
            f"resample needs weights [problems, particles] and uniforms [problems, n], got "
            f"{tuple(weights.shape)} and {tuple(uniforms.shape)}"
        )
    if weights.shape[1] < 1 or weights.shape[1] > MAX_PARTICLES:
        raise ValueError(
            f"resample supports 1 to {MAX_PARTICLES} particles per problem, got {weights.shape[1]}"
        )
    if use_triton("resample", impl, _resample_kernel, weights):
        return triton_resample(weights, uniforms, scheme)
    return reference(weights, uniforms, scheme)
