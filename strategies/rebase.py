"""`rebase`: reward-balanced tree search (REBASE).

Wu et al., "Inference Scaling Laws: An Empirical Analysis of Compute-Optimal Inference
for Problem-Solving with Language Models" (2024). Beam search keeps the k best nodes
and gives each the same number of children; REBASE keeps every node the reward model
does not rule out and splits a fixed expansion width across them by their reward:

1. The root is expanded into `width` first steps; every new step is scored by the
   process reward model.
2. At each depth, the frontier (unfinished nodes) shares the width that is left,
   `width - finished`: a node with reward r gets `round(left * softmax(r / T))`
   children (`balance_temperature` T; largest-remainder rounding, so the children add
   up to the width exactly). A low-reward node may get none: it is pruned.
3. A node that ends its solution (end of sequence) is finished: it leaves the width, so
   the search stops once `width` solutions are finished (or after `max_steps`).

The answer is the reward-weighted vote of the finished solutions (`select=weighted_vote`,
the paper's choice), their plain majority (`select=majority`) or the best-scoring one
(`select=best`). Every frontier node records its share and the children it was given
(`extra["share"]`, `extra["width"]`; 0 means pruned).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ttc.aggregation import best_by_score, score_of
from ttc.config import bounded
from ttc.errors import BackendError, BudgetExceeded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import (
    StepSearchConfig,
    mark_steps,
    normalise_log_weights,
    solution,
    step_sampling,
    votes,
)
from ttc.types import Branch, Problem, Sampling, Solution


@dataclass
class RebaseConfig(StepSearchConfig):
    name: str = "rebase"
    width: int = bounded(8, ge=1, help="total expansions per depth (and solutions at most)")
    balance_temperature: float = bounded(
        0.2, gt=0.0, help="T of softmax(reward / T) that splits the width"
    )
    select: str = bounded("weighted_vote", choices=["weighted_vote", "majority", "best"])


def allocate(scores: Sequence[float], total: int, temperature: float) -> list[int]:
    """Split `total` expansions across nodes in proportion to softmax(score / T), rounded
    by largest remainder so the parts add up to `total`; a -inf score (failed scoring)
    gets nothing unless every score failed (then the split is uniform)."""
    if not scores or total <= 0:
        return [0] * len(scores)
    shares = normalise_log_weights([s / temperature for s in scores])
    raw = [total * w for w in shares]
    parts = [math.floor(x) for x in raw]
    left = total - sum(parts)
    # The largest remainders get the rest; ties go to the larger share, then the first.
    order = sorted(range(len(raw)), key=lambda i: (-(raw[i] - parts[i]), -shares[i], i))
    for i in order[:left]:
        parts[i] += 1
    return parts


class Rebase(Strategy):
    name = "rebase"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        sampling = step_sampling(
            n=1,
            temperature=c.temperature,
            top_p=c.top_p,
            step_delimiter=c.step_delimiter,
            step_tokens=c.step_tokens,
        )
        frontier: list[Branch] = [ctx.root]
        widths = [c.width]
        finished: list[Branch] = []
        partial: list[Branch] = []
        stop = "max_steps"
        for depth in range(c.max_steps):
            children, refused = await self._expand(ctx, frontier, widths, sampling)
            mark_steps(children)
            await ctx.score(children)
            finished += [b for b in children if b.finished]
            frontier = [b for b in children if not b.finished and b.scored]
            partial = frontier or partial
            left = c.width - len(finished)
            if refused is not None:
                yield self._choose(ctx, finished, partial, depth=depth + 1)
                raise refused
            if left <= 0 or not frontier:
                stop = "finished" if left <= 0 else "no_frontier"
                break
            scores = [score_of(b) for b in frontier]
            widths = allocate(scores, left, c.balance_temperature)
            shares = normalise_log_weights([s / c.balance_temperature for s in scores])
            for b, w, s in zip(frontier, widths, shares, strict=True):
                b.extra["width"] = w
                b.extra["share"] = round(s, 4)
            yield self._choose(ctx, finished, partial, depth=depth + 1)
        yield self._choose(ctx, finished, partial, ended_by=stop)

    async def _expand(
        self, ctx: SolveContext, nodes: list[Branch], widths: list[int], sampling: Sampling
    ) -> tuple[list[Branch], BudgetExceeded | None]:
        """Give each node its children: nodes with the same width share one call, and the
        calls run together (each is reserved when authorised, so together they cannot
        overspend). A refused call leaves the others' children and is returned."""
        groups: dict[int, list[Branch]] = {}
        for b, w in zip(nodes, widths, strict=True):
            if w > 0:
                groups.setdefault(w, []).append(b)
        calls = [ctx.generate(bs, sampling.replace(n=w)) for w, bs in groups.items()]
        children: list[Branch] = []
        refused: BudgetExceeded | None = None
        failed: BackendError | None = None
        for got in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(got, BudgetExceeded):
                refused = got
            elif isinstance(got, BackendError):
                failed = got  # those nodes get no children (the failure is recorded)
            elif isinstance(got, BaseException):
                raise got
            else:
                children += got
        if not children:
            if refused is not None:
                raise refused
            if failed is not None:
                raise failed
        return children, refused

    def _choose(
        self, ctx: SolveContext, finished: list[Branch], partial: list[Branch], **trace: Any
    ) -> Solution:
        pool = finished or partial
        trace["finished"] = len(finished)
        if self.config.select != "best" and finished:
            weights = None
            if self.config.select == "weighted_vote":
                weights = [max(score_of(b), 0.0) for b in finished]
            found = votes(ctx, finished, weights)
            if found:
                return solution(
                    ctx, found[0].best, answer=found[0].answer, support=found[0].members, **trace
                )
        return solution(ctx, best_by_score(pool), **trace)
