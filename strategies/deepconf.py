"""`deepconf`: confidence-filtered voting that stops weak traces mid-generation.

Fu, Wang, Tian and Zhao, "Deep Think with Confidence" (2025), the online variant:

1. **Token confidence** of a generated token: minus the mean logprob of the `top_logprobs`
   most likely tokens at that position, `C = -(1/k) * sum_j log P(j)` (high where the
   model is sure). The **group confidence** of a position is the mean token confidence
   of the last `window` tokens; a trace's confidence is its *lowest* group confidence
   (the whole trace's mean when it is shorter than a window).
2. **Warm-up**: `warmup` traces run to their end; the stop threshold `s` is the
   confidence below which the `1 - keep` least confident of them fall (`keep=0.9`:
   DeepConf-high, the 10th percentile; `keep=0.1`: DeepConf-low, the 90th).
3. **Online**: further traces are drawn `batch` at a time (streamed); a trace is
   stopped as soon as a full window's group confidence drops below `s` (through
   `ttc.cancel.Abort`'s `watch`: the request is aborted on the server or engine, its
   generated tokens are charged, the rest never spent).
4. **Adaptive stop**: after each trace that completes, the confidence-weighted vote of
   the kept traces (warm-up traces at or above `s`, online traces that were not
   stopped) is checked; once the leading answer holds `consensus` of the weight, or
   `max_samples` traces were drawn, sampling stops and the traces still running are
   aborted. The answer is the confidence-weighted vote.

Traces are handed to the strategy in draw order (`ttc.strategies.sample_stream`), so
the answer depends on the seeds, not on timing. Backends that do not stream (`hf`)
return traces whole: the filter and the vote still apply, only the early stop saves
nothing there.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ttc.cancel import Abort, SequenceProgress
from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.plugins.rewards.self_certainty import lowest_window_mean
from ttc.strategies.common import SampleConfig, solution, votes
from ttc.strategies.sample_stream import SampleStream
from ttc.types import Branch, Problem, Sampling, Solution, token_confidence


@dataclass
class DeepConfConfig(SampleConfig):
    name: str = "deepconf"
    warmup: int = bounded(4, ge=1, help="traces run to the end to set the threshold")
    max_samples: int = bounded(16, ge=1, help="traces at most, warm-up included")
    keep: float = bounded(
        0.9, gt=0.0, le=1.0, help="share of warm-up traces above the threshold (0.9: high)"
    )
    window: int = bounded(64, ge=1, help="tokens per confidence group")
    top_logprobs: int = bounded(5, ge=1, help="alternatives per token in its confidence")
    consensus: float = bounded(
        0.95, gt=0.0, le=1.0, help="stop when the leading answer holds this share of the vote"
    )
    batch: int = bounded(4, ge=1, help="online traces in flight")


def confidences(
    top: Sequence[tuple[tuple[int, float], ...]], logprobs: Sequence[float]
) -> list[float]:
    """Token confidences of a trace (from the top-k alternatives; where a backend gave
    none, from the sampled token's own logprob)."""
    if top:
        return [token_confidence(alt) for alt in top]
    return [-lp for lp in logprobs]


def lowest_group_confidence(conf: Sequence[float], window: int) -> float:
    """The minimum over all full windows of the mean token confidence (the mean of the
    whole trace when it is shorter than one window; +inf for an empty trace)."""
    return lowest_window_mean(conf, window) if conf else math.inf


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-quantile (0..1) of `values`, linear between order statistics."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Stopper:
    """The `watch` of online traces: stop once a full window's mean confidence < s."""

    def __init__(self, threshold: float, window: int) -> None:
        self.threshold = threshold
        self.window = window

    def __call__(self, p: SequenceProgress) -> bool:
        conf = confidences(p.top_logprobs[-self.window :], p.logprobs[-self.window :])
        if len(conf) < self.window:
            return False
        return sum(conf) / len(conf) < self.threshold


class DeepConf(Strategy):
    name = "deepconf"
    uses_reward = False

    def _sampling(self) -> Sampling:
        c = self.config
        return Sampling(
            n=1,
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            min_p=c.min_p,
            max_tokens=c.max_tokens,
            logprobs=True,
            top_logprobs=c.top_logprobs,
        )

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        sampling = self._sampling()
        warm = SampleStream(
            ctx, sampling, window=c.warmup, total=min(c.warmup, c.max_samples), together=c.warmup
        )
        warmup: list[Branch] = []
        try:
            while (drawn := await warm.next()) is not None:
                warmup.append(drawn)
        finally:
            await warm.close()
        rated = [(self._rate_branch(ctx, b), b) for b in warmup]
        threshold = percentile([r for r, _ in rated], 1.0 - c.keep) if rated else 0.0
        kept = [b for r, b in rated if r >= threshold]
        trace: dict[str, Any] = {"threshold": threshold, "warmup": len(warmup)}
        found = self._vote(ctx, kept, trace)
        yield found
        if found.trace.get("share", 0.0) >= c.consensus or len(warmup) >= c.max_samples:
            found.trace["ended_by"] = "consensus" if len(warmup) < c.max_samples else "max_samples"
            yield found
            return
        stream = SampleStream(
            ctx,
            sampling,
            window=c.batch,
            total=c.max_samples - len(warmup),
            abort=Abort(watch=_Stopper(threshold, c.window)),
        )
        ended_by = "max_samples"
        try:
            while (sample := await stream.next()) is not None:
                self._rate_branch(ctx, sample)
                kept.append(sample)  # it ran to its end: no window fell below s
                found = self._vote(ctx, kept, trace)
                yield found
                if found.trace["share"] >= c.consensus:
                    ended_by = "consensus"
                    break
        finally:
            await stream.close()
        found.trace.update(
            ended_by=ended_by,
            stopped=sum(1 for b in stream.cancelled if b.new_tokens),
            stopped_tokens=stream.cancelled_tokens,
            online=stream.launched,
        )
        yield found

    def _rate_branch(self, ctx: SolveContext, b: Branch) -> float:
        """The trace's lowest group confidence (cached in `extra`, the store keeps it)."""
        if "confidence" not in b.extra:
            conf = list(b.token_confidences) or [-lp for lp in b.token_logprobs]
            value = lowest_group_confidence(conf, self.config.window)
            b.extra["confidence"] = round(value, 6) if math.isfinite(value) else 0.0
        return float(b.extra["confidence"])

    @staticmethod
    def _vote(ctx: SolveContext, kept: list[Branch], base: dict[str, Any]) -> Solution:
        weights = [float(b.extra["confidence"]) for b in kept]
        found = votes(ctx, kept, weights)
        trace = {**base, "kept": len(kept)}
        if not found:
            return solution(ctx, kept[0] if kept else None, share=0.0, **trace)
        total = sum(t.weight for t in found) or 1.0
        return solution(
            ctx,
            found[0].best,
            answer=found[0].answer,
            support=found[0].members,
            votes={t.answer: round(t.weight, 4) for t in found},
            share=found[0].weight / total,
            **trace,
        )
