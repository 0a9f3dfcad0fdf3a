"""Batch KV layout for decoding with transformers caches: left padding, forking, trimming.

Rows of a batch are left-padded: row r's tokens sit at the right end of the sequence axis,
an attention mask marks them, and explicit position ids make every row compute what it
would alone. These helpers build that layout from per-sequence KV and take it apart again.
They only move data (copies, gathers, slices), which torch does at memory speed, so unlike
the other ops here they have no Triton kernel.

A sequence's KV is a list over layers of `(keys, values)`, each `[1, kv_heads, length,
head_dim]`; a batch cache is anything with `.layers`, each having `.keys` / `.values`
`[rows, kv_heads, width, head_dim]` (transformers' `DynamicCache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]
"""Per layer (keys, values), each `[batch, kv_heads, seq, head_dim]`."""


def stack_left_padded(row_kv: Sequence[KV | None], lengths: Sequence[int], width: int) -> KV:
    """One batch KV per layer, `[rows, kv_heads, width, head_dim]`: row r holds the
    `lengths[r]` positions of `row_kv[r]` right-aligned (left padding is zeros, to be
    masked); a row without KV stays all padding."""
    template = next(kv for kv in row_kv if kv is not None)
    out: KV = []
    for layer, (k0, v0) in enumerate(template):
        keys = k0.new_zeros(len(row_kv), k0.shape[1], width, k0.shape[3])
        values = v0.new_zeros(len(row_kv), v0.shape[1], width, v0.shape[3])
        for r, kv in enumerate(row_kv):
            if kv is not None and lengths[r]:
                keys[r, :, width - lengths[r] :] = kv[layer][0][0]
                values[r, :, width - lengths[r] :] = kv[layer][1][0]
        out.append((keys, values))
    return out


def left_padded_inputs(
    cached: Sequence[int], new: Sequence[Sequence[int]]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`(input_ids [rows, S], attention_mask [rows, C + S], position_ids [rows, S])` for
    rows that continue `cached[r]` positions of held KV with the tokens `new[r]`.

    The layout is `[pad, cached KV, pad, new tokens]` with `C = max(cached)` and `S` the
    longest `new`: the held KV right-aligned in its `C` columns (as `stack_left_padded`
    lays it), the new tokens right-aligned after it, positions counting on from `cached[r]`.
    """
    rows = len(new)
    max_c, max_s = max(cached), max(len(s) for s in new)
    input_ids = torch.zeros(rows, max_s, dtype=torch.long)
    mask = torch.zeros(rows, max_c + max_s, dtype=torch.long)
    positions = torch.zeros(rows, max_s, dtype=torch.long)
    for r, (c, s) in enumerate(zip(cached, new, strict=True)):
        input_ids[r, max_s - len(s) :] = torch.tensor(s)
        mask[r, max_c - c : max_c] = 1
        mask[r, max_c + max_s - len(s) :] = 1
        positions[r, max_s - len(s) :] = torch.arange(c, c + len(s))
    return input_ids, mask, positions


def fork(
    row_kv: Sequence[KV], src: Sequence[int], device: torch.device | str
) -> tuple[KV, torch.Tensor]:
    """Batch KV with one row per entry of `src`, row j a copy of sequence `row_kv[src[j]]`
    (left-padded to the longest), and its attention mask `[len(src), width]`: n samples
    of one prompt share its prefill and copy its KV, never recompute it."""
    lengths = [kv[0][0].shape[2] for kv in row_kv]
    width = max(lengths)
    index = torch.tensor(list(src), device=device)
    forked = [
        (keys.index_select(0, index), values.index_select(0, index))
        for keys, values in stack_left_padded(row_kv, lengths, width)
    ]
    base_mask = torch.zeros(len(row_kv), width, dtype=torch.long)
    for r, n in enumerate(lengths):
        base_mask[r, width - n :] = 1
    return forked, base_mask.to(device).index_select(0, index)


def keep_rows(cache: Any, rows: torch.Tensor, first: int) -> None:
    """Keep only `rows` of a batch cache, and its columns from `first` on (in place)."""
    for layer in cache.layers:
        layer.keys = layer.keys[rows, :, first:]
        layer.values = layer.values[rows, :, first:]


def row_kv(cache: Any, row: int, valid: torch.Tensor) -> KV:
    """A contiguous copy of one row's KV at its non-padding positions (`valid`, a boolean
    mask over the columns), batch size 1."""
    return [
        (layer.keys[row : row + 1, :, valid], layer.values[row : row + 1, :, valid])
        for layer in cache.layers
    ]
