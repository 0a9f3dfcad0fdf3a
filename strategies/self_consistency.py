"""`self_consistency`: sample n solutions, answer with the most frequent final answer.

Wang et al., "Self-Consistency Improves Chain of Thought Reasoning in Language Models"
(2023). Answers are extracted and normalised by the task, so "0.50" and "1/2" vote
together where the task says they are equal. `weighted=true` sums the reward of the
samples stating each answer instead of counting them (then a reward model is needed).
Ties go to the answer whose best sample scores higher, then to the one seen first.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.best_of_n import sampling_for
from ttc.strategies.common import SampleConfig, draw_samples, finish_all, solution, votes
from ttc.types import Branch, Problem, Solution


@dataclass
class SelfConsistencyConfig(SampleConfig):
    name: str = "self_consistency"
    n: int = bounded(8, ge=1, help="samples per problem")
    weighted: bool = False
    """Sum each answer's reward instead of counting its votes (needs a reward model)."""


def vote(ctx: SolveContext, samples: Sequence[Branch], weights: Sequence[float] | None) -> Solution:
    """The answer with the most votes (or weight); every sample stating it supports it."""
    found = votes(ctx, samples, weights)
    if not found:
        return solution(ctx, None, n=len(samples), votes={})
    top = found[0]
    return solution(
        ctx,
        top.best,
        answer=top.answer,
        support=top.members,
        n=len(samples),
        votes={t.answer: t.weight for t in found},
        weighted=weights is not None,
    )


class SelfConsistency(Strategy):
    name = "self_consistency"
    uses_reward = False

    def __init__(self, config: SelfConsistencyConfig) -> None:
        super().__init__(config)
        # The runner asks the instance whether it needs a reward: only the weighted vote does.
        self.uses_reward = bool(config.weighted)  # type: ignore[misc]

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        samples = await draw_samples(ctx, sampling_for(ctx, c, c.n))
        finish_all(samples)
        yield vote(ctx, samples, None)  # the count, should the weighting be refused
        if c.weighted:
            # a sample whose scoring failed adds nothing to its answer's weight
            weights = [max(w, 0.0) for w in await ctx.score(samples)]
            yield vote(ctx, samples, weights)
