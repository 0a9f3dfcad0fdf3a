"""a_star: best-of-N's accuracy with fewer tokens when its heuristic is informative; more
tokens but no collapse when the heuristic is zero; its own budgets hold."""

from __future__ import annotations

import sim

from ttc.budget import Budget
from ttc.strategies.a_star import AStar, AStarConfig
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig

# 4 to 6 steps right with 0.7 each (p <= 0.24 per sample), a wrong turn one step longer;
# step scores 0.9 / 0.1 with sd 0.1; prefix caching on.
PROBLEMS = dict(steps=4, q=0.7, wrong="1:0.5,2:0.5", spread=2, detour=1)
ENV = sim.Env(reward=sim.SimRewardConfig(noise=0.1), budget=Budget(tokens=1500))


def _run(cfg: AStarConfig | BestOfNConfig, n: int = 200) -> list[sim.Outcome]:
    problems = sim.make_problems(n, seed=51, **PROBLEMS)  # type: ignore[arg-type]
    strategy = AStar(cfg) if isinstance(cfg, AStarConfig) else BestOfN(cfg)
    return sim.solve_all(strategy, problems, ENV)


def test_informative_heuristic_matches_best_of_n_with_fewer_tokens() -> None:
    bon = _run(BestOfNConfig(n=8))
    astar = _run(AStarConfig(expansions=4, heuristic="last", horizon=5))
    # Measured: BoN 0.78 with 1199 tokens, A* 0.985 with 896 tokens (200 problems).
    assert sim.accuracy(astar) >= sim.accuracy(bon) - 0.03
    assert sim.mean_spent(astar, "tokens") <= 0.85 * sim.mean_spent(bon, "tokens")
    solved = [o for o in astar if o.solution.trace["ended_by"] == "solved"]
    assert len(solved) >= 0.8 * len(astar)  # the rest (measured 13%) ran into the budget
    assert all(o.solution.branch is not None and o.solution.branch.finished for o in solved)


def test_zero_heuristic_costs_more_tokens_but_degrades_gracefully() -> None:
    informed = _run(AStarConfig(expansions=4, heuristic="last", horizon=5))
    zero = _run(AStarConfig(expansions=4, heuristic="zero"))
    # Uniform-cost search expands every well-scored shallow prefix before going deeper.
    assert sim.mean_spent(zero, "tokens") >= 1.2 * sim.mean_spent(informed, "tokens")
    assert sim.mean_spent(zero, "reward_calls") > sim.mean_spent(informed, "reward_calls")
    # ... yet it still answers nearly as well (measured 0.955), far above one sample.
    assert sim.accuracy(zero) >= sim.accuracy(informed) - 0.1
    assert all(o.spent.tokens <= 1500 for o in zero)


def test_stops_at_the_token_and_reward_call_budgets() -> None:
    # The paper's own budgets are the run's (or a sub-budget's): no fields of A*'s own.
    problems = sim.make_problems(20, seed=51, **PROBLEMS)  # type: ignore[arg-type]
    astar = AStar(AStarConfig(expansions=4, heuristic="zero"))
    tight = sim.solve_all(astar, problems, sim.Env(budget=Budget(tokens=150)))
    assert all(o.spent.tokens <= 150 for o in tight)
    assert all(o.solution.trace["ended_by"] == "budget" for o in tight)
    astar = AStar(AStarConfig(expansions=2, heuristic="zero"))
    calls = sim.solve_all(astar, problems, sim.Env(budget=Budget(reward_calls=3)))
    assert all(o.spent.reward_calls <= 3 for o in calls)
    assert all(o.solution.trace["ended_by"] == "budget" for o in calls)
    # out of budget before a finished solution: it answers with the best partial path
    assert all(o.solution.branch is not None for o in calls)


def test_priority_is_the_accumulated_log_reward_plus_the_heuristic() -> None:
    out = _run(AStarConfig(expansions=2, heuristic="last", horizon=5), n=10)
    for o in out:
        for b in o.ctx.branches.values():
            if "g" not in b.extra:
                continue
            assert b.extra["g"] <= 0.0 and b.extra["f"] <= b.extra["g"] + 1e-12
            if b.finished:
                assert b.extra["f"] == b.extra["g"]  # nothing remains to estimate
