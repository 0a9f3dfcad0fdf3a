"""The strategy contract: sub-budgets, the one place a search ends, the fallback vote."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ttc.budget import Budget, Unit
from ttc.context import ProblemContext, run_strategy
from ttc.errors import BudgetExceeded, ConfigError
from ttc.interfaces import SolveContext, Strategy
from ttc.scheduler import Scheduler
from ttc.testing import (
    ScriptedBackend,
    ScriptedBackendConfig,
    SyntheticTask,
    SyntheticTaskConfig,
    synthetic_problem,
    wire,
)
from ttc.types import Problem, Sampling, Solution

from doubles import RequestRecorder

WHOLE = Sampling(n=1, max_tokens=40)


def context(budget: Budget, *, steps: int = 0) -> tuple[ProblemContext, object]:
    backend = ScriptedBackend(ScriptedBackendConfig(steps=steps, p_correct=1.0))
    scheduler = Scheduler(backend, None, max_wait_s=0.0)
    return wire(
        synthetic_problem(),
        scheduler=scheduler,
        task=SyntheticTask(SyntheticTaskConfig()),
        budget=budget,
    )


def test_the_concrete_context_is_a_solve_context() -> None:
    ctx, _ = context(Budget())
    assert isinstance(ctx, SolveContext)
    assert not hasattr(ctx, "ledger") and not hasattr(ctx, "scheduler")


def test_a_sub_budget_ends_its_block_and_the_search_goes_on() -> None:
    async def go() -> None:
        ctx, ledger = context(Budget(tokens=400))
        drawn = 0
        async with ctx.limit(tokens=100) as sub:
            assert sub.remaining(Unit.TOKENS) == 100
            for _ in range(50):
                drawn += len(await sub.generate([sub.root], WHOLE))
        spent_in_block = ledger.spent.tokens  # type: ignore[attr-defined]
        assert 0 < spent_in_block <= 100 and drawn < 50
        # the block ended, not the search: the problem's budget still has room
        more = await ctx.generate([ctx.root], WHOLE)
        assert more and ledger.spent.tokens > spent_in_block  # type: ignore[attr-defined]
        assert len(ctx.branches) == drawn + len(more) + 1  # one shared tree

    asyncio.run(go())


def test_the_problem_budget_still_binds_inside_a_sub_budget() -> None:
    async def go() -> None:
        ctx, ledger = context(Budget(tokens=60))
        with pytest.raises(BudgetExceeded):
            async with ctx.limit(tokens=1000) as sub:
                for _ in range(50):
                    await sub.generate([sub.root], WHOLE)
        assert ledger.spent.tokens <= 60  # type: ignore[attr-defined]

    asyncio.run(go())


def test_a_sub_budget_of_an_unknown_unit_is_one_clear_line() -> None:
    ctx, _ = context(Budget())
    with pytest.raises(ConfigError, match="'tokenz' is not a budget unit; units: samples"):
        ctx.limit(tokenz=5)


class CoroutineStrategy(Strategy):
    """Returns (does not yield) its answer, and never catches a refusal (a test double)."""

    name = "coroutine"
    uses_reward = False

    async def solve(self, problem: Problem, ctx: SolveContext) -> Solution:  # type: ignore[override]
        for _ in range(100):
            (b,) = await ctx.generate([ctx.root], WHOLE)
            b.finished = True
        return Solution(answer="never reached")


class YieldingStrategy(Strategy):
    """Yields the first sample's answer, then searches on until refused (a test double)."""

    name = "yielding"
    uses_reward = False

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        (first,) = await ctx.generate([ctx.root], WHOLE)
        first.finished = True
        yield Solution(answer="first", branch=first)
        while True:
            await ctx.generate([ctx.root], WHOLE)


@pytest.mark.parametrize("budget", [Budget(tokens=100), Budget(samples=3)])
def test_a_refusal_ends_the_search_with_the_last_yielded_answer(budget: Budget) -> None:
    ctx, _ = context(budget)
    solution = asyncio.run(run_strategy(YieldingStrategy(None), ctx.problem, ctx))
    assert solution.answer == "first" and solution.trace["ended_by"] == "budget"
    assert solution.branch is not None and solution.branch.selected


def test_without_a_yielded_answer_the_finished_samples_vote() -> None:
    ctx, _ = context(Budget(tokens=100))
    solution = asyncio.run(run_strategy(CoroutineStrategy(None), ctx.problem, ctx))
    assert solution.trace == {"fallback": "vote", "ended_by": "budget"}
    assert solution.answer == ctx.problem.reference  # p_correct=1: every sample agrees
    assert any(c.status == "refused" for c in ctx.calls)


def test_a_refused_first_call_leaves_no_answer_and_no_error() -> None:
    ctx, _ = context(Budget(tokens=0))
    solution = asyncio.run(run_strategy(YieldingStrategy(None), ctx.problem, ctx))
    assert solution.answer is None and solution.trace["ended_by"] == "budget"


def test_copies_of_one_branch_go_as_one_request_and_keep_their_places() -> None:
    """A particle filter asks to continue each resampled copy: the copies of a branch
    are one request of n = copies x n (one prefill, one request), and the children come
    back in the order asked, n per copy."""

    async def go() -> None:
        backend = RequestRecorder(ScriptedBackendConfig(steps=3, p_correct=0.5))
        scheduler = Scheduler(backend, None, max_wait_s=0.0)
        problem = synthetic_problem()
        ctx, ledger = wire(problem, scheduler=scheduler, task=SyntheticTask(SyntheticTaskConfig()))
        a = ctx.extend(ctx.root, "Step 1: ok.\n\n")
        b = ctx.extend(ctx.root, "Step 1: hmm.\n\n")
        sampling = Sampling(n=2, max_tokens=40, temperature=1.0)
        children = await ctx.generate([a, b, a, a], sampling)
        assert [c.parent_id for c in children] == [a.id] * 2 + [b.id] * 2 + [a.id] * 4
        assert len({c.id for c in children}) == 8
        seen = backend.seen
        assert sorted(r.sampling.n for r in seen) == [2, 6]
        # one seed per request: the engine draws the merged request's 6 sequences apart
        merged = next(r for r in seen if r.sampling.n == 6)
        assert len({r.sampling.seed for r in seen}) == 2
        assert merged.prompt.endswith("Step 1: ok.\n\n")
        # the prompt of `a` is prefilled (and charged) once, not once per copy
        prompts = (
            2 * len(backend.encode(backend.render(problem))) + len(a.token_ids) + len(b.token_ids)
        )
        assert ledger.spent.prefill_tokens == prompts  # type: ignore[attr-defined]
        assert ledger.spent.tokens == sum(c.new_tokens for c in children)  # type: ignore[attr-defined]

    asyncio.run(go())
