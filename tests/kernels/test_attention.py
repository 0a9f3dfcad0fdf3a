"""Shared-prefix (cascade) attention: the Triton kernel against the torch reference, and
the reference against ordinary attention over the duplicated prefix."""

from __future__ import annotations

import math

import pytest
import torch

from _device import CUDA, DEVICE

device = DEVICE

TOL = {torch.float32: 2e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def _kv(g: int, kv_heads: int, length: int, dim: int, dtype: torch.dtype, device: str):
    k = torch.randn(g, kv_heads, length, dim, dtype=dtype, device=device)
    return k, torch.randn_like(k)


def _duplicated(q, pk, pv, sk, sv, lengths):
    """Ordinary attention: every row gets its own copy of the prefix, then its suffix."""
    rows, q_heads, _ = q.shape
    gqa = q_heads // pk.shape[0]
    k = torch.cat([pk.expand(rows, *pk.shape), sk], 2).float().repeat_interleave(gqa, 1)
    v = torch.cat([pv.expand(rows, *pv.shape), sv], 2).float().repeat_interleave(gqa, 1)
    pos = torch.arange(sk.shape[2], device=q.device)
    ok = torch.cat(
        [torch.ones(rows, pk.shape[1], dtype=torch.bool, device=q.device), pos < lengths[:, None]],
        1,
    )
    out = torch.nn.functional.scaled_dot_product_attention(
        q.float().unsqueeze(2), k, v, attn_mask=ok[:, None, None, :]
    )
    return out.squeeze(2)


# rows, q_heads, kv_heads, head_dim, prefix, suffix
SHAPES = [
    (1, 4, 4, 64, 1, 1),
    (7, 8, 8, 64, 100, 17),
    (5, 8, 2, 48, 33, 9),
    (16, 8, 1, 64, 130, 65),
    (3, 28, 4, 64, 70, 5),
]
GQA_SHAPES = [(6, 8, 8, 64, 77, 13), (6, 16, 4, 64, 77, 13), (6, 32, 4, 64, 77, 13)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shape", SHAPES + GQA_SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shared_prefix_kernel_matches_reference(shape, dtype) -> None:
    from ttc.kernels.attention import shared_prefix_attention

    rows, q_heads, kv_heads, dim, prefix, suffix = shape
    gen = torch.Generator().manual_seed(rows * 1000 + prefix)
    q = torch.randn(rows, q_heads, dim, generator=gen).to(dtype=dtype, device=device)
    pk, pv = (t[0] for t in _kv(1, kv_heads, prefix, dim, dtype, device))
    sk, sv = _kv(rows, kv_heads, suffix, dim, dtype, device)
    lengths = torch.randint(1, suffix + 1, (rows,), generator=gen).to(device)
    args = (q, pk, pv, sk, sv, lengths)
    got = shared_prefix_attention(*args, impl="triton")
    want = shared_prefix_attention(*args, impl="reference")
    assert got.dtype == dtype and got.shape == q.shape
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_reference_is_ordinary_attention_over_the_duplicated_prefix() -> None:
    from ttc.kernels.attention import shared_prefix_attention

    torch.manual_seed(0)
    q = torch.randn(5, 8, 32)
    pk, pv = torch.randn(2, 40, 32), torch.randn(2, 40, 32)
    sk, sv = torch.randn(5, 2, 11, 32), torch.randn(5, 2, 11, 32)
    lengths = torch.tensor([1, 11, 4, 7, 2])
    got = shared_prefix_attention(q, pk, pv, sk, sv, lengths, impl="reference")
    torch.testing.assert_close(got, _duplicated(q, pk, pv, sk, sv, lengths), atol=1e-5, rtol=1e-5)
    # padding past a row's suffix length is ignored
    sk2 = sk.clone()
    sk2[0, :, 1:] = 1e4
    again = shared_prefix_attention(q, pk, pv, sk2, sv, lengths, impl="reference")
    torch.testing.assert_close(again, got)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_two_level_tree_matches_reference_and_flat_attention(dtype) -> None:
    from ttc.kernels.attention import KVLevel, cascade_attention, tree_attention

    torch.manual_seed(1)
    kv_heads, q_heads, dim = 2, 8, 64
    sizes = [2, 1, 4]  # rows per subtree
    rows = sum(sizes)
    q = torch.randn(rows, q_heads, dim).to(dtype=dtype, device=device)
    pk, pv = (t[0] for t in _kv(1, kv_heads, 50, dim, dtype, device))
    step_k, step_v = _kv(len(sizes), kv_heads, 21, dim, dtype, device)
    offsets = torch.tensor([0, 2, 3, 7], device=device)
    steps = KVLevel(step_k, step_v, torch.tensor([21, 3, 12], device=device), offsets)
    leaf_k, leaf_v = _kv(rows, kv_heads, 9, dim, dtype, device)
    leaf_len = torch.tensor([1, 9, 5, 2, 3, 9, 4], device=device)
    got = tree_attention(q, (pk, pv), steps, (leaf_k, leaf_v, leaf_len), impl="triton")
    want = tree_attention(q, (pk, pv), steps, (leaf_k, leaf_v, leaf_len), impl="reference")
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])
    # the same attention with each row's whole KV as one per-row level
    group = torch.repeat_interleave(
        torch.arange(3, device=device), torch.tensor(sizes, device=device)
    )
    flat_k, flat_v, flat_len = [], [], []
    for r in range(rows):
        g, n = int(group[r]), int(steps.lengths[group[r]])
        flat_k.append(torch.cat([pk, step_k[g, :, :n], leaf_k[r, :, : leaf_len[r]]], 1))
        flat_v.append(torch.cat([pv, step_v[g, :, :n], leaf_v[r, :, : leaf_len[r]]], 1))
        flat_len.append(flat_k[-1].shape[1])
    width = max(flat_len)
    pad = [torch.nn.functional.pad(k, (0, 0, 0, width - k.shape[1])) for k in flat_k]
    padv = [torch.nn.functional.pad(v, (0, 0, 0, width - v.shape[1])) for v in flat_v]
    flat = KVLevel.per_row(
        torch.stack(pad), torch.stack(padv), torch.tensor(flat_len, device=device)
    )
    plain = cascade_attention(q, [flat], impl="reference")
    torch.testing.assert_close(got.float(), plain.float(), atol=TOL[dtype], rtol=TOL[dtype])


