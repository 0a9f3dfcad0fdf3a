"""`cascade` in the simulated environment: a small and a large sim model of different
skill on the same problems, each unsure (high top-k entropy) on the steps it tends to
get wrong.

Claims: the large model's share of the solution falls as the threshold rises, and the
accuracy moves between the small model's alone (high threshold) and the large model's
alone (threshold 0); every call is charged to the ledger at its model's own shape."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import sim

from ttc import testing
from ttc.budget import Budget
from ttc.simulation import SimBackend, SimBackendConfig
from ttc.strategies.cascade import Cascade, CascadeConfig, rolling_peak
from ttc.types import ModelArchitecture

K = 8  # top-k alternatives: entropies lie in [0, ln 8]
SMALL_Q, LARGE_Q = 0.35, 0.97
PROBLEMS = sim.make_problems(120, steps=3, q=0.5, seed=91)


class LargeSim(SimBackend):
    """The large model: the same policy family with more skill, a bigger shape."""

    @property
    def architecture(self) -> ModelArchitecture:
        return ModelArchitecture(
            params=8_000_000, layers=8, hidden=256, heads=8, kv_heads=8, vocab=256
        )


def cascade(threshold: float, **kw: object) -> Cascade:
    return Cascade(
        CascadeConfig(
            threshold=threshold,
            window=1,
            top_logprobs=K,
            chunk_tokens=64,
            large_tokens=64,
            step_delimiter="\n\n",
            max_tokens=400,
            **kw,  # type: ignore[arg-type]
        )
    )


def run(threshold: float, problems: list = PROBLEMS, budget: Budget | None = None) -> list:
    return testing.solve_all(
        cascade(threshold),
        problems,
        backend=SimBackend(SimBackendConfig(q=SMALL_Q)),
        models={"large": LargeSim(SimBackendConfig(q=LARGE_Q))},
        task=sim.SimTask(sim.SimTaskConfig()),
        budget=budget,
    )


def share(out: list) -> float:
    small = sum(o.solution.trace["small_tokens"] for o in out)
    large = sum(o.solution.trace["large_tokens"] for o in out)
    return large / (small + large)


def test_large_share_falls_as_the_threshold_rises_and_accuracy_interpolates() -> None:
    thresholds = [0.0, 0.6, 1.2, 1.6, math.log(K) + 0.1]
    runs = {t: run(t) for t in thresholds}
    shares = [share(runs[t]) for t in thresholds]
    acc = [sim.accuracy(runs[t]) for t in thresholds]
    assert shares[0] > 0.97 and shares[-1] == 0.0
    assert all(a >= b for a, b in itertools.pairwise(shares)), shares
    assert shares[1] > shares[3] + 0.2  # the threshold really moves the split
    large_alone, small_alone = acc[0], acc[-1]
    n = len(PROBLEMS)
    assert large_alone > small_alone + 0.3, acc
    # each model alone: its accuracy in this environment (a right answer needs all steps)
    for a, q in ((large_alone, LARGE_Q), (small_alone, SMALL_Q)):
        expected = (((q**2 - 1) / (2 * math.log(q))) ** 3) if q < 1 else 1.0
        assert abs(a - expected) < sim.binomial_tolerance(expected, n) + 0.05, (a, expected)
    tol = sim.binomial_tolerance(0.5, n)
    for a in acc[1:-1]:
        assert small_alone - tol <= a <= large_alone + tol, acc
    # the small model is unsure where it errs: handing those steps over buys most of the
    # large model's accuracy for a fraction of its tokens
    middle = thresholds.index(1.2)
    assert shares[middle] < 0.8
    assert acc[middle] > small_alone + 0.5 * (large_alone - small_alone), (acc, shares)


def test_both_models_are_charged_and_recorded_per_node() -> None:
    out = run(1.2, PROBLEMS[:20])
    switched = 0
    for o in out:
        nodes = [b for b in o.ctx.branches.values() if b.parent_id is not None]
        by_model = {"policy": 0.0, "large": 0.0}
        for b in nodes:
            by_model[b.extra["model"]] += b.extra["flops"]
            assert b.extra["flops"] > 0
        # every call's FLOPs, of both models (set-aside chunks included), on the ledger
        assert math.isclose(o.spent.flops, sum(by_model.values()), rel_tol=1e-9)
        assert math.isclose(sum(c.flops for c in o.ctx.calls), o.spent.flops, rel_tol=1e-9)
        trace = o.solution.trace
        assert math.isclose(trace["large_flops"], by_model["large"], rel_tol=1e-9)
        # tokens of both models count against the budget's `tokens`
        assert o.spent.tokens == sum(b.new_tokens for b in nodes)
        leaf = o.solution.branch
        assert leaf is not None and leaf.extra["cascade"]["switches"] == trace["switches"]
        set_aside = [b for b in nodes if b.extra.get("set_aside")]
        assert len(set_aside) == trace["switches"] and not any(b.finished for b in set_aside)
        switched += trace["switches"]
    assert switched > 0
    # a large-model token costs more than a small-model one (its shape is larger)
    large_per_token = sum(o.solution.trace["large_flops"] for o in out) / max(
        sum(o.solution.trace["large_tokens"] for o in out), 1
    )
    small_per_token = sum(o.solution.trace["small_flops"] for o in out) / max(
        sum(o.solution.trace["small_tokens"] + o.solution.trace["set_aside_tokens"] for o in out),
        1,
    )
    assert large_per_token > 3 * small_per_token


@pytest.mark.parametrize("budget", [Budget(tokens=120), Budget(flops=3e8), Budget(samples=3)])
def test_stays_within_the_budget_with_both_models(budget: Budget) -> None:
    for o in run(1.2, PROBLEMS[:10], budget=budget):
        for unit, limit in budget.limits().items():
            if limit is not None:
                assert getattr(o.spent, unit) <= limit


def test_rolling_peak() -> None:
    assert rolling_peak([], (0.0, 2.0, 0.0), 1) == 2.0
    assert rolling_peak([], (0.0, 2.0, 0.0), 2) == 1.0
    assert rolling_peak([3.0], (0.0,), 2) == 1.5  # the window reaches into the history
    assert rolling_peak([3.0, 3.0], (0.0,), 1) == 0.0


class TestCascadeConformance(testing.StrategyConformance):
    # the scripted double restarts a step it was cut inside, so chunks end at steps
    strategy = Cascade(CascadeConfig(max_tokens=120, n=2, step_delimiter="\n\n", chunk_tokens=64))


def test_runs_through_the_runner_with_a_second_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ttc.launch import compose
    from ttc.registry import reset_registry
    from ttc.runner import Runner
    from ttc.store import Store

    monkeypatch.setenv("TTC_PLUGIN_MODULES", "doubles,sim")
    reset_registry()
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    cfg = compose(
        [
            "backend=sim",
            "backend.q=0.35",
            "task=sim",
            "task.n_problems=4",
            "reward=none",
            "strategy=cascade",
            "strategy.threshold=1.2",
            "strategy.window=1",
            "strategy.top_logprobs=8",
            "strategy.chunk_tokens=64",
            "strategy.large_tokens=64",
            "strategy.step_delimiter='\n\n'",
            "strategy.large_model=null",
            "+strategy.large_backend.q=0.97",  # the run's sim backend, more skilled
            "budget.tokens=3000",
            "run.progress=false",
            f"store.url={url}",
        ]
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    store = Store(url)
    results = store.results(outcome.run_id)
    assert len(results) == 4 and all(r["status"] == "ok" for r in results)
    models = set()
    for r in results:
        nodes = store.nodes(outcome.run_id, r["problem_id"])
        models |= {n["extra"].get("model") for n in nodes if n["node_id"]}
        calls = store.calls(outcome.run_id, r["problem_id"])
        assert math.isclose(sum(c["flops"] for c in calls), r["flops"], rel_tol=1e-6)
        (leaf,) = [n for n in nodes if n["selected"]]
        assert "cascade" in leaf["extra"]
    assert models == {"policy", "large"}
