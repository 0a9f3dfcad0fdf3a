"""Allocators: the global pool is never exceeded, rollover moves unspent budget forward,
adaptive_stop stops easy problems early, difficulty follows its table."""

from __future__ import annotations

import asyncio
import random

import pytest

from ttc.budget import Budget, Ledger
from ttc.context import SolveContext
from ttc.cost import CostModel
from ttc.errors import BudgetExceeded, ConfigError
from ttc.launch import compose
from ttc.plugins.allocators.adaptive_stop import (
    AdaptiveStopAllocator,
    AdaptiveStopAllocatorConfig,
)
from ttc.plugins.allocators.difficulty import (
    DifficultyAllocator,
    DifficultyAllocatorConfig,
    DifficultyBin,
)
from ttc.plugins.allocators.global_pool import GlobalAllocator, GlobalAllocatorConfig
from ttc.plugins.allocators.rollover import RolloverAllocator, RolloverAllocatorConfig
from ttc.runner import Runner
from ttc.scheduler import Scheduler
from ttc.store import Store
from ttc.testing import (
    ScriptedBackend,
    ScriptedBackendConfig,
    SyntheticTask,
    SyntheticTaskConfig,
    synthetic_problem,
)
from ttc.types import Problem, Sampling

from conftest import DOUBLES


def problems(n: int) -> list[Problem]:
    return [synthetic_problem(i) for i in range(n)]


def test_global_pool_is_never_exceeded_and_unspent_budget_returns() -> None:
    alloc = GlobalAllocator(GlobalAllocatorConfig(), Budget(tokens=100, samples=4))
    ps = problems(40)
    alloc.plan(ps)
    rng = random.Random(0)
    running: list[tuple[Problem, Budget]] = []
    grants = []
    for p in ps:  # up to 8 problems hold reservations at once
        b = alloc.budget_for(p)
        assert b.tokens is not None
        grants.append(b.tokens)
        running.append((p, b))
        if len(running) == 8 or p is ps[-1]:
            for q, qb in running:
                spent = {"tokens": rng.randint(0, qb.tokens or 0), "samples": 1}
                alloc.release(q, qb, spent)
            running = []
        assert sum(alloc.spent.values()) <= 100 * 40 + 4 * 40
        assert alloc.spent["tokens"] <= 100 * 40
    assert max(grants) > 100  # later problems got what earlier ones left


def test_global_pool_holds_in_a_concurrent_run(store_url: str) -> None:
    cfg = compose(
        [
            *DOUBLES,
            f"store.url={store_url}",
            "allocator=global",
            "+allocator.pool={tokens: 900}",
            "strategy=beam_search",
            "task.n_problems=12",
            "run.concurrency=6",
        ]
    )
    outcome = Runner(cfg).run()
    results = Store(store_url).results(outcome.run_id)
    assert len(results) == 12
    assert sum(r["tokens"] for r in results) <= 900


def test_global_pool_rejects_unknown_units() -> None:
    with pytest.raises(ConfigError, match="poolable"):
        GlobalAllocator(GlobalAllocatorConfig(pool={"seconds": 3.0}), Budget())


def test_rollover_moves_unspent_budget_to_later_steps() -> None:
    alloc = RolloverAllocator(RolloverAllocatorConfig(steps=4), Budget(tokens=100))
    budget = alloc.budget_for(synthetic_problem())
    ledger = Ledger(budget)
    # step 0: a quarter, 25 tokens for one sequence
    assert ledger.authorize_generate([10], 1, 1000) == 25
    ledger.debit_generate(
        sequences=1, prompt_tokens=10, cached_prompt_tokens=0, completion_tokens=5, flops=0
    )
    # step 1: its own 25 plus the 20 step 0 left
    assert ledger.authorize_generate([10], 1, 1000) == 45
    ledger.debit_generate(
        sequences=1, prompt_tokens=10, cached_prompt_tokens=0, completion_tokens=45, flops=0
    )
    assert ledger.authorize_generate([10], 5, 1000) == 5  # 75 - 50 over 5 sequences
    ledger.debit_generate(
        sequences=5, prompt_tokens=10, cached_prompt_tokens=0, completion_tokens=25, flops=0
    )
    assert ledger.authorize_generate([10], 1, 1000) == 25  # the last step: all that is left
    assert budget.as_dict()["policy"]["allowances"] == [25, 45, 25, 25]


