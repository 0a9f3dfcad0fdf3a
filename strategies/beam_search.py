"""`beam_search`: step-level, reward-guided beam search.

Each round continues every beam by one step (`expansions` samples per beam, a step ends
at `step_delimiter` or after `step_tokens` tokens), scores the new steps with the process
reward model, keeps finished solutions, and keeps the `beam_width` best unfinished ones.
It stops when `beam_width` solutions are finished, no beam is left, `max_steps` rounds
ran, or the budget refuses a call; the best finished solution (else the best partial
one) is returned.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttc.config import StrategyConfig, bounded
from ttc.context import SolveContext
from ttc.errors import BudgetExceeded
from ttc.interfaces import Strategy
from ttc.types import Branch, Problem, Sampling, Solution


@dataclass
class BeamSearchConfig(StrategyConfig):
    name: str = "beam_search"
    beam_width: int = bounded(4, ge=1, help="beams kept per round")
    expansions: int = bounded(2, ge=1, help="samples per beam per round")
    max_steps: int = bounded(16, ge=1, help="rounds at most")
    step_delimiter: str = "\n\n"
    step_tokens: int = bounded(128, ge=1, help="tokens per step at most")
    temperature: float = bounded(0.8, ge=0.0)
    top_p: float = bounded(1.0, gt=0.0, le=1.0)


def _score(b: Branch) -> float:
    return b.score if b.score is not None else float("-inf")


class BeamSearch(Strategy):
    name = "beam_search"

    async def solve(self, problem: Problem, ctx: SolveContext) -> Solution:
        c = self.config
        sampling = Sampling(
            n=c.expansions,
            temperature=c.temperature,
            top_p=c.top_p,
            max_tokens=c.step_tokens,
            stop=(c.step_delimiter,) if c.step_delimiter else (),
        )
        beams: list[Branch] = [ctx.root]
        finished: list[Branch] = []
        partial: list[Branch] = []
        ended_by = "max_steps"
        for _ in range(c.max_steps):
            try:
                children = await ctx.generate(beams, sampling)
                await ctx.score(children)
            except BudgetExceeded:
                ended_by = "budget"
                break
            finished += [b for b in children if b.finished]
            active = sorted((b for b in children if not b.finished), key=_score, reverse=True)
            partial = active or partial
            beams = active[: c.beam_width]
            if len(finished) >= c.beam_width:
                ended_by = "finished"
                break
            if not beams:
                ended_by = "no_beams"
                break
        pool = finished or partial
        if not pool:
            return Solution(answer=None, trace={"ended_by": ended_by})
        best = max(pool, key=_score)
        return Solution(
            answer=ctx.answer(best),
            branch=best,
            trace={"ended_by": ended_by, "finished": len(finished)},
        )
