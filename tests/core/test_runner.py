"""The orchestrator end to end on the test doubles: budgets, batching, failures, store."""

from __future__ import annotations

import pytest

from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store

import doubles
from conftest import DOUBLES


def run_job(store_url: str, *overrides: str):
    cfg = compose([*DOUBLES, f"store.url={store_url}", *overrides])
    return Runner(cfg).run()


def test_tight_token_budget_is_never_exceeded_and_refusals_are_recorded(store_url: str) -> None:
    limit = 29  # the first step spends 26-28 tokens; the second needs >= 4
    outcome = run_job(
        store_url,
        "strategy=beam_search",
        "strategy.beam_width=4",
        "strategy.expansions=2",
        f"budget.tokens={limit}",
        "task.n_problems=8",
    )
    store = Store(store_url)
    results = store.results(outcome.run_id)
    assert len(results) == 8
    for r in results:
        assert 0 < r["tokens"] <= limit
    refused = [c for c in store.calls(outcome.run_id) if c["status"] == "refused"]
    assert refused, "a budget that tight must refuse some call"
    assert all("tokens" in c["error"] for c in refused)
    assert outcome.totals["refused_calls"] == len(refused)


@pytest.mark.parametrize("unit,limit", [("samples", 6), ("flops", 2e9)])
def test_other_units_are_enforced(store_url: str, unit: str, limit: float) -> None:
    outcome = run_job(store_url, "strategy=beam_search", f"budget.{unit}={limit}")
    for r in Store(store_url).results(outcome.run_id):
        assert r[unit] <= limit


def test_cross_problem_batching_gathers_the_steps_of_32_problems(store_url: str) -> None:
    doubles.BATCH_SIZES.clear()
    outcome = run_job(
        store_url,
        "strategy=beam_search",
        "strategy.beam_width=2",
        "strategy.expansions=1",
        "task.n_problems=32",
        "run.concurrency=32",
    )
    sizes = list(doubles.BATCH_SIZES)
    assert sum(sizes) >= 32
    mean = sum(sizes) / len(sizes)
    assert mean > 8, sizes
    assert outcome.batch_stats.sizes == sizes


def test_one_failing_problem_fails_alone(store_url: str) -> None:
    outcome = run_job(
        store_url,
        "strategy=best_of_n",
        "task.n_problems=6",
        "task.fail_ids=[p002]",
        "backend.fail_marker=FAIL",
    )
    results = {r["problem_id"]: r for r in Store(store_url).results(outcome.run_id)}
    assert len(results) == 6
    assert results["p002"]["status"] == "error"
    assert "scripted failure" in results["p002"]["error"]
    assert all(r["status"] == "ok" for pid, r in results.items() if pid != "p002")
    assert outcome.status == "finished"
    assert outcome.totals["errors"] == 1


def test_the_search_tree_and_calls_are_stored(store_url: str) -> None:
    outcome = run_job(store_url, "strategy=beam_search", "task.n_problems=2")
    store = Store(store_url)
    nodes = store.nodes(outcome.run_id, "p000")
    ids = {n["node_id"] for n in nodes}
    assert 0 in ids
    assert all(n["parent_id"] in ids for n in nodes if n["node_id"] != 0)
    assert sum(n["selected"] for n in nodes) == 1
    assert any(n["finished"] for n in nodes)
    assert all(n["score"] is not None for n in nodes if n["node_id"] != 0)
    calls = store.calls(outcome.run_id, "p000")
    kinds = {c["kind"] for c in calls}
    assert kinds == {"generate", "score"}
    gen_tokens = sum(c["completion_tokens"] for c in calls if c["kind"] == "generate")
    (result,) = [r for r in store.results(outcome.run_id) if r["problem_id"] == "p000"]
    assert gen_tokens == result["tokens"]
    assert result["flops"] > 0


def test_best_of_n_with_exact_reward_picks_a_correct_sample_when_one_exists(
    store_url: str,
) -> None:
    outcome = run_job(store_url, "strategy=best_of_n", "strategy.n=8", "task.n_problems=12")
    for r in Store(store_url).results(outcome.run_id):
        assert r["correct"] == r["oracle_correct"]
