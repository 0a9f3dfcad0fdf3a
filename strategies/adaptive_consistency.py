"""`adaptive_consistency`: self-consistency that stops sampling once the vote is settled.

Aggarwal et al., "Let's Sample Step by Step: Adaptive-Consistency for Efficient
Reasoning and Coding with LLMs" (2023). Samples are drawn in rounds of `batch`; after
each round a stopping criterion computes the posterior probability that the leading
answer is the model's most likely answer, and sampling stops once it reaches
`threshold` (or at `max_samples`, or when the budget refuses):

- `beta`: the leader's share against the runner-up's, p ~ Beta(v1 + 1, v2 + 1); the
  criterion is P(p > 1/2) (the paper's cheap, well-calibrated choice).
- `dirichlet`: answer probabilities ~ Dirichlet(votes + alpha) over the answers seen plus
  one pseudo-answer for those not seen yet; P(leader is the argmax) by Monte Carlo.
- `majority`: the leader's share of the votes so far (no posterior; a baseline).

Easy problems (one dominant answer) stop after a round or two; ambiguous ones use the
budget. The answer is the plurality of all samples drawn.

With `cancel` (the default) the first `min_samples` are one request (none is judged
before all are in), then samples are drawn one request each with `batch` of them in
flight (`ttc.strategies.sample_stream`), the criterion is checked as each arrives (in
draw order: the answer depends on the seeds, not on timing), and once it is met the
samples still running are aborted: their generated tokens are charged, the rest never
spent (`ttc.cancel`). `cancel=false` draws rounds of `batch` samples, one request each.
"""

from __future__ import annotations

import math
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.best_of_n import sampling_for
from ttc.strategies.common import SampleConfig, finish_all, solution, votes
from ttc.strategies.sample_stream import SampleStream
from ttc.types import Branch, Problem, Solution


@dataclass
class AdaptiveConsistencyConfig(SampleConfig):
    name: str = "adaptive_consistency"
    criterion: str = bounded("beta", choices=["beta", "dirichlet", "majority"])
    threshold: float = bounded(0.95, gt=0.0, lt=1.0, help="stop when P(leader wins) >= this")
    batch: int = bounded(2, ge=1, help="samples per round (with cancel: in flight)")
    min_samples: int = bounded(2, ge=1, help="samples before the criterion is checked")
    max_samples: int = bounded(16, ge=1, help="samples at most")
    alpha: float = bounded(1.0, gt=0.0, help="Dirichlet prior concentration per answer")
    mc_draws: int = bounded(2000, ge=10, help="Monte Carlo draws of the Dirichlet criterion")
    cancel: bool = True
    """Draw the first `min_samples` as one request, then keep `batch` samples in flight,
    check after each, abort the running ones once the criterion is met (false: rounds of
    `batch`, each one request that runs to its end)."""


def beta_exceeds_half(a: int, b: int) -> float:
    """P(p > 1/2) for p ~ Beta(a + 1, b + 1), exactly.

    For integer parameters the Beta CDF at 1/2 is a binomial tail:
    P(p <= 1/2) = P(Binomial(a + b + 1, 1/2) >= a + 1).
    """
    n = a + b + 1
    tail = sum(math.comb(n, j) for j in range(a + 1, n + 1))
    return 1.0 - tail / 2.0**n


def dirichlet_leader_probability(
    counts: list[int], *, alpha: float, draws: int, rng: random.Random
) -> float:
    """P(the first count's answer has the largest probability) under
    Dirichlet(counts + alpha), with one extra pseudo-answer for answers not yet seen."""
    import numpy as np  # vectorised Gamma draws: thousands per round in microseconds

    params = np.array([c + alpha for c in counts] + [alpha], dtype=float)
    gen = np.random.default_rng(rng.getrandbits(64))
    # Gamma draws normalised are a Dirichlet draw; the argmax needs no normalising.
    g = gen.gamma(params, size=(draws, len(params)))
    return float(np.mean(g[:, 0] >= g.max(axis=1)))


