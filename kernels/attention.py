"""Shared-prefix (cascade) decode attention.

At a decode step many rows (samples of one prompt, branches of a search tree) hold KV
that starts with the same tokens. Ordinary attention reads that shared KV once per row;
here the KV is given once per *group* of rows, in levels:

- level 0, the prompt: one group holding every row;
- level 1 (optional), a step prefix shared by a subtree: one group per subtree;
- the last level, each row's own suffix: one group per row.

A row's attention is over the concatenation of its groups' KV, one group per level. Per
level the kernel computes, for every group, softmax attention of all the group's query
rows (times the query heads that share a KV head) against the group's KV as one
matrix-matrix product per KV tile, Hydragen-style: the shared KV is read once for all
its rows. The partial results of the levels (and of the splits of long KV) merge by
their log-sum-exp: `out = sum_i exp(lse_i - lse) out_i` with `lse = logsumexp_i lse_i`.

Layout: queries `[rows, q_heads, head_dim]` (one decode token per row); a level's keys
and values `[groups, kv_heads, length, head_dim]`, valid up to `lengths[g]` (right
padding); rows `row_offsets[g] .. row_offsets[g + 1]` belong to group `g` (rows of a
group are contiguous). Query head `h` reads KV head `h // (q_heads // kv_heads)`
(grouped-query attention, as transformers' `repeat_kv`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ._dispatch import Impl, dot_upcast, use_triton


@dataclass(frozen=True)
class KVLevel:
    """The KV of one level: `groups` blocks of KV, each shared by a run of rows."""

    keys: torch.Tensor
    """`[groups, kv_heads, length, head_dim]`."""
    values: torch.Tensor
    """Like `keys`."""
    lengths: torch.Tensor
    """`[groups]` integer: valid positions of each group (the rest is padding)."""
    row_offsets: torch.Tensor
    """`[groups + 1]` integer, from 0 to rows: group g's rows are offsets[g]..offsets[g+1]."""

    @classmethod
    def shared(cls, keys: torch.Tensor, values: torch.Tensor, rows: int) -> KVLevel:
        """One block `[kv_heads, length, head_dim]` shared by all `rows` rows."""
        dev = keys.device
        return cls(
            keys.unsqueeze(0),
            values.unsqueeze(0),
            torch.tensor([keys.shape[1]], device=dev),
            torch.tensor([0, rows], device=dev),
        )

    @classmethod
    def per_row(cls, keys: torch.Tensor, values: torch.Tensor, lengths: torch.Tensor) -> KVLevel:
        """Each row's own KV, `[rows, kv_heads, length, head_dim]` valid up to `lengths`."""
        rows = keys.shape[0]
        return cls(keys, values, lengths, torch.arange(rows + 1, device=keys.device))


def _check(q: torch.Tensor, levels: Sequence[KVLevel]) -> None:
    if q.dim() != 3:
        raise ValueError(f"queries must be [rows, q_heads, head_dim], got shape {tuple(q.shape)}")
    if not levels:
        raise ValueError("cascade attention needs at least one KV level")
    rows, q_heads, dim = q.shape
    for i, lv in enumerate(levels):
        k = lv.keys
        if k.dim() != 4 or k.shape[3] != dim or lv.values.shape != k.shape:
            raise ValueError(
                f"level {i}: keys and values must be [groups, kv_heads, length, {dim}], got "
                f"{tuple(k.shape)} and {tuple(lv.values.shape)}"
            )
        if q_heads % k.shape[1]:
            raise ValueError(
                f"level {i}: {q_heads} query heads are not a multiple of {k.shape[1]} KV heads"
            )
        if lv.lengths.shape != (k.shape[0],) or lv.row_offsets.shape != (k.shape[0] + 1,):
            raise ValueError(
                f"level {i}: lengths must be [{k.shape[0]}] and row_offsets "
                f"[{k.shape[0] + 1}], got {tuple(lv.lengths.shape)} and "
                f"{tuple(lv.row_offsets.shape)}"
            )
        if int(lv.row_offsets[-1]) != rows:
            raise ValueError(f"level {i}: row_offsets must end at the {rows} rows")


# -- reference ---------------------------------------------------------------------------


def reference(
    q: torch.Tensor, levels: Sequence[KVLevel], *, scale: float | None = None
) -> torch.Tensor:
    """The specification: per row, softmax attention (in fp32) over the concatenation of
    its groups' valid KV, one group per level; the result in the queries' dtype."""
    _check(q, levels)
    rows, q_heads, dim = q.shape
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    row_ids = torch.arange(rows, device=q.device)
    keys, values, valid = [], [], []
    for lv in levels:
        # group of each row: the number of group starts at or before it, minus one
        group = torch.searchsorted(lv.row_offsets[1:], row_ids, right=True)
        gqa = q_heads // lv.keys.shape[1]
        keys.append(lv.keys[group].float().repeat_interleave(gqa, dim=1))
        values.append(lv.values[group].float().repeat_interleave(gqa, dim=1))
        pos = torch.arange(lv.keys.shape[2], device=q.device)
        valid.append(pos[None, :] < lv.lengths[group][:, None])
    k, v, ok = torch.cat(keys, 2), torch.cat(values, 2), torch.cat(valid, 1)
    scores = torch.einsum("nhd,nhld->nhl", q.float(), k) * scale
    scores = scores.masked_fill(~ok[:, None, :], float("-inf"))
    return torch.einsum("nhl,nhld->nhd", torch.softmax(scores, -1), v).to(q.dtype)


