"""Property: every built-in strategy, under a random limit in any budget unit, on a
batched or a self-batching backend (the prompt counted per sample, prefix-cache hits
reported), spends no more than the limit in any enforced unit, for every problem.
`seconds` may overshoot by at most one call (wall time cannot be reserved): the
simulated clock makes that exact.

The default profile draws a few examples per strategy and unit (fast, derandomised);
`HYPOTHESIS_PROFILE=thorough` draws many (slow)."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import sim
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_strategy_budgets import STRATEGIES

from ttc import testing
from ttc.budget import INT_UNITS, UNITS, Budget, Unit
from ttc.interfaces import Backend

settings.register_profile(
    "default",
    max_examples=5,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("thorough", max_examples=60, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

SECONDS_PER_CALL = 0.25
BACKENDS: dict[str, Callable[[], Backend]] = {
    "batched": lambda: sim.SimBackend(sim.SimBackendConfig(seconds_per_call=SECONDS_PER_CALL)),
    "self_batching": lambda: sim.SelfBatchingSimBackend(
        sim.SimBackendConfig(seconds_per_call=SECONDS_PER_CALL)
    ),
}
# Ranges wide enough to cut searches at every stage (first call refused .. unhindered).
RANGES: dict[Unit, tuple[float, float]] = {
    Unit.SAMPLES: (0, 40),
    Unit.TOKENS: (0, 1500),
    Unit.PREFILL_TOKENS: (0, 4000),
    Unit.REWARD_TOKENS: (0, 400),
    Unit.REWARD_CALLS: (0, 12),
    Unit.FLOPS: (0, 4e9),
    Unit.EFLOPS: (0, 6e11),
    Unit.SECONDS: (0, 4.0),
}


def limit_in(unit: Unit) -> st.SearchStrategy[float]:
    lo, hi = RANGES[unit]
    if unit in INT_UNITS:
        return st.integers(int(lo), int(hi)).map(float)
    return st.floats(lo, hi, allow_nan=False)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("unit", UNITS, ids=str)
@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_spent_never_exceeds_the_limit(name: str, unit: Unit, backend: str) -> None:
    @given(
        limit=limit_in(unit),
        other=st.sampled_from(UNITS),
        other_limit=st.floats(0.2, 1.0),
        seed=st.integers(0, 2**16),
        spread=st.integers(0, 3),
    )
    def check(limit: float, other: Unit, other_limit: float, seed: int, spread: int) -> None:
        limits: dict[str, float] = {unit.value: limit}
        if other != unit:  # sometimes a second unit binds too, at a share of its range
            lo, hi = RANGES[other]
            value = lo + other_limit * (hi - lo)
            limits[other.value] = int(value) if other in INT_UNITS else value
        if unit in INT_UNITS:
            limits[unit.value] = int(limit)
        budget = Budget(**limits)  # type: ignore[arg-type]
        problems = sim.make_problems(3, steps=2, q=0.7, spread=spread, detour=1, seed=seed)
        reward = sim.SimReward(sim.SimRewardConfig(noise=0.1))
        out = testing.solve_all(
            STRATEGIES[name](),
            problems,
            backend=BACKENDS[backend](),
            task=sim.SimTask(sim.SimTaskConfig()),
            reward=reward,
            budget=budget,
            seed=seed,
        )
        for o in out:
            for u, lim in budget.limits().items():
                if lim is None:
                    continue
                spent = getattr(o.spent, u)
                if u == Unit.SECONDS:
                    # every call starts with time left; the last may end past the limit
                    assert spent <= lim + SECONDS_PER_CALL + 1e-9, (name, u, lim, spent)
                else:
                    assert spent <= lim + 1e-6 * max(lim, 1.0), (name, u, lim, spent)

    check()


def test_the_property_covers_every_built_in_strategy() -> None:
    from ttc.registry import get_registry

    registry = get_registry()
    builtin = {
        name
        for name, entry in registry.entries["strategy"].items()
        if registry.plugins[entry.plugin].builtin
    }
    missing = sorted(builtin - set(STRATEGIES))
    assert not missing, (
        f"built-in strategies {missing} are not in the budget property: add each to "
        "STRATEGIES in tests/strategies/test_strategy_budgets.py"
    )