def confidence(
    counts: list[int], criterion: str, *, alpha: float, draws: int, rng: random.Random
) -> float:
    """The stopping statistic for vote counts sorted high to low."""
    if not counts:
        return 0.0
    if criterion == "majority":
        return counts[0] / sum(counts)
    if criterion == "beta":
        return beta_exceeds_half(counts[0], counts[1] if len(counts) > 1 else 0)
    return dirichlet_leader_probability(counts, alpha=alpha, draws=draws, rng=rng)


class AdaptiveConsistency(Strategy):
    name = "adaptive_consistency"
    uses_reward = False

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        # The Monte Carlo criterion gets its own stream so it does not shift the seeds
        # the context draws for generation.
        mc_rng = random.Random(ctx.rng.getrandbits(32))
        # Finished samples already drawn from the root (an allocator's probe) count.
        samples: list[Branch] = [b for b in ctx.leaves() if b.parent_id == ctx.root.id]
        samples = samples[: c.max_samples]
        history: list[float] = []
        if c.cancel:
            async for found in self._streamed(ctx, samples, history, mc_rng):
                yield found
            return
        stop = "max_samples"
        while True:
            if self._confident(ctx, samples, history, mc_rng):
                stop = "confident"
                break
            if len(samples) >= c.max_samples:
                break
            want = min(c.batch, c.max_samples - len(samples))
            if len(samples) < c.min_samples:
                want = max(want, min(c.min_samples, c.max_samples) - len(samples))
            drawn = await ctx.generate([ctx.root], sampling_for(ctx, c, want))
            finish_all(drawn)
            samples += drawn
            yield self._vote(ctx, samples, stop=None, history=history)
        yield self._vote(ctx, samples, stop=stop, history=history)

    def _confident(
        self, ctx: SolveContext, samples: list[Branch], history: list[float], rng: random.Random
    ) -> bool:
        """Whether the vote is decided (once `min_samples` are in); records the
        confidence in `history`."""
        c = self.config
        if len(samples) < c.min_samples:
            return False
        counts = [t.count for t in votes(ctx, samples)]
        p = confidence(counts, c.criterion, alpha=c.alpha, draws=c.mc_draws, rng=rng)
        history.append(p)
        return p >= c.threshold

    async def _streamed(
        self,
        ctx: SolveContext,
        samples: list[Branch],
        history: list[float],
        mc_rng: random.Random,
    ) -> AsyncIterator[Solution]:
        c = self.config
        stream = SampleStream(
            ctx,
            sampling_for(ctx, c, 1),
            window=c.batch,
            total=c.max_samples - len(samples),
            together=c.min_samples - len(samples),  # none is judged before all are in
        )
        stop = "max_samples"
        try:
            while True:
                if self._confident(ctx, samples, history, mc_rng):
                    stop = "confident"
                    break
                if len(samples) >= c.max_samples:
                    break
                sample = await stream.next()
                if sample is None:
                    break
                samples.append(sample)
                yield self._vote(ctx, samples, stop=None, history=history)
        finally:
            await stream.close()  # aborts the samples still running
        found = self._vote(ctx, samples, stop=stop, history=history)
        found.trace["cancelled"] = len(stream.cancelled)
        found.trace["cancelled_tokens"] = stream.cancelled_tokens
        yield found

    @staticmethod
    def _vote(
        ctx: SolveContext, samples: list[Branch], *, stop: str | None, history: list[float]
    ) -> Solution:
        found = votes(ctx, samples)
        trace: dict[str, Any] = {"n": len(samples), "confidence": list(history)}
        if stop is not None:
            trace["ended_by"] = stop
        if not found:
            return solution(ctx, samples[0] if samples else None, **trace)
        return solution(
            ctx,
            found[0].best,
            answer=found[0].answer,
            support=found[0].members,
            votes={t.answer: t.count for t in found},
            **trace,
        )
