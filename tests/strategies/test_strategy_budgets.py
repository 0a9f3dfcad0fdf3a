"""Every strategy stays within every budget unit a test sets, survives failing requests,
and leaves its whole tree (with the chosen branch selected) in the store."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sim

from ttc.budget import Budget
from ttc.interfaces import Strategy
from ttc.strategies.a_star import AStar, AStarConfig
from ttc.strategies.adaptive_consistency import AdaptiveConsistency, AdaptiveConsistencyConfig
from ttc.strategies.beam_search import BeamSearch, BeamSearchConfig
from ttc.strategies.best_of_majority import BestOfMajority, BestOfMajorityConfig
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
from ttc.strategies.cascade import Cascade, CascadeConfig
from ttc.strategies.deepconf import DeepConf, DeepConfConfig
from ttc.strategies.dvts import Dvts, DvtsConfig
from ttc.strategies.particle_filter import ParticleFilter, ParticleFilterConfig
from ttc.strategies.particle_gibbs import ParticleGibbs, ParticleGibbsConfig
from ttc.strategies.rebase import Rebase, RebaseConfig
from ttc.strategies.revision import Revision, RevisionConfig
from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig
from ttc.strategies.solve_detect_verify import SolveDetectVerify, SolveDetectVerifyConfig

STRATEGIES: dict[str, Callable[[], Strategy]] = {
    "best_of_n": lambda: BestOfN(BestOfNConfig(n=6)),
    "best_of_n_stepwise": lambda: BestOfN(BestOfNConfig(n=4, step_delimiter="\n\n")),
    "self_consistency": lambda: SelfConsistency(SelfConsistencyConfig(n=6)),
    "best_of_majority": lambda: BestOfMajority(BestOfMajorityConfig(n=6, k=2)),
    "adaptive_consistency": lambda: AdaptiveConsistency(AdaptiveConsistencyConfig()),
    "adaptive_consistency_rounds": lambda: AdaptiveConsistency(
        AdaptiveConsistencyConfig(cancel=False)
    ),
    "deepconf": lambda: DeepConf(DeepConfConfig(warmup=2, max_samples=6)),
    "beam_search": lambda: BeamSearch(BeamSearchConfig(beam_width=2, expansions=2)),
    "dvts": lambda: Dvts(DvtsConfig(n=4, width=2)),
    "particle_filter": lambda: ParticleFilter(ParticleFilterConfig(particles=4)),
    "particle_gibbs": lambda: ParticleGibbs(ParticleGibbsConfig(particles=3, iterations=2)),
    "a_star": lambda: AStar(AStarConfig(expansions=2)),
    "rebase": lambda: Rebase(RebaseConfig(width=4)),
    # two models (the second a twin of the backend); a low threshold makes it switch
    "cascade": lambda: Cascade(
        CascadeConfig(
            n=2,
            large_model=None,
            threshold=0.05,
            step_delimiter="\n\n",
            chunk_tokens=64,
            large_tokens=64,
        )
    ),
    "solve_detect_verify": lambda: SolveDetectVerify(SolveDetectVerifyConfig(rounds=2)),
    "revision": lambda: Revision(RevisionConfig(attempts=4, chain_length=2, select="verifier")),
}

BUDGETS = [
    Budget(tokens=150),
    Budget(samples=5),
    Budget(reward_calls=2),
    Budget(prefill_tokens=400),
    Budget(flops=2e8),
    Budget(tokens=400, samples=9, reward_calls=4, reward_tokens=200),
]
PROBLEMS = sim.make_problems(8, steps=3, q=0.7, seed=71)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_stays_within_every_unit_of_every_budget(name: str) -> None:
    for budget in BUDGETS:
        out = sim.solve_all(STRATEGIES[name](), PROBLEMS, sim.Env(budget=budget))
        for o in out:
            for unit, limit in budget.as_dict().items():
                if limit is not None:
                    assert getattr(o.spent, unit) <= limit, (name, unit, budget)
            # budget exhaustion ends the search with an answer when anything was drawn
            if any(b.step_texts for b in o.ctx.branches.values() if b.finished):
                assert o.solution.trace.get("ended_by") != "error"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_failing_requests_are_dropped_and_the_search_goes_on(name: str) -> None:
    env = sim.Env(backend=sim.SimBackendConfig(fail_rate=0.2), record_errors=True)
    problems = sim.make_problems(24, steps=3, q=0.7, seed=73)
    out = sim.solve_all(STRATEGIES[name](), problems, env)
    failed = sum(o.ctx.failed_branches for o in out)
    answered = sum(o.solution.answer is not None for o in out)
    assert failed > 0
    # 20% of requests fail: a search that drops them answers most problems; one that let
    # a single failure end it would answer far fewer after its several calls.
    assert answered >= 0.6 * len(out)
    for o in out:
        if "raised" in o.solution.trace:  # only when the failure left nothing to answer from
            assert not any(b.step_texts for b in o.ctx.branches.values())
    for o in out:
        assert any(c.status == "error" for c in o.ctx.calls) == (o.ctx.failed_branches > 0)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_a_backend_that_goes_away_ends_the_search_with_what_exists(name: str) -> None:
    (problem,) = sim.make_problems(1, steps=3, q=0.9, seed=72)
    env = sim.Env(backend=sim.SimBackendConfig(fail_after_calls=2))
    (o,) = sim.solve_all(STRATEGIES[name](), [problem], env)
    drawn = [b for b in o.ctx.branches.values() if b.step_texts]
    assert drawn  # two calls succeeded before the backend went away
    if o.solution.trace.get("ended_by") == "backend_error":
        assert o.solution.branch is not None and o.solution.branch.id in o.ctx.branches


@pytest.fixture
def sim_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttc.registry import reset_registry

    monkeypatch.setenv("TTC_PLUGIN_MODULES", "doubles,sim")
    reset_registry()


# (cascade runs through the runner with its second model in test_cascade.py)
@pytest.mark.parametrize(
    "name",
    sorted(
        n
        for n in STRATEGIES
        if n not in ("best_of_n_stepwise", "cascade", "adaptive_consistency_rounds")
    ),
)
def test_runs_through_the_runner_and_stores_its_tree(
    name: str, sim_plugin: None, tmp_path: Path
) -> None:
    from ttc.launch import compose
    from ttc.runner import Runner
    from ttc.store import Store

    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    cfg = compose(
        [
            "backend=sim",
            "task=sim",
            "task.n_problems=3",
            "reward=sim",
            f"strategy={name}",
            "budget.tokens=2000",
            "run.progress=false",
            f"store.url={url}",
        ]
    )
    outcome = Runner(cfg).run()
    assert outcome.status == "finished"
    store = Store(url)
    results = store.results(outcome.run_id)
    assert len(results) == 3 and all(r["status"] == "ok" for r in results)
    for r in results:
        nodes = store.nodes(outcome.run_id, r["problem_id"])
        ids = {n["node_id"] for n in nodes}
        assert len(nodes) > 1 and all(n["parent_id"] in ids for n in nodes if n["node_id"])
        if r["answer"] is not None:
            assert any(n["selected"] and n["answer"] == r["answer"] for n in nodes)


def test_a_failed_score_is_stored_with_its_error(sim_plugin: None, tmp_path: Path) -> None:
    from ttc.launch import compose
    from ttc.runner import Runner
    from ttc.store import Store

    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    cfg = compose(
        [
            "backend=sim",
            "task=sim",
            "task.n_problems=2",
            "reward=sim",
            "reward.fail_on=': err'",
            "strategy=beam_search",
            "budget.tokens=1500",
            "run.progress=false",
            f"store.url={url}",
        ]
    )
    outcome = Runner(cfg).run()
    store = Store(url)
    nodes = [
        n
        for r in store.results(outcome.run_id)
        for n in store.nodes(outcome.run_id, r["problem_id"])
    ]
    failed = [n for n in nodes if (n["extra"] or {}).get("score_error")]
    assert failed and all(n["score"] is None for n in failed)
    assert all("err" in n["text"] for n in failed)
