"""`best_of_n`: sample n complete solutions, rank them with the reward model.

Step scores become one score per sample by `reward.aggregate` (last, min, prod, mean), or
by the strategy's own `aggregate` when set. When the budget cannot pay for n samples, as
many as it allows are drawn; when scoring is refused, the answer falls back to a majority
vote over the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ttc.config import StrategyConfig, bounded
from ttc.context import SolveContext
from ttc.interfaces import Strategy
from ttc.strategies.common import (
    STOPS,
    best_by_score,
    ended_by,
    finish_all,
    solution,
    tally,
)
from ttc.types import Branch, Problem, Sampling, Solution

AGGREGATIONS = ["last", "min", "prod", "mean"]


@dataclass
class BestOfNConfig(StrategyConfig):
    name: str = "best_of_n"
    n: int = bounded(8, ge=1, help="samples per problem")
    temperature: float = bounded(0.8, ge=0.0)
    top_p: float = bounded(1.0, gt=0.0, le=1.0)
    top_k: int = bounded(0, ge=0)
    min_p: float = bounded(0.0, ge=0.0, le=1.0)
    max_tokens: int = bounded(512, ge=1, help="tokens per sample")
    aggregate: str | None = bounded(
        None, choices=AGGREGATIONS, help="step-score aggregation (default: reward.aggregate)"
    )


def majority(ctx: SolveContext, branches: list[Branch]) -> Branch | None:
    """The best branch stating the most frequent (normalised) answer."""
    votes = tally(ctx, branches)
    if not votes:
        return branches[0] if branches else None
    return votes[0].best


def sampling_for(ctx: SolveContext, c: Any, n: int) -> Sampling:
    """The sampling of one batch of `n` whole solutions (decoding options read from any
    config with best_of_n's sampling fields), shrunk to the samples left."""
    left = ctx.remaining("samples")
    if left is not None:
        n = max(min(n, int(left)), 1)
    return Sampling(
        n=n,
        temperature=c.temperature,
        top_p=c.top_p,
        top_k=c.top_k,
        min_p=c.min_p,
        max_tokens=c.max_tokens,
    )


class BestOfN(Strategy):
    name = "best_of_n"

    async def solve(self, problem: Problem, ctx: SolveContext) -> Solution:
        c = self.config
        try:
            samples = await ctx.generate([ctx.root], sampling_for(ctx, c, c.n))
        except STOPS as exc:
            return Solution(answer=None, trace={"ended_by": ended_by(ctx, exc)})
        finish_all(samples)
        try:
            await ctx.score(samples)
        except STOPS as exc:
            # Unranked samples still carry information: fall back to their majority.
            return solution(ctx, majority(ctx, samples), ranked=False, ended_by=ended_by(ctx, exc))
        best = best_by_score(samples, c.aggregate)
        return solution(ctx, best, n=len(samples), ranked=True)
