"""`self_consistency`: sample n solutions, answer with the most frequent final answer.

Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
(2023). Answers are extracted and normalised by the task, so "0.50" and "1/2" vote
together where the task says they are equal. `weighted=true` sums the reward of the
samples stating each answer instead of counting them (then a reward model is needed).
Ties go to the answer whose best sample scores higher, then to the one seen first.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttc.config import bounded
from ttc.context import SolveContext
from ttc.interfaces import Strategy
from ttc.strategies.best_of_n import sampling_for
from ttc.strategies.common import (
    STOPS,
    SampleConfig,
    draw_samples,
    ended_by,
    finish_all,
    solution,
    tally,
)
from ttc.types import Problem, Solution


@dataclass
class SelfConsistencyConfig(SampleConfig):
    name: str = "self_consistency"
    n: int = bounded(8, ge=1, help="samples per problem")
    weighted: bool = False
    """Sum each answer's reward instead of counting its votes (needs a reward model)."""


class SelfConsistency(Strategy):
    name = "self_consistency"
    uses_reward = False

    def __init__(self, config: SelfConsistencyConfig) -> None:
        super().__init__(config)
        # The runner asks the instance whether it needs a reward: only the weighted vote does.
        self.uses_reward = bool(config.weighted)  # type: ignore[misc]

    async def solve(self, problem: Problem, ctx: SolveContext) -> Solution:
        c = self.config
        try:
            samples = await draw_samples(ctx, sampling_for(ctx, c, c.n))
        except STOPS as exc:
            return Solution(answer=None, trace={"ended_by": ended_by(ctx, exc)})
        finish_all(samples)
        weights = None
        stopped = None
        if c.weighted:
            try:
                # a sample whose scoring failed adds nothing to its answer's weight
                weights = [max(w, 0.0) for w in await ctx.score(samples)]
            except STOPS as exc:
                stopped = ended_by(ctx, exc)  # fall back to counting votes
        votes = tally(ctx, samples, weights)
        if not votes:
            return solution(ctx, None, n=len(samples), votes={})
        for b in samples:  # every sample that voted for the winner is kept in the tree
            a = ctx.answer(b)
            b.selected = a is not None and ctx.normalize(a) == votes[0].key
        trace: dict[str, object] = {
            "n": len(samples),
            "votes": {t.answer: t.weight for t in votes},
            "weighted": weights is not None,
        }
        if stopped:
            trace["ended_by"] = stopped
        return solution(ctx, votes[0].best, answer=votes[0].answer, **trace)
