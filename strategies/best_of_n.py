"""`best_of_n`: sample n complete solutions, rank them with the reward model.

Step scores are aggregated per `reward.aggregate` (last, min, prod, mean). When the
budget cannot pay for n samples, as many as it allows are drawn; when scoring is refused,
the answer falls back to a majority vote over the samples.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ttc.config import StrategyConfig, bounded
from ttc.context import SolveContext
from ttc.errors import BudgetExceeded
from ttc.interfaces import Strategy
from ttc.types import Branch, Problem, Sampling, Solution


@dataclass
class BestOfNConfig(StrategyConfig):
    name: str = "best_of_n"
    n: int = bounded(8, ge=1, help="samples per problem")
    temperature: float = bounded(0.8, ge=0.0)
    top_p: float = bounded(1.0, gt=0.0, le=1.0)
    top_k: int = bounded(0, ge=0)
    min_p: float = bounded(0.0, ge=0.0, le=1.0)
    max_tokens: int = bounded(512, ge=1, help="tokens per sample")


def majority(ctx: SolveContext, branches: list[Branch]) -> Branch | None:
    """The first branch stating the most frequent (normalised) answer."""
    answered = [(b, ctx.answer(b)) for b in branches]
    votes = Counter(ctx.normalize(a) for _, a in answered if a is not None)
    if not votes:
        return branches[0] if branches else None
    top = votes.most_common(1)[0][0]
    return next(b for b, a in answered if a is not None and ctx.normalize(a) == top)


class BestOfN(Strategy):
    name = "best_of_n"

    async def solve(self, problem: Problem, ctx: SolveContext) -> Solution:
        c = self.config
        n = c.n
        left = ctx.remaining("samples")
        if left is not None:
            n = max(min(n, int(left)), 1)
        sampling = Sampling(
            n=n,
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            min_p=c.min_p,
            max_tokens=c.max_tokens,
        )
        try:
            samples = await ctx.generate([ctx.root], sampling)
        except BudgetExceeded:
            return Solution(answer=None, trace={"ended_by": "budget"})
        for b in samples:
            b.finished = True  # a complete sample is a leaf whatever ended it
        try:
            scores = await ctx.score(samples)
        except BudgetExceeded:
            best = majority(ctx, samples)
            return Solution(
                answer=ctx.answer(best) if best else None, branch=best, trace={"ranked": False}
            )
        best_i = max(range(len(samples)), key=lambda i: scores[i])
        best = samples[best_i]
        return Solution(answer=ctx.answer(best), branch=best, trace={"n": len(samples)})
