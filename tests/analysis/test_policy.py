"""The per-difficulty policy: bins, per-bin choices, the saving over best-of-N, and the
policy file in the format the `difficulty` allocator reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from ttc.analysis import load
from ttc.analysis.policy import (
    assign_bins,
    bin_edges,
    bon_cost_to_reach,
    candidates,
    difficulty,
    dump_policy,
    evaluate,
    fit_policy,
    policy_document,
)
from ttc.analysis.synthetic import SyntheticEnv
from ttc.errors import ConfigError
from ttc.store import Store

_CACHE: dict[str, object] = {}


@pytest.fixture
def spread_store(tmp_path_factory: pytest.TempPathFactory):
    """A real difficulty spread: three quarters easy (p ~ 0.9), a quarter hard (p ~ 0.15),
    one best-of-32 run and a best-of-4 run, through the real Store API."""
    if "store" not in _CACHE:
        url = f"sqlite:///{tmp_path_factory.mktemp('policy') / 'spread.db'}"
        env = SyntheticEnv.spread(
            240, seed=5, centres=(0.9, 0.9, 0.9, 0.15), noise=0.05, distractors=8, dominant=0.2
        )
        store = Store(url)
        env.write_run(store, strategy="best_of_n", n=32)
        env.write_run(store, strategy="best_of_n", n=4)
        store.close()
        tables = load(url)
        pids = sorted(tables.results["problem_id"].unique())
        perm = list(np.random.default_rng(0).permutation(pids))
        _CACHE["store"] = (url, env, tables, sorted(perm[:120]), sorted(perm[120:]))
    return _CACHE["store"]


def test_quantile_bins() -> None:
    values = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    edges = bin_edges(values, 3)
    assert edges[-1] == math.inf and len(edges) == 3
    bins = assign_bins(values, edges)
    assert np.bincount(bins).tolist() == [2, 2, 2]
    # a discrete measure collapses equal edges instead of making empty bins
    assert bin_edges(np.array([0.0] * 8 + [0.5] * 2), 4) == [0.0, math.inf]
    assert assign_bins(np.array([np.nan]), [0.5, math.inf]).tolist() == [1]


def test_best_of_n_cost_to_reach_interpolates() -> None:
    import pandas as pd

    bon = pd.DataFrame({"cost": [100.0, 200.0, 400.0], "value": [0.5, 0.7, 0.8]})
    assert bon_cost_to_reach(bon, 0.6) == pytest.approx(150.0)
    assert bon_cost_to_reach(bon, 0.4) == pytest.approx(100.0)
    assert math.isnan(bon_cost_to_reach(bon, 0.9))


def test_oracle_difficulty_is_one_minus_pass_at_1(spread_store) -> None:
    _, env, tables, _, _ = spread_store
    diff = difficulty(tables, "oracle").set_index("problem_id")["difficulty"]
    truth = 1 - env.p
    got = diff.reindex(env.problem_ids).to_numpy()
    assert np.corrcoef(got, truth)[0, 1] > 0.9
    # predicted: the probe's mean reward separates easy from hard
    score = difficulty(tables, "score", probe=4).set_index("problem_id")
    easy = env.p > 0.5
    s = score["difficulty"].reindex(env.problem_ids).to_numpy()
    assert s[easy].mean() > s[~easy].mean() + 0.05
    assert (score["probe_samples"] == 4).all()


def test_policy_saves_over_best_of_n_on_another_split(spread_store) -> None:
    _, _, tables, fit_ids, test_ids = spread_store
    cands = candidates(tables)
    fit = fit_policy(tables, problems=fit_ids, measure="score", unit="tokens", bins=3, cands=cands)
    # in the fitted split, with the most budget, the policy beats best-of-N (below the
    # probe's cost it cannot: every problem pays for the probe)
    over = fit.overall.iloc[-1]
    assert over["accuracy"] >= over["best_of_n_accuracy"]
    assert over["saving"] > 1.0 or math.isnan(over["saving"])
    # easy bins get few samples, the hardest bin the most
    top = fit.choice()
    cost = top.set_index("bin")["cost"]
    assert cost.iloc[-1] < cost.iloc[0]  # bins run by increasing mean reward: hard first
    # on the other split, at equal accuracy, best-of-N needs more tokens
    values = cands.values[cands.values["problem_id"].isin(test_ids)]
    meta = cands.meta.set_index("candidate")
    per = values.groupby("candidate").agg(value=("value", "mean"), cost=("tokens", "mean"))
    bon = per[per.index.map(meta["strategy_name"]) == "best_of_n"]
    savings = []
    for level in fit.levels:
        got = evaluate(fit, tables, test_ids, level=level)
        need = bon_cost_to_reach(bon, got["accuracy"])
        if need == need:
            savings.append(need / got["cost"])
    assert max(savings) >= 1.5


def test_policy_document_has_the_allocator_format(spread_store, tmp_path: Path) -> None:
    url, _, tables, fit_ids, _ = spread_store
    fit = fit_policy(tables, problems=fit_ids, measure="agreement", unit="samples", bins=3)
    doc = policy_document(fit, store=url, runs=tables.run_ids, max_tokens=256)
    for name in ("policy.yaml", "policy.json"):
        path = tmp_path / name
        dump_policy(doc, str(path))
        back = (
            OmegaConf.to_container(OmegaConf.load(path))
            if name.endswith(".yaml")
            else json.loads(path.read_text())
        )
        assert back["ttc_policy"] == 1
        assert back["measure"] == "agreement"
        assert back["probe"] == {"samples": 4, "max_tokens": 256}
        ups = [float(b["up_to"]) for b in back["bins"]]
        assert ups == sorted(ups) and ups[-1] == math.inf
        for b in back["bins"]:
            assert set(b) == {"name", "up_to", "strategy", "budget"}
            assert b["strategy"]["name"] in ("best_of_n", "self_consistency")
            assert b["strategy"]["n"] >= 1
            assert set(b["budget"]) <= {
                "samples",
                "tokens",
                "prefill_tokens",
                "reward_tokens",
                "reward_calls",
                "flops",
                "eflops",
                "seconds",
            }
        assert back["source"]["runs"] == tables.run_ids
    # the per-bin choices in the file are those of the table
    choice = fit.choice()
    meta = fit.candidates.meta.set_index("candidate")
    for b, row in zip(doc["bins"], choice.itertuples(), strict=True):
        assert b["strategy"] == meta.loc[row.candidate, "strategy"]


def test_oracle_policies_are_not_written(spread_store) -> None:
    _, _, tables, fit_ids, _ = spread_store
    fit = fit_policy(tables, problems=fit_ids, measure="oracle", unit="tokens")
    with pytest.raises(ConfigError, match="known at test time"):
        policy_document(fit)


def test_every_quantile_bin_holds_problems_when_the_top_value_is_common() -> None:
    """Agreement of a 4-sample probe takes 4 values; on the real sweep half the problems
    sat at the top one (0.75), the top quantile edge equalled it, the last bin (0.75, inf]
    was empty and the policy file's last bin ended at 0.75 instead of .inf."""
    from ttc.analysis.policy import assign_bins, bin_edges

    values = np.array([0.0] * 5 + [0.25] * 6 + [0.5] * 8 + [0.75] * 20)
    for bins in (2, 3, 4, 5):
        edges = bin_edges(values, bins)
        assert edges[-1] == float("inf")
        held = np.bincount(assign_bins(values, edges), minlength=len(edges))
        assert (held > 0).all(), (bins, edges, held)