def test_rollover_refuses_a_step_with_nothing_left_and_needs_a_limit() -> None:
    ledger = Ledger(
        RolloverAllocator(RolloverAllocatorConfig(steps=2), Budget(tokens=4)).budget_for(
            synthetic_problem()
        )
    )
    with pytest.raises(BudgetExceeded, match="step tokens"):
        ledger.authorize_generate([1], 3, 10)  # 2 tokens over 3 sequences
    with pytest.raises(ConfigError, match=r"budget\.tokens"):
        RolloverAllocator(RolloverAllocatorConfig(), Budget()).budget_for(synthetic_problem())


def solve_in_rounds(p_correct: float, alloc: object, seed: int) -> SolveContext:
    """Sample two whole solutions per round, up to 16, until a call is refused."""
    backend = ScriptedBackend(ScriptedBackendConfig(steps=0, p_correct=p_correct))
    task = SyntheticTask(SyntheticTaskConfig())
    problem = synthetic_problem(seed)

    async def go() -> SolveContext:
        prompt = backend.render(problem)
        budget = alloc.budget_for(problem)  # type: ignore[attr-defined]
        ctx = SolveContext(
            problem=problem,
            prompt=prompt,
            prompt_ids=backend.encode(prompt),
            scheduler=Scheduler(backend, None, max_wait_s=0.0),
            ledger=Ledger(budget, CostModel(backend.architecture)),
            task=task,
            seed=seed,
        )
        await alloc.prepare(problem, ctx)  # type: ignore[attr-defined]
        for _ in range(8):
            try:
                await ctx.generate([ctx.root], Sampling(n=2, max_tokens=64))
            except BudgetExceeded:
                break
        return ctx

    return asyncio.run(go())


def test_adaptive_stop_stops_easy_problems_early_and_spends_more_on_hard_ones() -> None:
    alloc = AdaptiveStopAllocator(
        AdaptiveStopAllocatorConfig(min_answers=4, threshold=0.75), Budget(samples=16)
    )
    easy = [solve_in_rounds(0.97, alloc, s).ledger.spent.samples for s in range(8)]
    hard = [solve_in_rounds(0.2, alloc, s).ledger.spent.samples for s in range(8)]
    assert sum(easy) / 8 <= 6
    assert sum(hard) / 8 >= 12
    assert sum(hard) > 2 * sum(easy)


def test_difficulty_follows_its_table() -> None:
    table = [
        DifficultyBin(name="easy", up_to=0.2, tokens=100),
        DifficultyBin(name="hard", up_to=1.0, tokens=900, samples=12),
    ]
    alloc = DifficultyAllocator(
        DifficultyAllocatorConfig(probe_samples=6, probe_max_tokens=64, table=table),
        Budget(tokens=400, samples=8),
    )
    easy = solve_in_rounds(1.0, alloc, 0)
    hard = solve_in_rounds(0.0, alloc, 1)
    assert easy.ledger.budget.tokens == 100 and easy.ledger.budget.samples == 8
    assert hard.ledger.budget.tokens == 900 and hard.ledger.budget.samples == 12
    assert alloc.choices["p000"].bin == "easy" and alloc.choices["p000"].difficulty == 0.0
    assert alloc.choices["p001"].bin == "hard"
    # the probe (150 tokens) already spent the easy bin: no round follows it there
    assert easy.ledger.spent.generate_calls == 1 < hard.ledger.spent.generate_calls
    assert easy.ledger.spent.tokens < hard.ledger.spent.tokens <= 900
    probes = [b for b in easy.branches.values() if b.extra.get("probe")]
    assert len(probes) == 6 and not any(b.finished for b in probes)
    assert easy.ledger.budget.as_dict()["policy"]["bin"] == "easy"


def test_difficulty_table_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="increasing"):
        DifficultyAllocator(
            DifficultyAllocatorConfig(table=[DifficultyBin(up_to=0.9), DifficultyBin(up_to=0.1)]),
            Budget(),
        )
