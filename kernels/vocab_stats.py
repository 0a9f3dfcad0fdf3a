"""Log-sum-exp, entropy and self-certainty of next-token distributions, in one pass.

For logits `x` over a vocabulary of `V` tokens, `p = softmax(x)`:

- `lse = log sum_i exp(x_i)`;
- `entropy = -sum_i p_i log p_i = lse - sum_i p_i x_i` (nats);
- `self_certainty = KL(uniform || p) = -log V - mean_i log p_i = lse - mean_i x_i - log V`
  (Kang et al., 2025: how far the distribution is from uniform; 0 for a uniform one,
  +inf when a token has probability 0).

These feed confidence rewards, entropy-adaptive decoding and DeepConf-style confidence.
The kernel splits each row's vocabulary over several programs; each keeps the online
triple (max m, sum exp(x - m), sum exp(x - m) x) plus sum x, and the partial triples
merge like log-sum-exps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._dispatch import Impl, use_triton


class VocabStats(NamedTuple):
    """Per row `[rows]` fp32."""

    lse: torch.Tensor
    entropy: torch.Tensor
    self_certainty: torch.Tensor


def reference(logits: torch.Tensor) -> VocabStats:
    """The specification, in fp32, over the last dimension of `logits` `[rows, vocab]`."""
    x = logits.float()
    lse = torch.logsumexp(x, -1)
    logp = x - lse[:, None]
    entropy = torch.special.entr(logp.exp()).sum(-1)
    certainty = -logp.mean(-1) - math.log(x.shape[-1])
    return VocabStats(lse, entropy, certainty)


@triton.jit
def _stats_kernel(
    logits_ptr,
    stride_row,
    vocab,
    chunk,
    out_ptr,
    stride_out_row,
    BLOCK: tl.constexpr,
):
    # Program (row, c) reduces positions c*chunk .. (c+1)*chunk of the row into
    # out[row, c, :] = (max, sum exp(x - max), sum exp(x - max) * x, sum x).
    row = tl.program_id(0)
    c = tl.program_id(1)
    base = logits_ptr + row.to(tl.int64) * stride_row
    lo = c * chunk
    hi = tl.minimum(lo + chunk, vocab)
    offs = tl.arange(0, BLOCK)
    top = float("-inf")
    total = 0.0
    moment = 0.0
    plain = 0.0
    for start in range(lo, hi, BLOCK):
        idx = start + offs
        ok = idx < hi
        x = tl.load(base + idx, mask=ok, other=float("-inf")).to(tl.float32)
        new_top = tl.maximum(top, tl.max(x, 0))
        safe = tl.where(new_top == float("-inf"), 0.0, new_top)
        scale = tl.exp(top - safe)
        e = tl.exp(x - safe)
        total = total * scale + tl.sum(e, 0)
        # a zero-probability token (x = -inf) adds nothing to sum p x
        finite = tl.where(e > 0, x, 0.0)
        moment = moment * scale + tl.sum(e * finite, 0)
        plain += tl.sum(tl.where(ok, x, 0.0), 0)
        top = new_top
    out = out_ptr + row.to(tl.int64) * stride_out_row + c * 4
    tl.store(out, top)
    tl.store(out + 1, total)
    tl.store(out + 2, moment)
    tl.store(out + 3, plain)


def triton_stats(logits: torch.Tensor) -> VocabStats:
    """The kernel path: per-chunk partial sums, merged in torch."""
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    block = min(4096, triton.next_power_of_2(vocab))
    # about 8 blocks per program, and at least ~256 programs over the batch
    chunks = max(1, min(math.ceil(vocab / (8 * block)), math.ceil(256 / max(rows, 1))))
    chunk = math.ceil(vocab / chunks / block) * block
    chunks = math.ceil(vocab / chunk)
    part = torch.empty(rows, chunks, 4, dtype=torch.float32, device=logits.device)
    if rows:
        _stats_kernel[(rows, chunks)](
            logits, logits.stride(0), vocab, chunk, part, part.stride(0), BLOCK=block
        )
    top, total, moment, plain = part.unbind(-1)
    m = top.amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    w = torch.exp(top - m)
    s = (total * w).sum(1)
    lse = m.squeeze(1) + torch.log(s)
    mean_x = (moment * w).sum(1) / s
    return VocabStats(lse, lse - mean_x, lse - plain.sum(1) / vocab - math.log(vocab))


def vocab_stats(logits: torch.Tensor, *, impl: Impl = "auto") -> VocabStats:
    """Log-sum-exp, entropy and self-certainty of each row of `logits` `[rows, vocab]`."""
    if logits.dim() != 2:
        raise ValueError(f"vocab_stats needs logits [rows, vocab], got {tuple(logits.shape)}")
    if use_triton("vocab_stats", impl, _stats_kernel, logits):
        return triton_stats(logits)
    return reference(logits)