# -- kernel ------------------------------------------------------------------------------


@triton.jit
def _level_kernel(
    q_ptr,
    k_ptr,
    v_ptr,
    len_ptr,
    off_ptr,
    o_ptr,
    lse_ptr,
    stride_qn,
    stride_qh,
    stride_kg,
    stride_kh,
    stride_kl,
    stride_vg,
    stride_vh,
    stride_vl,
    stride_os,
    stride_on,
    stride_oh,
    stride_ls,
    stride_ln,
    scale_log2,
    chunk,
    row_blocks,
    GQA: tl.constexpr,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_R: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_L: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    # One program: group g, KV head h, a block of BLOCK_R of the group's rows, one split
    # (positions split*chunk .. (split+1)*chunk) of the group's KV.
    g = tl.program_id(0)
    h = tl.program_id(1)
    rb = tl.program_id(2) % row_blocks
    split = tl.program_id(2) // row_blocks
    row_start = tl.load(off_ptr + g)
    row_end = tl.load(off_ptr + g + 1)
    length = tl.load(len_ptr + g)
    row0 = row_start + rb * BLOCK_R
    lo = split * chunk
    hi = tl.minimum(lo + chunk, length)
    if row0 < row_end:
        # Query matrix row m is (row row0 + m // GQA, query head h * GQA + m % GQA): the
        # query heads that read KV head h, for every row of the block.
        m = tl.arange(0, BLOCK_M)
        row = row0 + m // GQA
        head = h * GQA + m % GQA
        m_ok = (m < BLOCK_R * GQA) & (row < row_end)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < HEAD_DIM
        q = tl.load(
            q_ptr + row[:, None] * stride_qn + head[:, None] * stride_qh + d[None, :],
            mask=m_ok[:, None] & d_ok[None, :],
            other=0.0,
        )
        if UPCAST:
            q = q.to(tl.float32)
        m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        k_base = k_ptr + g.to(tl.int64) * stride_kg + h * stride_kh
        v_base = v_ptr + g.to(tl.int64) * stride_vg + h * stride_vh
        for start in range(lo, hi, BLOCK_L):
            pos = start + tl.arange(0, BLOCK_L)
            p_ok = pos < hi
            kv_mask = p_ok[:, None] & d_ok[None, :]
            k = tl.load(k_base + pos[:, None] * stride_kl + d[None, :], mask=kv_mask, other=0.0)
            v = tl.load(v_base + pos[:, None] * stride_vl + d[None, :], mask=kv_mask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            # base-2 online softmax: s = q.k * scale * log2(e)
            s = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale_log2
            s = tl.where(p_ok[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
            m_i = m_new
        if lo < hi:
            out = acc / l_i[:, None]
            lse = m_i + tl.log2(l_i)
        else:  # an empty split contributes nothing to the merge
            out = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
            lse = tl.full([BLOCK_M], float("-inf"), tl.float32)
        o_base = o_ptr + split * stride_os
        tl.store(
            o_base + row[:, None] * stride_on + head[:, None] * stride_oh + d[None, :],
            out,
            mask=m_ok[:, None] & d_ok[None, :],
        )
        tl.store(lse_ptr + split * stride_ls + row * stride_ln + head, lse, mask=m_ok)


def _splits(work_programs: int, length: int, block_l: int, rows: int) -> int:
    """KV splits per group: enough programs to fill a large GPU (~2 waves of 132 SMs),
    at least 4 KV tiles per split, and fewer splits when many rows share the level (the
    partial results, fp32 per row, would outweigh the KV read once)."""
    want = max(1, math.ceil(264 / max(1, work_programs)))
    most = max(1, length // (4 * block_l))
    if rows >= 128:
        most = min(most, 2)
    return max(1, min(want, most))


def _partials(
    q: torch.Tensor, lv: KVLevel, scale: float, max_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(out `[splits, rows, q_heads, head_dim]` fp32, lse `[splits, rows, q_heads]` in
    base 2) of the queries against one level."""
    rows, q_heads, dim = q.shape
    groups, kv_heads, length, _ = lv.keys.shape
    gqa = q_heads // kv_heads
    # Rows per program: the query matrix has BLOCK_R * GQA rows, at least 16 (tl.dot's
    # minimum) and at most 64 (registers).
    block_r = max(1, min(triton.next_power_of_2(max_rows), max(1, 64 // gqa)))
    block_m = max(16, triton.next_power_of_2(block_r * gqa))
    block_l = 64 if dim <= 64 else 32
    if q.is_cuda:
        block_l = 64
    row_blocks = math.ceil(max_rows / block_r)
    splits = _splits(groups * kv_heads * row_blocks, length, block_l, rows)
    chunk = math.ceil(max(1, length) / splits / block_l) * block_l
    out = torch.empty(splits, rows, q_heads, dim, device=q.device, dtype=torch.float32)
    lse = torch.empty(splits, rows, q_heads, device=q.device, dtype=torch.float32)
    k, v = lv.keys, lv.values
    if k.stride(3) != 1 or v.stride(3) != 1:
        k, v = k.contiguous(), v.contiguous()
    grid = (groups, kv_heads, row_blocks * splits)
    _level_kernel[grid](
        q,
        k,
        v,
        lv.lengths.to(torch.int32),
        lv.row_offsets.to(torch.int32),
        out,
        lse,
        q.stride(0),
        q.stride(1),
        k.stride(0),
        k.stride(1),
        k.stride(2),
        v.stride(0),
        v.stride(1),
        v.stride(2),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        lse.stride(0),
        lse.stride(1),
        scale * math.log2(math.e),
        chunk,
        row_blocks,
        GQA=gqa,
        HEAD_DIM=dim,
        BLOCK_D=triton.next_power_of_2(dim),
        BLOCK_R=block_r,
        BLOCK_M=block_m,
        BLOCK_L=block_l,
        UPCAST=dot_upcast(_level_kernel, q.dtype),
        # fp32 inputs get fp32 products (tensor cores would round them to tf32)
        PRECISION="ieee" if q.dtype == torch.float32 else "tf32",
    )
    return out, lse


def merge(outs: Sequence[torch.Tensor], lses: Sequence[torch.Tensor]) -> torch.Tensor:
    """Merge partial attention results by their base-2 log-sum-exp: `outs[i]`
    `[..., rows, heads, dim]` with `lses[i]` `[..., rows, heads]`."""
    o = torch.cat([x.reshape(-1, *x.shape[-3:]) for x in outs])
    lse = torch.cat([x.reshape(-1, *x.shape[-2:]) for x in lses])
    top = lse.amax(0)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    w = torch.exp2(lse - top)
    return (w.unsqueeze(-1) * o).sum(0) / w.sum(0).unsqueeze(-1)


def triton_cascade(
    q: torch.Tensor, levels: Sequence[KVLevel], *, scale: float | None = None
) -> torch.Tensor:
    """The kernel path: one launch per level, then the log-sum-exp merge."""
    _check(q, levels)
    dim = q.shape[2]
    scale = 1.0 / math.sqrt(dim) if scale is None else scale
    if q.stride(2) != 1:
        q = q.contiguous()
    outs, lses = [], []
    for lv in levels:
        max_rows = int((lv.row_offsets[1:] - lv.row_offsets[:-1]).max())
        o, lse = _partials(q, lv, scale, max_rows)
        outs.append(o)
        lses.append(lse)
    return merge(outs, lses).to(q.dtype)


# -- dispatcher --------------------------------------------------------------------------


def cascade_attention(
    q: torch.Tensor,
    levels: Sequence[KVLevel],
    *,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Decode attention of `q` `[rows, q_heads, head_dim]` over its KV levels (see the
    module docstring); `[rows, q_heads, head_dim]` in q's dtype. `scale` defaults to
    `1/sqrt(head_dim)`."""
    if use_triton("cascade_attention", impl, _level_kernel, q, *(lv.keys for lv in levels)):
        return triton_cascade(q, levels, scale=scale)
    return reference(q, levels, scale=scale)


def shared_prefix_attention(
    q: torch.Tensor,
    prefix_keys: torch.Tensor,
    prefix_values: torch.Tensor,
    suffix_keys: torch.Tensor,
    suffix_values: torch.Tensor,
    suffix_lengths: torch.Tensor,
    *,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """All rows over one shared prefix `[kv_heads, prefix, head_dim]`, then each over its
    own suffix `[rows, kv_heads, suffix, head_dim]` valid up to `suffix_lengths`."""
    rows = q.shape[0]
    levels = [
        KVLevel.shared(prefix_keys, prefix_values, rows),
        KVLevel.per_row(suffix_keys, suffix_values, suffix_lengths),
    ]
    return cascade_attention(q, levels, scale=scale, impl=impl)


def tree_attention(
    q: torch.Tensor,
    prompt: tuple[torch.Tensor, torch.Tensor],
    steps: KVLevel,
    leaves: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    *,
    scale: float | None = None,
    impl: Impl = "auto",
) -> torch.Tensor:
    """Two shared levels for search trees: the prompt `(keys, values)` shared by all rows,
    a step prefix per subtree (`steps`: its groups and their rows), then each row's leaf
    `(keys, values, lengths)`."""
    rows = q.shape[0]
    levels = [KVLevel.shared(*prompt, rows), steps, KVLevel.per_row(*leaves)]
    return cascade_attention(q, levels, scale=scale, impl=impl)
