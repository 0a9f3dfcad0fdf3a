"""Policy round trip through the real runner: fitted on one split of problems, written by
the analysis, read by `allocator=difficulty allocator.policy=<file>` on another split."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from ttc.analysis import load, points
from ttc.analysis.policy import bon_cost_to_reach, dump_policy, fit_policy, policy_document
from ttc.launch import compose
from ttc.registry import reset_registry
from ttc.runner import Runner
from ttc.store import Store

ENV = [
    "backend=sim",
    "task=spread",
    "reward=sim",
    "reward.noise=0.2",
    "task.n_problems=240",
    "run.progress=false",
    "run.concurrency=64",
]


@pytest.fixture
def spread_plugin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTC_PLUGIN_MODULES", "doubles,spread_env")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    reset_registry()


def _run(store_url: str, *overrides: str) -> str:
    outcome = Runner(compose([*ENV, f"store.url={store_url}", *overrides])).run()
    return outcome.run_id


def test_policy_round_trip_through_the_difficulty_allocator(
    spread_plugin: None, store_url: str, tmp_path: Path
) -> None:
    fit_run = _run(store_url, "task.split=fit", "strategy=best_of_n", "strategy.n=32")
    fitted = load(store_url, [fit_run])
    fit = fit_policy(fitted, measure="agreement", unit="tokens", bins=3, probe=4)
    doc = policy_document(fit, store=store_url, runs=[fit_run], max_tokens=256)
    path = tmp_path / "policy.yaml"
    dump_policy(doc, str(path))

    policy_run = _run(
        store_url,
        "task.split=test",
        "strategy=best_of_n",
        "allocator=difficulty",
        f"allocator.policy={path}",
    )
    base_run = _run(store_url, "task.split=test", "strategy=best_of_n", "strategy.n=32")
    store = Store(store_url)
    results = store.results(policy_run)
    assert len(results) == 120
    # every problem got the strategy of the bin its measured difficulty falls in
    for r in results:
        chosen = r["budget"]["policy"]
        d = chosen["difficulty"]
        want = next(b for b in doc["bins"] if d <= b["up_to"])
        assert chosen["bin"] == want["name"]
        assert chosen["strategy"]["name"] == want["strategy"]["name"]
        assert chosen["strategy"]["n"] == want["strategy"]["n"]
        assert r["samples"] >= min(want["strategy"]["n"], 4)
    used = {r["budget"]["policy"]["bin"] for r in results}
    assert len(used) >= 2  # the spread puts problems in more than one bin

    # equal accuracy: what best-of-N (best@k of the stored samples) needs to match it
    tables = load(store_url, [policy_run, base_run])
    pts = points(tables, metrics=("best@k",), n_boot=100)
    policy_acc = pts[(pts["run_id"] == policy_run) & (pts["metric"] == "accuracy")].iloc[0]
    bon = pts[(pts["run_id"] == base_run) & (pts["metric"] == "best@k")]
    need = bon_cost_to_reach(bon.rename(columns={"cost_tokens": "cost"}), policy_acc["value"])
    saving = need / policy_acc["cost_tokens"] if not math.isnan(need) else math.inf
    print(
        f"policy accuracy {policy_acc['value']:.3f} at {policy_acc['cost_tokens']:.0f} "
        f"tokens; best-of-N needs {need:.0f}: saving {saving:.2f}x"
    )
    # a real difficulty spread: at equal accuracy the policy uses at most half the tokens
    assert saving >= 2.0
