"""`beam_search`: step-level, reward-guided beam search.

Snell et al., "Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters" (2024). Each round continues every beam by one step
(`expansions` samples per beam; a step ends at `step_delimiter`, or after `step_tokens`
tokens when the delimiter is empty), scores the new steps with the process reward model,
sets finished solutions aside, and keeps the `beam_width` best unfinished ones (the
first round samples `beam_width * expansions` first steps from the prompt). It stops
when `beam_width` solutions are finished, no beam is left, `max_steps` rounds ran, or
the budget refuses a call; the best finished solution (else the best partial one) is
returned.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from ttc.aggregation import best_by_score, score_of
from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import StepSearchConfig, mark_steps, solution, step_sampling
from ttc.types import Branch, Problem, Solution


@dataclass
class BeamSearchConfig(StepSearchConfig):
    name: str = "beam_search"
    beam_width: int = bounded(4, ge=1, help="beams kept per round")
    expansions: int = bounded(2, ge=1, help="samples per beam per round")


class BeamSearch(Strategy):
    name = "beam_search"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        sampling = step_sampling(
            n=c.expansions,
            temperature=c.temperature,
            top_p=c.top_p,
            step_delimiter=c.step_delimiter,
            step_tokens=c.step_tokens,
        )
        beams: list[Branch] = [ctx.root]
        finished: list[Branch] = []
        partial: list[Branch] = []
        stop = "max_steps"
        for _ in range(c.max_steps):
            # The root is expanded into `beam_width * expansions` first steps, so the
            # search starts with a full beam rather than `expansions` candidates.
            first = beams == [ctx.root]
            step = sampling.replace(n=c.beam_width * c.expansions) if first else sampling
            children = await ctx.generate(beams, step)
            mark_steps(children)
            await ctx.score(children)
            finished += [b for b in children if b.finished and b.scored]
            # A branch whose newest step failed scoring is no candidate (never first).
            active = sorted(
                (b for b in children if not b.finished and b.scored), key=score_of, reverse=True
            )
            partial = active or partial
            beams = active[: c.beam_width]
            for b in beams:  # survival is recorded; `selected` marks the answer only
                b.extra["kept"] = True
            if len(finished) >= c.beam_width:
                stop = "finished"
                break
            if not beams:
                stop = "no_beams"
                break
            yield solution(ctx, best_by_score(finished or partial), finished=len(finished))
        best = best_by_score(finished or partial)
        yield solution(ctx, best, ended_by=stop, finished=len(finished))
