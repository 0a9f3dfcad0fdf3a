"""best_of_majority keeps its accuracy as N grows under a reward that best-of-N over-trusts."""

from __future__ import annotations

import sim

from ttc.strategies.best_of_majority import BestOfMajority, BestOfMajorityConfig
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig

# 2 to 4 steps, right with 0.55 each (p = 0.3 for two); of the wrong answers 80% are rare
# (drawn from 100_000 values), 20% are "+1". The reward scores right 0.7 and wrong 0.4,
# plus a fixed per-answer offset of sd 0.25: a few rare wrong answers look better than
# the right one, and the more samples, the more of them best-of-N meets.
PROBLEMS = dict(steps=2, q=0.55, wrong="1:1", tail=0.8, spread=2, detour=1)
ENV = sim.Env(reward=sim.SimRewardConfig(right=0.7, wrong=0.4, answer_noise=0.25, noise=0.05))


def test_bon_degrades_with_n_while_bom_does_not() -> None:
    problems = sim.make_problems(200, seed=31, **PROBLEMS)  # type: ignore[arg-type]
    bon, bom = {}, {}
    for n in (4, 16, 64):
        bon[n] = sim.accuracy(sim.solve_all(BestOfN(BestOfNConfig(n=n)), problems, ENV))
        cfg = BestOfMajorityConfig(n=n, min_frequency=0.1)
        bom[n] = sim.accuracy(sim.solve_all(BestOfMajority(cfg), problems, ENV))
    # Measured on these 200 problems: BoN 0.405 -> 0.415 -> 0.28, BoM 0.40 -> 0.73 -> 0.81
    # (on one-step solutions, 300 problems: BoN 0.52 -> 0.40 -> 0.22, BoM 0.52 -> 0.84 ->
    # 0.81). Tolerances: 0.1 (about 3 standard errors of a difference over 200 problems).
    assert bon[64] <= bon[4] - 0.1 and bon[64] <= bon[16] - 0.1
    assert bom[16] >= bom[4] - 0.05 and bom[64] >= bom[16] - 0.1
    assert bom[64] >= bon[64] + 0.3


def test_returns_k_frequent_answers_ranked_by_reward() -> None:
    problems = sim.make_problems(50, steps=0, q=0.4, wrong="1:0.5,2:0.5", tail=0.3, seed=32)
    out = sim.solve_all(
        BestOfMajority(BestOfMajorityConfig(n=32, k=3, min_frequency=0.1)), problems, sim.Env()
    )
    for o in out:
        t = o.solution.trace
        assert 1 <= len(t["answers"]) <= 3
        assert len(set(t["answers"])) == len(t["answers"])
        assert t["answers"][0] == o.solution.answer
        assert all(f >= 0.1 - 1e-9 for f in t["frequencies"])  # rare answers filtered out
        assert t["rewards"] == sorted(t["rewards"], reverse=True)
    # right answers score 0.9, wrong ones 0.1: the first of k is right when it was kept
    assert sim.accuracy(out) >= 0.95


def test_falls_back_to_the_most_frequent_when_nothing_is_frequent_enough() -> None:
    problems = sim.make_problems(20, steps=0, q=0.0, wrong="1:1", tail=1.0, seed=33)
    out = sim.solve_all(
        BestOfMajority(BestOfMajorityConfig(n=8, min_frequency=0.5)), problems, sim.Env()
    )
    assert all(o.solution.trace["fallback"] for o in out)
    assert all(o.solution.answer is not None for o in out)
