"""Flow strategies on a real tiny trained model: NFE budgets, rollover, resampling."""

from __future__ import annotations

import random

import numpy as np
import pytest
from flow_fixtures import digit_reward, flow_cache, tiny_net, velocity  # noqa: F401

from ttc.errors import BudgetExceeded, ConfigError, UnknownNameError
from ttc.flow.budget import FlowBudget, FlowLedger
from ttc.flow.registry import build
from ttc.flow.runner import digit_problems, solve_flow

STRATEGIES = [
    ("best_of_n", "fixed"),
    ("particle_sde", "fixed"),
    ("particle_vp_sde", "rollover"),
    ("rbf", "rollover"),
]


@pytest.mark.parametrize(("strategy", "allocator"), STRATEGIES)
@pytest.mark.parametrize("nfes", [10, 37, 120])
def test_the_nfe_budget_is_never_exceeded(
    velocity,  # noqa: F811
    digit_reward,  # noqa: F811
    strategy: str,
    allocator: str,
    nfes: int,
) -> None:
    results = solve_flow(
        build("strategy", strategy, nfes_per_sample=10),
        digit_problems([3, 8]),
        model=velocity,
        reward=digit_reward,
        allocator=build("allocator", allocator, FlowBudget(nfes=nfes)),
    )
    spent = sum(r.spent.nfes for r in results)
    assert all(r.spent.nfes <= nfes for r in results)
    assert velocity.rows == spent  # the network's own count: nothing ran outside the ledger
    assert all(r.image is not None and r.reward is not None for r in results)
    # the sample sets use what they can pay for: whole trajectories of 10 NFEs
    assert all(r.spent.nfes >= nfes - nfes % 10 for r in results)


def test_a_particle_count_above_the_budget_is_lowered(velocity, digit_reward) -> None:  # noqa: F811
    (r,) = solve_flow(
        build("strategy", "particle_sde", nfes_per_sample=10, n=50),
        digit_problems([1]),
        model=velocity,
        reward=digit_reward,
        allocator=build("allocator", "fixed", FlowBudget(nfes=30)),
    )
    assert r.spent.nfes == 30 and r.trace["n"] == 3


def test_the_ledger_refuses_before_the_network_runs(velocity, digit_reward) -> None:  # noqa: F811
    from ttc.flow.context import FlowContext
    from ttc.flow.sampler import Schedule

    ledger = FlowLedger(FlowBudget(nfes=5), flops_per_nfe=velocity.flops_per_nfe)
    ctx = FlowContext(
        digit_problems([2])[0], model=velocity, reward=digit_reward, ledger=ledger, seed=0
    )
    z = np.zeros((4, 64))
    ctx.evaluate(Schedule("linear"), z, 0.0, step=0)
    with pytest.raises(BudgetExceeded, match="nfes"):
        ctx.evaluate(Schedule("linear"), z, 0.1, step=1)
    assert (ledger.spent.nfes, velocity.rows) == (4, 4)
    assert velocity.flops_per_nfe > 0
    assert ledger.spent.flops == pytest.approx(4 * velocity.flops_per_nfe)


def test_rollover_moves_unused_nfes_to_later_steps(velocity, digit_reward) -> None:  # noqa: F811
    budget, steps = 100, 10
    (r,) = solve_flow(
        build("strategy", "rbf", nfes_per_sample=steps),
        digit_problems([5]),
        model=velocity,
        reward=digit_reward,
        allocator=build("allocator", "rollover", FlowBudget(nfes=budget)),
    )
    allowances = {int(k): v for k, v in r.budget["policy"]["allowances"].items()}
    used = {int(k): v for k, v in r.spent.as_dict()["nfes_by_step"].items()}
    before = 0
    for k in range(steps):
        # timestep k may bring the spending up to budget * (k + 1) / steps
        assert allowances[k] == budget * (k + 1) // steps - before
        assert 1 <= used[k] <= allowances[k]
        before += used[k]
    share = budget // steps
    early = [k for k in range(steps - 1) if used[k] < allowances[k]]
    assert early, "no timestep found a better particle early"
    # what the early stops left is available later: some later allowance exceeds a share
    assert max(allowances[k] for k in range(early[0] + 1, steps)) > share
    assert r.spent.nfes == budget  # the last timestep spends the rest


def test_rbf_needs_the_rollover_allocator(velocity, digit_reward) -> None:  # noqa: F811
    with pytest.raises(ConfigError, match="the allocator sets none"):
        solve_flow(
            build("strategy", "rbf"),
            digit_problems([5]),
            model=velocity,
            reward=digit_reward,
            allocator=build("allocator", "fixed", FlowBudget(nfes=50)),
        )


def test_resampling_is_unbiased() -> None:
    from ttc.strategies.flow.common import softmax_weights
    from ttc.strategies.flow.particles import resample

    rewards = np.array([0.9, 0.1, 0.5, 0.45, 0.0, 0.7])
    w = softmax_weights(rewards, 0.2)
    n, trials = len(rewards), 4000
    for scheme in ("multinomial", "systematic", "residual"):
        rng = random.Random(7)
        counts = np.zeros(n)
        for _ in range(trials):
            for a in resample(rewards, temperature=0.2, scheme=scheme, rng=rng):
                counts[a] += 1
        mean = counts / trials
        # copies of particle i: n * w_i in expectation; 5 standard errors of the
        # multinomial's per-trial spread (the others have less)
        se = np.sqrt(n * w * (1 - w) / trials)
        assert np.all(np.abs(mean - n * w) < 5 * se + 1e-9), (scheme, mean, n * w)
    assert w.argmax() == 0 and np.isclose(w.sum(), 1.0)


def test_unknown_names_and_bad_options_fail_in_one_line() -> None:
    with pytest.raises(UnknownNameError, match="rbf"):
        build("strategy", "rbf_typo")
    with pytest.raises(ConfigError, match="schedule"):
        build("strategy", "particle_sde", schedule="cosine")
    with pytest.raises(ConfigError, match="no option 'particles'"):
        build("strategy", "particle_sde", particles=4)
