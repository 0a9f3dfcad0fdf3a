"""The synthetic environment behaves as documented: the other tests' expectations rest on it."""

from __future__ import annotations

import sim

from ttc.strategies.best_of_n import BestOfN, BestOfNConfig


def test_a_sample_is_right_with_probability_q_to_the_steps() -> None:
    problems = sim.make_problems(400, steps=3, q=0.8, seed=11)
    out = sim.solve_all(BestOfN(BestOfNConfig(n=1)), problems, sim.Env(exact=True))
    p = sim.expected_accuracy(3, 0.8)
    # 400 independent samples: 4 standard errors of a proportion.
    assert abs(sim.accuracy(out) - p) <= sim.binomial_tolerance(p, 400)


def test_the_reward_separates_right_and_wrong_steps_as_configured() -> None:
    reward = sim.SimReward(sim.SimRewardConfig(right=0.8, wrong=0.2))
    (problem,) = sim.make_problems(1, steps=2, q=0.5)
    assert reward.step_score(problem, "Step 1: ok #00ff\n\n") == 0.8
    assert reward.step_score(problem, "Step 1: err #00ff\n\n") == 0.2
    right = f"So the answer is \\boxed{{{problem.reference}}}."
    assert reward.step_score(problem, right) == 0.8
    assert reward.step_score(problem, "So the answer is \\boxed{1}.") == 0.2
    hacked = sim.SimReward(sim.SimRewardConfig(hack_rate=1.0, hack_score=0.99))
    assert hacked.step_score(problem, "Step 1: err #00ff\n\n") == 0.99
