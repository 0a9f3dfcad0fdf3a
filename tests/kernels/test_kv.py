"""Batch KV layout helpers: left padding, forking, trimming, row extraction."""

from __future__ import annotations

import torch


def _seq(length: int, layers: int = 2, heads: int = 2, dim: int = 3, base: float = 0.0):
    """A sequence's KV whose entries name their position: value = base + position + 1."""
    pos = torch.arange(length, dtype=torch.float32) + 1 + base
    keys = pos[None, None, :, None].expand(1, heads, length, dim).clone()
    return [(keys + 100 * layer, -(keys + 100 * layer)) for layer in range(layers)]


class _Layer:
    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values


class _Cache:
    """The part of transformers' DynamicCache the helpers use (`.layers[i].keys/values`)."""

    def __init__(self, kv) -> None:
        self.layers = [_Layer(k, v) for k, v in kv]


def test_stack_left_padded_right_aligns_each_row_and_zero_pads() -> None:
    from ttc.kernels.kv import stack_left_padded

    rows = [_seq(3), None, _seq(1, base=10)]
    out = stack_left_padded(rows, [3, 0, 1], 5)
    assert len(out) == 2
    keys, values = out[1]
    assert keys.shape == (3, 2, 5, 3)
    assert keys[0, 0, :, 0].tolist() == [0, 0, 101, 102, 103]
    assert keys[1].abs().sum() == 0  # no KV: all padding
    assert keys[2, 1, :, 2].tolist() == [0, 0, 0, 0, 111]
    assert values[0, 0, :, 0].tolist() == [0, 0, -101, -102, -103]


def test_left_padded_inputs_layout() -> None:
    from ttc.kernels.kv import left_padded_inputs

    ids, mask, pos = left_padded_inputs([2, 0, 3], [[7, 8], [5, 6, 4], [9]])
    assert ids.tolist() == [[0, 7, 8], [5, 6, 4], [0, 0, 9]]
    # [pad, cached (3 columns), pad, new (3 columns)]
    assert mask.tolist() == [[0, 1, 1, 0, 1, 1], [0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 1]]
    assert pos.tolist() == [[0, 2, 3], [0, 1, 2], [0, 0, 3]]


def test_fork_copies_each_source_row_and_masks_its_padding() -> None:
    from ttc.kernels.kv import fork

    prompts = [_seq(2), _seq(4, base=20)]
    kv, mask = fork(prompts, [1, 0, 0, 1, 1], "cpu")
    keys = kv[0][0]
    assert keys.shape == (5, 2, 4, 3)
    assert keys[0, 0, :, 0].tolist() == [21, 22, 23, 24]
    assert keys[1, 0, :, 0].tolist() == [0, 0, 1, 2]
    assert torch.equal(keys[1], keys[2]) and torch.equal(keys[0], keys[4])
    assert mask.tolist() == [[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]
    keys[1].zero_()
    assert keys[2].abs().sum() > 0  # forked rows are copies, not views of one another


def test_keep_rows_and_row_kv_round_trip() -> None:
    from ttc.kernels.kv import fork, keep_rows, row_kv

    kv, mask = fork([_seq(2), _seq(4, base=20)], [0, 1, 0], "cpu")
    cache = _Cache(kv)
    keep_rows(cache, torch.tensor([0, 2]), 2)  # both rows are padding in columns 0..1
    assert cache.layers[0].keys.shape == (2, 2, 2, 3)
    got = row_kv(cache, 1, mask[2, 2:].bool())
    want = _seq(2)
    assert all(
        torch.equal(a, b) and torch.equal(c, d) for (a, c), (b, d) in zip(got, want, strict=True)
    )
    full = _Cache(kv)
    again = row_kv(full, 1, mask[1].bool())
    assert torch.equal(again[1][0], _seq(4, base=20)[1][0])
