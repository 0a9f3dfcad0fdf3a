"""`best_of_n`: sample n complete solutions, rank them with the reward model.

Step scores become one score per sample by `reward.aggregate` (last, min, prod, mean), or
by the strategy's own `aggregate` when set. A sample drawn in one call is one step; with
`step_delimiter` set, every sample is drawn step by step (a chain of tree nodes, one per
step), so a process reward scores each step and the aggregation has steps to combine.
When the budget cannot pay for n samples, as many as it allows are drawn; when scoring
is refused, the answer falls back to a majority vote over the samples.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ttc.aggregation import AGGREGATIONS, best_by_score
from ttc.config import bounded
from ttc.errors import BackendError, BudgetExceeded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import (
    SampleConfig,
    draw_samples,
    finish_all,
    majority,
    mark_steps,
    solution,
)
from ttc.types import Branch, Problem, Sampling, Solution


@dataclass
class BestOfNConfig(SampleConfig):
    name: str = "best_of_n"
    n: int = bounded(8, ge=1, help="samples per problem")
    aggregate: str | None = bounded(
        None, choices=AGGREGATIONS, help="step-score aggregation (default: reward.aggregate)"
    )
    step_delimiter: str = ""
    """Draw samples step by step, a step ending at this string (empty: in one call)."""
    max_steps: int = bounded(32, ge=1, help="steps per sample at most (step_delimiter set)")
    verifications: int | None = bounded(
        None, ge=1, help="verifications per sample by a generative verifier (None: its own)"
    )


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


async def stepwise(
    ctx: SolveContext, sampling: Sampling, delimiter: str, max_steps: int
) -> list[Branch]:
    """`sampling.n` samples drawn one step at a time; returns the last node of each chain.

    A chain ends at end-of-sequence, at `max_steps`, or when its tokens reach
    `sampling.max_tokens` (each chain its own allowance). When the budget refuses a
    round, the chains end where they are: their partial text is still a sample to rank,
    so this refusal ends the drawing, not the search (unless nothing was drawn).
    """
    step = sampling.replace(stop=(delimiter,))
    heads = await ctx.generate([ctx.root], step)
    mark_steps(heads)
    for _ in range(max_steps - 1):
        active = [b for b in heads if not b.finished and len(b.token_ids) < sampling.max_tokens]
        if not active:
            break
        # Chains with the same room left share one call; the calls run together (each is
        # reserved at authorisation, so together they cannot overspend).
        groups: dict[int, list[Branch]] = {}
        for b in active:
            groups.setdefault(sampling.max_tokens - len(b.token_ids), []).append(b)
        calls = [ctx.generate(ch, step.replace(n=1, max_tokens=k)) for k, ch in groups.items()]
        children: list[Branch] = []
        stopped = False
        for got in await asyncio.gather(*calls, return_exceptions=True):
            if isinstance(got, BudgetExceeded):
                stopped = True
            elif isinstance(got, BackendError):
                continue  # these chains stay where they are (the failure is recorded)
            elif isinstance(got, BaseException):
                raise got
            else:
                children += got
        mark_steps(children)
        by_parent = {ch.parent_id: ch for ch in children}
        heads = [by_parent.get(b.id, b) for b in heads]
        if stopped:
            break
    return heads


class BestOfN(Strategy):
    name = "best_of_n"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        sampling = sampling_for(ctx, c, c.n)
        if c.step_delimiter:
            samples = await stepwise(ctx, sampling, c.step_delimiter, c.max_steps)
        else:
            samples = await draw_samples(ctx, sampling)
        finish_all(samples)
        # Unranked samples still carry information: their majority, should scoring be
        # refused.
        yield solution(ctx, majority(ctx, samples), ranked=False)
        await ctx.score(samples, verifications=c.verifications)
        yield solution(ctx, best_by_score(samples, c.aggregate), n=len(samples), ranked=True)
