"""Sampling the next token from logits: temperature, min-p, top-k, top-p; token + logprob.

Each row carries its own parameters (one batch mixes greedy and sampled rows) and one
uniform number `u` in [0, 1) that decides its token: the caller draws it from the row's
own generator, so a seeded sample draws the same numbers, hence the same text, in any
batch. Greedy rows (temperature 0) take the arg-max and draw nothing.

Processing order (the specification, `reference`): temperature; min-p (drop tokens whose
probability is below `min_p` times the top token's); top-k; top-p over the mass that
min-p and top-k kept (drop a token once the mass of the tokens ranked before it reaches
`top_p` of it; the top token always stays); then inverse-CDF sampling with `u`. The
logprob is of the unmodified model distribution (`log_softmax(logits)`).

The reference sorts the vocabulary when top-k or top-p is set and walks the CDF in
descending probability; the Triton kernel never sorts: min-p, top-k and top-p are all
"keep the tokens whose logit is at least a threshold", and the kernel finds the
thresholds by a 17-way search over logit values (each round one pass over the row that
counts tokens, or sums their mass, above 16 probe values), then walks the CDF of the kept
tokens in vocabulary order. Both draw from the same distribution; the same `u` can map
to different tokens when top-k/top-p is on (different CDF orders), and to the same token
up to float rounding of the CDF otherwise. Tokens tied with the k-th largest logit are
all kept by the kernel (a sort keeps an arbitrary k of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import triton
import triton.language as tl

from ._dispatch import Impl, use_triton


class _RowSampling(Protocol):
    @property
    def temperature(self) -> float: ...
    @property
    def top_k(self) -> int: ...
    @property
    def top_p(self) -> float: ...
    @property
    def min_p(self) -> float: ...
    @property
    def logprobs(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class SamplingParams:
    """Per-row sampling parameters as tensors `[rows]`."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    min_p: torch.Tensor
    want_logprobs: bool
    """Whether to compute logprobs at all (any row asked for them)."""
    top_logprobs: int = 0
    """The most top-k alternatives (`top_logprobs`) any row with logprobs asked for."""

    @classmethod
    def build(cls, rows: Sequence[_RowSampling], device: torch.device | str) -> SamplingParams:
        """From per-row sampling settings (anything with temperature, top_k, top_p,
        min_p and logprobs, e.g. `ttc.types.Sampling`)."""

        def col(values: list[float], dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        return cls(
            temperature=col([r.temperature for r in rows], torch.float32),
            top_k=col([r.top_k for r in rows], torch.long),
            top_p=col([r.top_p for r in rows], torch.float32),
            min_p=col([r.min_p for r in rows], torch.float32),
            want_logprobs=any(r.logprobs for r in rows),
            top_logprobs=max(
                (getattr(r, "top_logprobs", 0) for r in rows if r.logprobs), default=0
            ),
        )

    def select(self, idx: torch.Tensor) -> SamplingParams:
        """The parameters of rows `idx`."""
        return SamplingParams(
            self.temperature[idx], self.top_k[idx], self.top_p[idx], self.min_p[idx],
            self.want_logprobs, self.top_logprobs,
        )  # fmt: skip


def draw_uniforms(
    params: SamplingParams, generators: Sequence[torch.Generator], device: torch.device | str
) -> torch.Tensor:
    """One uniform per sampled row (temperature > 0) from that row's generator, 0 for
    greedy rows (whose generators are not advanced): `[rows]` float32 on `device`."""
    sampled = (params.temperature > 0).tolist()
    values = [
        float(torch.rand((), generator=g)) if s else 0.0
        for g, s in zip(generators, sampled, strict=True)
    ]
    return torch.tensor(values, dtype=torch.float32, device=device)


# -- reference ---------------------------------------------------------------------------


def _filter(
    logits: torch.Tensor, params: SamplingParams
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Kept probabilities of the rows (unnormalised, in the order of `order`, the
    descending sort, or vocabulary order when `order` is None)."""
    vocab = logits.shape[-1]
    probs = torch.softmax(logits / params.temperature[:, None], dim=-1)
    min_p = params.min_p[:, None]
    if bool((min_p > 0).any()):
        probs = probs.masked_fill(probs < min_p * probs.amax(-1, keepdim=True), 0.0)
    top_k, top_p = params.top_k[:, None], params.top_p[:, None]
    order = None
    if bool((top_k > 0).any() or (top_p < 1).any()):
        probs, order = probs.sort(-1, descending=True)
        ranks = torch.arange(vocab, device=probs.device)
        probs = probs.masked_fill((top_k > 0) & (ranks >= top_k), 0.0)
        cum = probs.cumsum(-1)
        # Drop a token once the mass before it already reaches top_p (the top token
        # always stays).
        probs = probs.masked_fill(cum - probs >= top_p * cum[:, -1:], 0.0)
    return probs, order


def _pick(logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling of sampled rows (temperature > 0), one uniform each."""
    vocab = logits.shape[-1]
    probs, order = _filter(logits, params)
    cum = probs.cumsum(-1)
    u = uniforms.to(device=probs.device, dtype=torch.float32)
    pick = torch.searchsorted(cum, (u * cum[:, -1]).unsqueeze(1), right=True)
    pick = pick.clamp_(max=vocab - 1)
    if order is not None:
        pick = order.gather(1, pick)
    return pick.squeeze(1)


def reference(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token per row (`[rows]` int64) and its model logprob (`[rows]` fp32) when
    `params.want_logprobs`; `logits` `[rows, vocab]` fp32, `uniforms` `[rows]`.

    Rows with top-k or top-p walk the CDF in descending probability, the others in
    vocabulary order, each group on its own: a row's token never depends on the settings
    of the rows batched with it.
    """
    tokens = logits.argmax(-1)
    sampled = params.temperature > 0
    needs_sort = (params.top_k > 0) | (params.top_p < 1)
    for group in (sampled & ~needs_sort, sampled & needs_sort):
        rows = group.nonzero().squeeze(1)
        if rows.numel():
            sub = params.select(rows)
            tokens[rows] = _pick(logits[rows], sub, uniforms[rows])
    logprobs = None
    if params.want_logprobs:
        lsm = torch.log_softmax(logits, dim=-1)
        logprobs = lsm.gather(1, tokens.unsqueeze(1)).squeeze(1)
    return tokens, logprobs


def top_logprobs(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The `k` most likely tokens of each row's model distribution: `(logprobs, ids)`,
    each `[rows, k]`, in descending order. torch only: `topk` over `log_softmax` is
    already a single fused pass on either device."""
    lsm = torch.log_softmax(logits, dim=-1)
    values, ids = lsm.topk(min(k, lsm.shape[-1]), dim=-1)
    return values, ids


def distribution(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """The reference's sampling distribution, `[rows, vocab]` probabilities in
    vocabulary order (one-hot at the arg-max for greedy rows): what both paths draw from."""
    out = torch.zeros_like(logits, dtype=torch.float32)
    out.scatter_(1, logits.argmax(-1, keepdim=True), 1.0)
    sampled = (params.temperature > 0).nonzero().squeeze(1)
    if sampled.numel():
        probs, order = _filter(logits[sampled], params.select(sampled))
        if order is not None:
            probs = torch.zeros_like(probs).scatter_(1, order, probs)
        out[sampled] = (probs / probs.sum(-1, keepdim=True)).float()
    return out


# -- kernel ------------------------------------------------------------------------------

_LN_TINY = -87.0
"""exp(x) underflows fp32 below about -87.3: tokens further below the top are never drawn."""


@triton.jit
def _weights(logit, top, inv_t):
    # Unnormalised probability of each token at the row's temperature (1 at the top).
    return tl.exp((logit - top) * inv_t)


@triton.jit
def _search(
    base,
    vocab,
    top,
    inv_t,
    lo,
    hi,
    goal,
    BY_MASS: tl.constexpr,
    BLOCK: tl.constexpr,
    PROBES: tl.constexpr,
    ROUNDS: tl.constexpr,
):
    # The largest threshold t in [lo, hi) with "tokens with logit >= t" reaching `goal`
    # (their count, or their mass when BY_MASS), assuming it holds at lo and fails at hi.
    # Each round splits [lo, hi) into PROBES + 1 parts and keeps the part where the
    # predicate turns false: one pass over the row per round.
    offs = tl.arange(0, BLOCK)
    frac = (tl.arange(0, PROBES) + 1).to(tl.float32) / (PROBES + 1)
    for _ in range(ROUNDS):
        t = lo + (hi - lo) * frac  # [PROBES]
        reach = tl.zeros([PROBES], tl.float32)
        for start in range(0, vocab, BLOCK):
            idx = start + offs
            logit = tl.load(base + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
            above = logit[None, :] >= t[:, None]  # [PROBES, BLOCK]
            if BY_MASS:
                w = _weights(logit, top, inv_t)
                reach += tl.sum(tl.where(above, w[None, :], 0.0), 1)
            else:
                reach += tl.sum(above.to(tl.float32), 1)
        ok = reach >= goal
        lo = tl.maximum(lo, tl.max(tl.where(ok, t, lo), 0))
        hi = tl.minimum(hi, tl.min(tl.where(ok, hi, t), 0))
    return lo


@triton.jit
def _sample_kernel(
    logits_ptr,
    stride_row,
    vocab,
    temp_ptr,
    top_k_ptr,
    top_p_ptr,
    min_p_ptr,
    u_ptr,
    tok_ptr,
    lp_ptr,
    BLOCK: tl.constexpr,
    PROBES: tl.constexpr,
    ROUNDS: tl.constexpr,
    LN_TINY: tl.constexpr,
):
    # One program per row.
    row = tl.program_id(0)
    base = logits_ptr + row.to(tl.int64) * stride_row
    temp = tl.load(temp_ptr + row)
    top_k = tl.load(top_k_ptr + row)
    top_p = tl.load(top_p_ptr + row)
    min_p = tl.load(min_p_ptr + row)
    inv_t = 1.0 / tl.where(temp > 0, temp, 1.0)
    offs = tl.arange(0, BLOCK)

    # Pass 1: the top logit (first index of it: the arg-max) and the sum of exp(logit -
    # top) at temperature 1 (the log-softmax normaliser for logprobs).
    top = float("-inf")
    total = 0.0
    best = 0
    for start in range(0, vocab, BLOCK):
        idx = start + offs
        logit = tl.load(base + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
        block_top = tl.max(logit, 0)
        block_arg = tl.argmax(logit, 0)
        best = tl.where(block_top > top, start + block_arg, best)
        new_top = tl.maximum(top, block_top)
        safe = tl.where(new_top == float("-inf"), 0.0, new_top)
        total = total * tl.exp(top - safe) + tl.sum(tl.exp(logit - safe), 0)
        top = new_top
    token = tl.cast(best, tl.int64)

    if temp > 0:
        # Every filter keeps the tokens with logit >= tau; tokens more than -LN_TINY
        # (scaled) below the top have zero weight and never count.
        floor = top + LN_TINY * temp
        tau = floor
        if min_p > 0:  # p >= min_p * p_top  <=>  logit >= top + T log(min_p)
            tau = tl.maximum(tau, top + temp * tl.log(min_p))
        if (top_k > 0) & (top_k < vocab):
            kth = _search(
                base, vocab, top, inv_t, floor, top + 1.0, top_k.to(tl.float32),
                BY_MASS=False, BLOCK=BLOCK, PROBES=PROBES, ROUNDS=ROUNDS,
            )  # fmt: skip
            tau = tl.maximum(tau, kth)
        if top_p < 1:
            kept = 0.0
            for start in range(0, vocab, BLOCK):
                idx = start + offs
                logit = tl.load(base + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
                kept += tl.sum(tl.where(logit >= tau, _weights(logit, top, inv_t), 0.0), 0)
            cut = _search(
                base, vocab, top, inv_t, tau, top + 1.0, top_p * kept,
                BY_MASS=True, BLOCK=BLOCK, PROBES=PROBES, ROUNDS=ROUNDS,
            )  # fmt: skip
            tau = tl.maximum(tau, cut)
        tau = tl.minimum(tau, top)  # the top token always stays
        # The kept mass, then the inverse CDF in vocabulary order: the token is the
        # number of positions whose cumulative kept mass is <= u * mass (the CDF never
        # decreases), as searchsorted(right=True) counts them.
        mass = 0.0
        last = 0
        for start in range(0, vocab, BLOCK):
            idx = start + offs
            logit = tl.load(base + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
            w = tl.where(logit >= tau, _weights(logit, top, inv_t), 0.0)
            mass += tl.sum(w, 0)
            last = tl.maximum(last, tl.max(tl.where(w > 0, idx, 0), 0))
        target = tl.load(u_ptr + row) * mass
        below = 0
        run = 0.0
        for start in range(0, vocab, BLOCK):
            idx = start + offs
            logit = tl.load(base + idx, mask=idx < vocab, other=float("-inf")).to(tl.float32)
            w = tl.where(logit >= tau, _weights(logit, top, inv_t), 0.0)
            cdf = run + tl.cumsum(w, 0)
            below += tl.sum(((cdf <= target) & (idx < vocab)).to(tl.int32), 0)
            run += tl.sum(w, 0)
        # Rounding can leave u * mass above the walked total: stay on the last kept token.
        token = tl.minimum(below, last).to(tl.int64)
    tl.store(tok_ptr + row, token)
    picked = tl.load(base + token).to(tl.float32)
    tl.store(lp_ptr + row, picked - top - tl.log(total))


def triton_sample(
    logits: torch.Tensor, params: SamplingParams, uniforms: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The kernel path (see the module docstring)."""
    rows, vocab = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    tokens = torch.empty(rows, dtype=torch.int64, device=logits.device)
    logprobs = torch.empty(rows, dtype=torch.float32, device=logits.device)
    if rows:
        _sample_kernel[(rows,)](
            logits,
            logits.stride(0),
            vocab,
            params.temperature.to(device=logits.device, dtype=torch.float32),
            params.top_k.to(device=logits.device, dtype=torch.int32),
            params.top_p.to(device=logits.device, dtype=torch.float32),
            params.min_p.to(device=logits.device, dtype=torch.float32),
            uniforms.to(device=logits.device, dtype=torch.float32),
            tokens,
            logprobs,
            BLOCK=min(4096, triton.next_power_of_2(vocab)),
            PROBES=16,
            ROUNDS=8,
            LN_TINY=_LN_TINY,
        )
    return tokens, (logprobs if params.want_logprobs else None)


# -- dispatcher --------------------------------------------------------------------------


def sample(
    logits: torch.Tensor,
    params: SamplingParams,
    uniforms: torch.Tensor,
    *,
    impl: Impl = "auto",
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Next token per row of `logits` `[rows, vocab]`, and its logprob when
    `params.want_logprobs`. `uniforms` `[rows]` in [0, 1): see `draw_uniforms`."""
    if logits.dim() != 2 or uniforms.shape != (logits.shape[0],):
        raise ValueError(
            f"sample needs logits [rows, vocab] and uniforms [rows], got "
            f"{tuple(logits.shape)} and {tuple(uniforms.shape)}"
        )
    if use_triton("sample", impl, _sample_kernel, logits):
        return triton_sample(logits, params, uniforms)
    return reference(logits, params, uniforms)
