"""Allocators: the global pool is never exceeded, rollover moves unspent budget forward,
adaptive_stop stops easy problems early, difficulty follows its table."""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ttc.budget import Budget, Grant, Ledger, Served
from ttc.errors import BudgetExceeded, ConfigError
from ttc.interfaces import Allocator, SolveContext, Strategy
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
from ttc.plugins.allocators.policy import dump_policy, load_policy, parse_policy
from ttc.plugins.allocators.rollover import RolloverAllocator, RolloverAllocatorConfig
from ttc.runner import Runner
from ttc.scheduler import Scheduler
from ttc.store import Store
from ttc.testing import (
    Outcome,
    ScriptedBackend,
    ScriptedBackendConfig,
    SyntheticReward,
    SyntheticRewardConfig,
    SyntheticTask,
    SyntheticTaskConfig,
    solve_all,
    synthetic_problem,
    wire,
)
from ttc.types import Problem, Sampling, Solution

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


def _spend(ledger: Ledger, grant: Grant, *, sequences: int, tokens: int) -> None:
    per = [tokens // sequences] * sequences
    served = Served(
        prompt_len=10,
        completion_lens=per,
        prompt_tokens=10,
        cached_prompt_tokens=0,
        completion_tokens=tokens,
    )
    ledger.charge_generate(grant, [served])


def test_rollover_moves_unspent_budget_to_later_steps() -> None:
    alloc = RolloverAllocator(RolloverAllocatorConfig(steps=4), Budget(tokens=100))
    budget = alloc.budget_for(synthetic_problem())
    ledger = Ledger(budget)
    # step 0: a quarter, 25 tokens for one sequence
    grant = ledger.authorize_generate([10], 1, 1000)
    assert grant.max_tokens == 25
    _spend(ledger, grant, sequences=1, tokens=5)
    # step 1: its own 25 plus the 20 step 0 left
    grant = ledger.authorize_generate([10], 1, 1000)
    assert grant.max_tokens == 45
    _spend(ledger, grant, sequences=1, tokens=45)
    grant = ledger.authorize_generate([10], 5, 1000)
    assert grant.max_tokens == 5  # 75 - 50 over 5 sequences
    _spend(ledger, grant, sequences=5, tokens=25)
    grant = ledger.authorize_generate([10], 1, 1000)
    assert grant.max_tokens == 25  # the last step: all that is left
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


class Rounds(Strategy):
    """Two whole samples per round, up to 16, until a call is refused (a test double)."""

    name = "rounds"
    uses_reward = False

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        for _ in range(8):
            drawn = await ctx.generate([ctx.root], Sampling(n=2, max_tokens=64))
            for b in drawn:
                b.finished = True
        yield Solution(answer=None)


def solve_in_rounds(p_correct: float, alloc: Allocator, seed: int) -> Outcome:
    (out,) = solve_all(
        Rounds(None),
        [synthetic_problem(seed)],
        backend=ScriptedBackend(ScriptedBackendConfig(steps=0, p_correct=p_correct)),
        task=SyntheticTask(SyntheticTaskConfig()),
        allocator=alloc,
        seed=seed,
    )
    return out


def test_adaptive_stop_stops_easy_problems_early_and_spends_more_on_hard_ones() -> None:
    alloc = AdaptiveStopAllocator(
        AdaptiveStopAllocatorConfig(min_answers=4, threshold=0.75), Budget(samples=16)
    )
    easy = [solve_in_rounds(0.97, alloc, s).spent.samples for s in range(8)]
    hard = [solve_in_rounds(0.2, alloc, s).spent.samples for s in range(8)]
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
    # the probe (6 samples, 150 tokens) already spent more than the easy bin's 100: the
    # stored limit is raised to the spending, never left below it
    assert easy.ledger.spent.tokens > 100
    assert easy.ledger.budget.tokens == easy.ledger.spent.tokens
    assert easy.ledger.budget.samples == 8
    assert hard.ledger.budget.tokens == 900 and hard.ledger.budget.samples == 12
    assert alloc.choices["p000"].bin == "easy" and alloc.choices["p000"].difficulty == 0.0
    assert alloc.choices["p001"].bin == "hard"
    assert easy.ledger.spent.generate_calls == 1 < hard.ledger.spent.generate_calls
    assert easy.ledger.spent.tokens < hard.ledger.spent.tokens <= 900
    probes = [b for b in easy.ctx.branches.values() if b.extra.get("probe")]
    # the probe samples are whole samples: leaves that vote
    assert len(probes) == 6 and all(b.finished for b in probes)
    assert easy.ledger.budget.as_dict()["policy"]["bin"] == "easy"


def test_difficulty_table_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="increasing"):
        DifficultyAllocator(
            DifficultyAllocatorConfig(table=[DifficultyBin(up_to=0.9), DifficultyBin(up_to=0.1)]),
            Budget(),
        )


