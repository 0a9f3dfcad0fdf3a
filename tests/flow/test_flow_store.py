"""A flow run in the run store: particles as nodes with their timestep and reward."""

from __future__ import annotations

import pytest
from flow_fixtures import digit_reward, flow_cache, tiny_net, velocity  # noqa: F401

from ttc.flow.budget import FlowBudget
from ttc.flow.registry import build, config_nodes
from ttc.flow.runner import digit_problems, record_flow_run, solve_flow


def test_particles_are_stored_as_nodes(velocity, digit_reward, store_url: str) -> None:  # noqa: F811
    from ttc.flow.reward import DigitJudge
    from ttc.store.store import open_store

    results = solve_flow(
        build("strategy", "particle_vp_sde", nfes_per_sample=5),
        digit_problems([4, 7]),
        model=velocity,
        reward=digit_reward,
        judge=DigitJudge(),
        allocator=build("allocator", "fixed", FlowBudget(nfes=20)),
    )
    store = open_store(store_url)
    run_id = record_flow_run(
        store, results, strategy="particle_vp_sde", model="tiny", config={"budget": {"nfes": 20}}
    )
    rows = store.results(run_id)
    assert [r["problem_id"] for r in rows] == ["digit-4-0", "digit-7-0"]
    assert rows[0]["budget"]["nfes"] == 20
    assert rows[0]["trace"]["spent"]["nfes"] == 20
    assert rows[0]["flops"] == pytest.approx(20 * velocity.flops_per_nfe)
    nodes = store.nodes(run_id, "digit-4-0")
    assert len(nodes) == len(results[0].particles)
    # 4 particles x 5 timesteps of states, then 4 finished samples
    assert sorted({n["step"] for n in nodes}) == [0, 1, 2, 3, 4, 5]
    finished = [n for n in nodes if n["finished"]]
    assert len(finished) == 4 and all(len(n["extra"]["image"]) == 64 for n in finished)
    (chosen,) = [n for n in nodes if n["selected"]]
    assert chosen["score"] == pytest.approx(results[0].reward)
    scored = [n for n in nodes if not n["finished"] and n["score"] is not None]
    assert scored and all(0.0 <= n["score"] <= 1.0 for n in scored)  # resampling rewards
    assert {c["kind"] for c in store.calls(run_id, "digit-4-0")} == {"generate", "score"}
    assert rows[0]["correct"] == results[0].success


def test_flow_schemas_reach_the_config_store() -> None:
    from hydra.core.config_store import ConfigStore

    from ttc.registry import get_registry, store_configs

    store_configs(get_registry())
    repo = ConfigStore.instance().repo
    assert "rbf.yaml" in repo["flow_strategy"] and "rollover.yaml" in repo["flow_allocator"]
    assert {(g, n) for g, n, _ in config_nodes()} >= {("flow_strategy", "best_of_n")}


def test_the_docs_example_runs(flow_cache, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    import sys

    from ttc.flow.model import TINY_SPEC

    from conftest import ROOT

    monkeypatch.syspath_prepend(str(ROOT / "docs" / "examples"))
    sys.modules.pop("flow_rbf", None)
    import flow_rbf

    results = flow_rbf.solve(TINY_SPEC, cache=str(flow_cache))
    assert len(results) == 10 and all(r.spent.nfes == 100 for r in results)
    assert "docs/examples/flow_rbf.py" in (ROOT / "docs" / "flow.md").read_text()
