"""adaptive_consistency: a calibrated stopping rule that saves samples on easy problems."""

from __future__ import annotations

import random

import pytest
import sim

from ttc.strategies.adaptive_consistency import (
    AdaptiveConsistency,
    AdaptiveConsistencyConfig,
    beta_exceeds_half,
    dirichlet_leader_probability,
)
from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig


def test_beta_criterion_matches_its_closed_form() -> None:
    assert beta_exceeds_half(0, 0) == pytest.approx(0.5)
    assert beta_exceeds_half(1, 0) == pytest.approx(0.75)  # Beta(2, 1): 1 - 0.5^2
    assert beta_exceeds_half(2, 0) == pytest.approx(0.875)  # Beta(3, 1): 1 - 0.5^3
    assert beta_exceeds_half(5, 5) == pytest.approx(0.5)
    assert beta_exceeds_half(8, 2) > beta_exceeds_half(6, 4) > 0.5


def test_dirichlet_criterion_agrees_with_an_exact_case() -> None:
    # counts (1,) + alpha 1 with one unseen pseudo-answer: Dirichlet(2, 1), P(p1 > p2)
    # = P(Beta(2, 1) > 1/2) = 0.75. 20000 draws: standard error 0.003.
    p = dirichlet_leader_probability([1], alpha=1.0, draws=20000, rng=random.Random(0))
    assert p == pytest.approx(0.75, abs=0.015)


@pytest.mark.parametrize("criterion", ["beta", "dirichlet"])
def test_stops_early_when_easy_and_keeps_sc_accuracy(criterion: str) -> None:
    easy = sim.make_problems(100, steps=0, q=0.9, wrong="1:1", seed=61)
    hard = sim.make_problems(100, steps=0, q=0.45, wrong="1:0.5,2:0.3,3:0.2", seed=62)
    cfg = AdaptiveConsistencyConfig(criterion=criterion, max_samples=32, batch=2)
    env = sim.Env(reward=None)
    ada_easy = sim.solve_all(AdaptiveConsistency(cfg), easy, env)
    ada_hard = sim.solve_all(AdaptiveConsistency(cfg), hard, env)
    sc_hard = sim.solve_all(SelfConsistency(SelfConsistencyConfig(n=32)), hard, env)
    n_easy = sim.mean_spent(ada_easy, "samples")
    n_hard = sim.mean_spent(ada_hard, "samples")
    assert n_easy <= 8  # with 0.9 agreement a handful of votes settle it
    assert n_hard >= 2 * n_easy  # an ambiguous vote keeps sampling
    assert n_hard < 32
    # threshold 0.95: at most a few points below the 32-sample vote (100 problems each)
    assert sim.accuracy(ada_hard) >= sim.accuracy(sc_hard) - 0.1
    assert sim.accuracy(ada_easy) >= 0.95
    for o in ada_easy:
        t = o.solution.trace
        assert t["ended_by"] in ("confident", "max_samples")
        if t["ended_by"] == "confident":
            assert t["confidence"][-1] >= 0.95 and all(c < 0.95 for c in t["confidence"][:-1])


def test_the_samples_needed_before_any_check_are_one_request() -> None:
    """With cancellation, the `min_samples` drawn before the criterion is first checked
    go as one request of n = min_samples; every later sample is a request of its own
    (so each can be judged as it ends and the rest aborted)."""
    import asyncio

    from ttc.context import run_strategy
    from ttc.scheduler import Scheduler
    from ttc.testing import (
        ScriptedBackendConfig,
        SyntheticTask,
        SyntheticTaskConfig,
        synthetic_problem,
        wire,
    )

    from doubles import RequestRecorder

    backend = RequestRecorder(ScriptedBackendConfig(steps=0, p_correct=0.4))
    problem = synthetic_problem()
    ctx, _ = wire(
        problem,
        scheduler=Scheduler(backend, None, max_wait_s=0.0),
        task=SyntheticTask(SyntheticTaskConfig()),
    )
    cfg = AdaptiveConsistencyConfig(min_samples=3, batch=4, max_samples=12, threshold=0.99)
    found = asyncio.run(run_strategy(AdaptiveConsistency(cfg), problem, ctx))
    sizes = [r.sampling.n for r in backend.seen]
    assert sizes[0] == 3 and set(sizes[1:]) == {1}
    assert sum(sizes) == 12 and found.trace["n"] == 12  # p_correct 0.4: never confident
