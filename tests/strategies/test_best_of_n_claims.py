"""best_of_n: with an exact reward it is right whenever one of its N samples is."""

from __future__ import annotations

import pytest
import sim

from ttc.strategies.best_of_n import BestOfN, BestOfNConfig

STEPS, Q = 2, 0.6  # p = 0.36 per sample


@pytest.mark.parametrize("n", [1, 2, 4, 8])
def test_exact_reward_reaches_one_minus_miss_probability(n: int) -> None:
    problems = sim.make_problems(300, steps=STEPS, q=Q, seed=n)
    out = sim.solve_all(BestOfN(BestOfNConfig(n=n)), problems, sim.Env(exact=True))
    p = 1 - (1 - sim.expected_accuracy(STEPS, Q)) ** n
    # 300 independent problems: within 4 standard errors of 1 - (1 - p)^N.
    assert abs(sim.accuracy(out) - p) <= sim.binomial_tolerance(p, 300) + 1e-9
    assert all(o.spent.samples == n for o in out)


def test_step_score_aggregation_changes_the_ranking() -> None:
    # 30% of wrong steps and wrong answers are over-scored (0.95). `last` reads only the
    # final answer's score, so a hacked wrong answer wins; `min` also sees the wrong steps
    # before it, which are rarely all hacked. Measured: last 0.605, min 0.79 (200 problems).
    problems = sim.make_problems(200, steps=3, q=0.6, seed=5)
    env = sim.Env(reward=sim.SimRewardConfig(hack_rate=0.3, hack_score=0.95))

    def run(how: str) -> list[sim.Outcome]:
        cfg = BestOfNConfig(n=8, aggregate=how, step_delimiter="\n\n")
        return sim.solve_all(BestOfN(cfg), problems, env)

    last, low = run("last"), run("min")
    assert sim.accuracy(low) >= sim.accuracy(last) + 0.08
    for o in low:
        chosen = o.solution.branch
        assert chosen is not None and chosen.selected
        # drawn step by step: every step is its own node and carries its own score
        assert len(chosen.step_scores) == len(chosen.step_texts) == 4
        assert o.spent.samples == 8 * 4