def test_difficulty_counts_the_probe_toward_the_answer_and_never_stores_less_than_spent(
    store_url: str,
) -> None:
    # Every probe sample agrees (p_correct=1): every problem is easy, and the easy bin's
    # 60 tokens are less than the probe (4 samples of up to 64 tokens) already spent.
    cfg = compose(
        [
            *DOUBLES,
            f"store.url={store_url}",
            "backend.steps=0",
            "backend.p_correct=1.0",
            "allocator=difficulty",
            "allocator.probe_samples=4",
            "allocator.probe_max_tokens=64",
            "allocator.table=[{name: easy, up_to: 0.2, tokens: 60},"
            " {name: hard, up_to: 1.0, tokens: 900}]",
            "strategy=best_of_n",
            "strategy.n=4",
            "budget.tokens=900",
            "task.n_problems=4",
        ]
    )
    outcome = Runner(cfg).run()
    results = Store(store_url).results(outcome.run_id)
    assert len(results) == 4
    for r in results:
        assert r["tokens"] > 60  # the probe spent more than the easy bin holds
        assert r["budget"]["tokens"] >= r["tokens"], r["budget"]
        # the strategy had nothing left to draw, but the probe's samples answer
        assert r["answer"] is not None and r["correct"]


POLICY = {
    "ttc_policy": 1,
    "measure": "agreement",
    "probe": {"samples": 4, "max_tokens": 64},
    "bins": [
        {
            "name": "easy",
            "up_to": 0.2,
            "strategy": {"name": "self_consistency", "n": 5},
            "budget": {"tokens": 400},
        },
        {
            "name": "hard",
            "up_to": float("inf"),
            "strategy": {"name": "beam_search", "beam_width": 2, "expansions": 2},
            "budget": {"tokens": 2000, "samples": 40},
        },
    ],
    "source": {"store": "sqlite:///runs/ttc.db", "runs": ["r1"], "fitted_on": "oracle"},
}


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_policy_files_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"policy{suffix}"
    policy = parse_policy(POLICY)
    dump_policy(policy, path)
    again = load_policy(path)
    assert again == policy
    assert again.bins[-1].up_to == float("inf")
    assert again.bin_for(0.1).name == "easy" and again.bin_for(0.7).name == "hard"
    assert again.to_dict() == {**POLICY}


def test_policy_file_as_the_analysis_writes_it_by_hand(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        "ttc_policy: 1\nmeasure: score\nbins:\n"
        "  - {name: easy, up_to: 0.5, budget: {tokens: 800}}\n"
        "  - {name: hard, up_to: .inf, strategy: {name: best_of_n, n: 8}}\n"
    )
    policy = load_policy(path)
    assert policy.measure == "score" and policy.bins[1].up_to == float("inf")
    assert policy.bins[0].strategy == {} and policy.bins[1].budget == {}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"ttc_policy": 2}, "ttc_policy must be 1"),
        ({"measure": "vibes"}, "measure must be one of"),
        ({"bins": []}, "bins must be a non-empty list"),
        ({"bins": [{"name": "a", "up_to": 0.9}, {"name": "b", "up_to": 0.1}]}, "increasing"),
        ({"bins": [{"name": "a", "budget": {"tokenz": 5}}]}, r"bins\[0\]\.budget\.tokenz"),
        ({"bins": [{"name": "a", "up_to": "high"}]}, r"bins\[0\]\.up_to must be a number"),
        ({"bins": [{"name": "a", "strategy": {"n": 3}}]}, "needs a name"),
    ],
)
def test_bad_policy_files_fail_in_one_line_naming_the_key(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**POLICY, **change}))
    with pytest.raises(ConfigError, match=message) as info:
        load_policy(path)
    assert "\n" not in str(info.value)


