"""`best_of_majority`: Best-of-Majority for pass@k.

Di et al., "Best-of-Majority: Minimax-Optimal Strategy for Pass@k Inference Scaling"
(2025). Best-of-N trusts the reward model alone, so as N grows it finds more rare wrong
answers that the reward model happens to over-score ("reward hacking") and its accuracy
can fall; majority voting ignores the reward. Best-of-Majority does both: of the n
samples it keeps only answers whose frequency is at least `min_frequency` (a rare answer
is unlikely to be right whatever its reward), then returns the `k` kept answers with the
highest reward. `Solution.answer` is the first of them, `trace["answers"]` all k (for
pass@k). When no answer is frequent enough, the most frequent ones are used instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from statistics import fmean

from ttc.aggregation import Tally, score_of
from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.best_of_n import sampling_for
from ttc.strategies.common import (
    SampleConfig,
    draw_samples,
    finish_all,
    majority,
    solution,
    votes,
)
from ttc.types import Problem, Solution


@dataclass
class BestOfMajorityConfig(SampleConfig):
    name: str = "best_of_majority"
    n: int = bounded(16, ge=1, help="samples per problem")
    k: int = bounded(1, ge=1, help="answers returned (pass@k); k=1 gives a single answer")
    min_frequency: float = bounded(
        0.1, gt=0.0, le=1.0, help="share of the n samples an answer needs to be considered"
    )
    answer_score: str = bounded(
        "mean", choices=["mean", "max"], help="an answer's reward from its samples' rewards"
    )


class BestOfMajority(Strategy):
    name = "best_of_majority"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        samples = await draw_samples(ctx, sampling_for(ctx, c, c.n))
        finish_all(samples)
        yield solution(ctx, majority(ctx, samples), ranked=False)  # should scoring be refused
        await ctx.score(samples)
        found = votes(ctx, samples)
        if not found:
            yield solution(ctx, None, n=len(samples), answers=[])
            return
        # The threshold is on the share of all n samples (unanswered ones included): an
        # answer the model rarely gives is filtered however high the reward rates it.
        need = c.min_frequency * len(samples)
        kept = [t for t in found if t.count >= need - 1e-9]
        fallback = not kept
        if fallback:
            kept = [t for t in found if t.count == found[0].count]

        def reward(t: Tally) -> float:
            values = [score_of(b) for b in t.members]
            return max(values) if c.answer_score == "max" else fmean(values)

        ranked = sorted(kept, key=reward, reverse=True)[: c.k]
        yield solution(
            ctx,
            ranked[0].best,
            answer=ranked[0].answer,
            support=[b for t in ranked for b in t.members],
            n=len(samples),
            answers=[t.answer for t in ranked],
            rewards=[reward(t) for t in ranked],
            frequencies=[t.count / len(samples) for t in ranked],
            filtered_out=len(found) - len(kept),
            fallback=fallback,
        )
