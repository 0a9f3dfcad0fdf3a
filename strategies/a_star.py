"""`a_star`: A*-decoding, best-first search over reasoning steps.

Chatziveroglou et al., "A*-Decoding: Token-Efficient Inference Scaling" (2025). Partial
solutions wait in a priority queue ordered by f = g + w * h:

- g, the cost so far, accumulates the process reward along the path: the sum of the
  log step scores, log prod(r_i) <= 0 (the log-probability, by the reward model, that
  every step so far is right).
- h estimates what the remaining steps will add. `heuristic=zero` assumes nothing is
  lost (admissible, but uninformed: the search runs breadth-first through every shallow
  prefix that scores well); `last` extrapolates the latest step's score, `mean` the
  path's mean step score, over the steps expected to remain (the mean depth of the
  solutions finished so far, `horizon` before any). A prefix whose last step looked
  wrong is then expected to keep losing, and the search stays on promising paths.

Each round pops the `pop` best partial solutions and samples `expansions` next steps for
each; a finished solution goes back into the queue with h = 0 and is accepted when it
is popped (its f is then at least every open prefix's estimate). A child whose scoring
failed is not queued (its g is unknown; it never inherits its parent's). The search
stops when `solutions` complete solutions are accepted, when the queue is empty, or
when the budget refuses a call (the paper's token and reward-call budgets are the run's
`budget.tokens` / `budget.reward_calls`, or a sub-budget `ctx.limit(...)` of a strategy
that runs A* as one phase). It answers with the accepted (else the best generated
complete, else the best partial) solution with the highest g.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from statistics import fmean
from typing import Any

from ttc.config import StrategyConfig, bounded
from ttc.errors import BackendError
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import mark_steps, solution, step_sampling
from ttc.types import Branch, Problem, Solution

MAX_FAILED_CALLS = 3
"""Consecutive failed expansions after which the backend is taken to be gone."""
EPS = 1e-4
"""Floor on a step score before its log: one step scored 0 must not make a path -inf."""


@dataclass
class AStarConfig(StrategyConfig):
    name: str = "a_star"
    expansions: int = bounded(4, ge=1, help="next steps sampled per expanded node")
    pop: int = bounded(1, ge=1, help="nodes expanded per round (batched together)")
    heuristic: str = bounded("last", choices=["last", "mean", "zero"])
    heuristic_weight: float = bounded(1.0, ge=0.0, help="w in f = g + w * h")
    horizon: int = bounded(8, ge=1, help="expected steps of a solution, before one finishes")
    solutions: int = bounded(1, ge=1, help="complete solutions to accept before stopping")
    max_depth: int = bounded(16, ge=1, help="steps of a solution at most")
    step_delimiter: str = "\n\n"
    """A step ends where this string appears; empty: steps of `step_tokens` tokens."""
    step_tokens: int = bounded(128, ge=1, help="tokens per step at most")
    temperature: float = bounded(0.8, ge=0.0)
    top_p: float = bounded(1.0, gt=0.0, le=1.0)


def path_cost(b: Branch) -> float:
    """g: the log of the product of the branch's step scores; -inf when its newest step
    has no score (its scoring failed: it must never look as good as its parent)."""
    if not b.scored:
        return -math.inf
    return sum(math.log(max(s, EPS)) for s in b.step_scores)


class AStar(Strategy):
    name = "a_star"

    def heuristic(self, b: Branch, depth_estimate: float) -> float:
        c = self.config
        if b.finished or c.heuristic == "zero" or not b.step_scores:
            return 0.0
        r = b.step_scores[-1] if c.heuristic == "last" else fmean(b.step_scores)
        remaining = max(depth_estimate - b.step, 1.0)
        return remaining * math.log(max(r, EPS))

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        sampling = step_sampling(
            n=c.expansions,
            temperature=c.temperature,
            top_p=c.top_p,
            step_delimiter=c.step_delimiter,
            step_tokens=c.step_tokens,
        )
        tie = itertools.count()
        # Max-heap on f via negation; deeper nodes first on ties (they are further on).
        queue: list[tuple[float, int, int, Branch]] = [(-0.0, 0, next(tie), ctx.root)]
        accepted: list[Branch] = []
        complete: list[Branch] = []
        partial: list[Branch] = []
        depths: list[int] = []
        stop = "exhausted"
        expanded = failures = 0

        def answer(**trace: Any) -> Solution:
            pool = accepted or complete or partial
            best = max(pool, key=path_cost) if pool else None
            g = None if best is None else path_cost(best)
            return solution(ctx, best, expanded=expanded, accepted=len(accepted), g=g, **trace)

        while queue:
            batch: list[Branch] = []
            while queue and len(batch) < c.pop and len(accepted) < c.solutions:
                _, _, _, node = heapq.heappop(queue)
                if node.finished:
                    node.extra["accepted"] = True
                    accepted.append(node)
                elif node.step < c.max_depth:
                    batch.append(node)
            if len(accepted) >= c.solutions:
                stop = "solved"
                break
            if not batch:
                continue
            try:
                children = await ctx.generate(batch, sampling)
            except BackendError:
                # The popped nodes are dropped (the context recorded the failure); the
                # rest of the queue is still worth searching, unless the backend is gone.
                failures += 1
                if failures >= MAX_FAILED_CALLS:
                    raise
                continue
            mark_steps(children)
            try:
                await ctx.score(children)
            except BackendError:
                # Every child's scoring failed: none is a candidate (see below), and the
                # rest of the queue is still worth searching, unless the reward model is gone.
                failures += 1
                if failures >= MAX_FAILED_CALLS:
                    raise
            else:
                failures = 0
            expanded += len(batch)
            for b in batch:
                b.extra["expanded"] = True
            depths += [b.step for b in children if b.finished]
            estimate = fmean(depths) if depths else float(c.horizon)
            for ch in children:
                if not ch.scored:
                    continue  # its scoring failed: not a candidate
                g = path_cost(ch)
                f = g + c.heuristic_weight * self.heuristic(ch, estimate)
                ch.extra["g"], ch.extra["f"] = g, f
                (complete if ch.finished else partial).append(ch)
                heapq.heappush(queue, (-f, -ch.step, next(tie), ch))
            yield answer()
        else:
            stop = "solved" if accepted else "exhausted"
        yield answer(ended_by=stop)