@pytest.mark.parametrize("other_prompt", [False, True])
def test_a_policy_chooses_only_runs_it_can_reproduce(tmp_path: Path, other_prompt: bool) -> None:
    """A policy sets each bin's strategy and budget, nothing else: a run on another task
    config (here: few-shot examples in the prompt), backend or reward cannot be what a
    bin gets, however well it did. Found on the real sweep: the policy gave the hard bin
    the cascade's few-shot run."""
    url = f"sqlite:///{tmp_path / 'mixed.db'}"
    env = SyntheticEnv.spread(90, seed=2, centres=(0.9, 0.3, 0.1))
    store = Store(url)
    env.write_run(store, strategy="best_of_n", n=2)
    env.write_run(store, strategy="best_of_n", n=4)
    env.write_run(store, strategy="self_consistency", n=4)
    odd = env.write_run(
        store, strategy="best_of_n", n=32, task={"few_shot": 2} if other_prompt else None
    )
    store.close()
    tables = load(url)
    fit = fit_policy(tables, measure="score", unit="tokens", bins=2)
    run_of = fit.candidates.meta.set_index("candidate")["run_id"]
    chosen = set(fit.per_bin["candidate"].map(run_of))
    if other_prompt:
        assert odd not in chosen and odd not in set(fit.candidates.meta["run_id"])
        assert any("task.few_shot=2" in note and odd in note for note in fit.notes)
    else:
        assert odd in chosen  # the most accurate run, at the top budget level
        assert not fit.notes