def test_long_prefix_splits_merge_by_log_sum_exp() -> None:
    """A prefix long enough to be split over several programs."""
    from ttc.kernels.attention import shared_prefix_attention

    torch.manual_seed(2)
    q = torch.randn(2, 4, 64, device=device)
    pk, pv = torch.randn(1, 1000, 64, device=device), torch.randn(1, 1000, 64, device=device)
    sk, sv = torch.randn(2, 1, 3, 64, device=device), torch.randn(2, 1, 3, 64, device=device)
    lengths = torch.tensor([3, 1], device=device)
    got = shared_prefix_attention(q, pk, pv, sk, sv, lengths, impl="triton")
    want = shared_prefix_attention(q, pk, pv, sk, sv, lengths, impl="reference")
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


def test_bad_shapes_say_what_is_expected() -> None:
    from ttc.kernels.attention import shared_prefix_attention

    q = torch.randn(2, 6, 16)
    pk = torch.randn(4, 5, 16)
    sk = torch.randn(2, 4, 3, 16)
    with pytest.raises(ValueError, match="not a multiple of 4 KV heads"):
        shared_prefix_attention(q, pk, pk, sk, sk, torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"queries must be \[rows, q_heads, head_dim\]"):
        shared_prefix_attention(q[0], pk, pk, sk, sk, torch.tensor([1, 2]))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("rows,prefix", [(16, 1024), (64, 4096), (256, 4096)])
def test_benchmark_sizes_on_gpu(rows: int, prefix: int) -> None:
    from ttc.kernels.attention import shared_prefix_attention

    torch.manual_seed(3)
    kv_heads, q_heads, dim, suffix = 8, 32, 128, 512
    dtype = torch.bfloat16
    q = torch.randn(rows, q_heads, dim, dtype=dtype, device="cuda")
    pk = torch.randn(kv_heads, prefix, dim, dtype=dtype, device="cuda")
    pv = torch.randn_like(pk)
    sk = torch.randn(rows, kv_heads, suffix, dim, dtype=dtype, device="cuda")
    sv = torch.randn_like(sk)
    lengths = torch.randint(128, suffix + 1, (rows,), device="cuda")
    got = shared_prefix_attention(q, pk, pv, sk, sv, lengths, impl="triton")
    want = _duplicated(q, pk, pv, sk, sv, lengths)
    torch.testing.assert_close(got.float(), want, atol=2e-2, rtol=2e-2)
    assert math.isfinite(float(got.float().abs().max()))