def test_policy_strategies_are_validated_by_their_schema_at_start(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    bad = {**POLICY, "bins": [{"name": "a", "strategy": {"name": "best_of_n", "n": 0}}]}
    dump_policy(parse_policy(bad), path)
    with pytest.raises(ConfigError, match=r"bins\[0\]\.strategy"):
        DifficultyAllocator(DifficultyAllocatorConfig(policy=str(path)), Budget())
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"cannot read allocator\.policy"):
        DifficultyAllocator(DifficultyAllocatorConfig(policy=str(missing)), Budget())


def test_difficulty_solves_each_bin_with_its_policy_strategy_and_budget(
    store_url: str, tmp_path: Path
) -> None:
    path = tmp_path / "policy.yaml"
    dump_policy(parse_policy(POLICY), path)

    def run(p_correct: float) -> list[dict[str, object]]:
        cfg = compose(
            [
                *DOUBLES,
                f"store.url={store_url}",
                "backend.steps=1",
                f"backend.p_correct={p_correct}",
                "allocator=difficulty",
                f"allocator.policy={path}",
                "strategy=best_of_n",
                "budget.tokens=5000",
                "task.n_problems=3",
            ]
        )
        outcome = Runner(cfg).run()
        return Store(store_url).results(outcome.run_id)

    for r in run(1.0):  # all probe samples agree: easy
        policy = r["budget"]["policy"]
        assert policy["bin"] == "easy" and policy["strategy"]["name"] == "self_consistency"
        assert r["budget"]["tokens"] == 400 and r["samples"] == 5  # 4 probe samples + 1
        assert r["correct"]
    for r in run(0.0):  # wrong answers are scattered: hard
        policy = r["budget"]["policy"]
        assert policy["bin"] == "hard" and policy["strategy"]["name"] == "beam_search"
        assert r["budget"]["tokens"] == 2000 and r["budget"]["samples"] == 40
        assert r["samples"] > 5  # beam search went on past the probe


def test_difficulty_score_measure_is_the_probe_samples_mean_reward() -> None:
    table = [
        DifficultyBin(name="low", up_to=0.5, tokens=100),
        DifficultyBin(name="high", up_to=1.0, tokens=900),
    ]
    config = DifficultyAllocatorConfig(measure="score", probe_samples=4, table=table)
    alloc = DifficultyAllocator(config, Budget(tokens=900))
    backend = ScriptedBackend(ScriptedBackendConfig(steps=1, p_correct=1.0))
    reward = SyntheticReward(SyntheticRewardConfig())
    problem = synthetic_problem(0)

    async def go() -> float | None:
        ctx, _ = wire(
            problem,
            scheduler=Scheduler(backend, reward, max_wait_s=0.0),
            task=SyntheticTask(SyntheticTaskConfig()),
            budget=alloc.budget_for(problem),
        )
        await alloc.prepare(problem, ctx)
        probes = [b for b in ctx.branches.values() if b.extra.get("probe")]
        assert all(b.score is not None for b in probes)
        mean = sum(b.score or 0.0 for b in probes) / len(probes)
        assert alloc.choices[problem.id].difficulty == pytest.approx(mean)
        return alloc.choices[problem.id].difficulty

    # right answers score 0.9: the mean reward is high, so the problem falls in `high`
    assert asyncio.run(go()) == pytest.approx(0.9)
    assert alloc.choices[problem.id].bin == "high"
