"""pass@k, maj@k and best@k: exact against brute force, and recovering known values
from a store of synthetic runs."""

from __future__ import annotations

import itertools
from collections import Counter

import numpy as np
import pytest
from known import known_store_for

from ttc.analysis import bootstrap, load, pass_at_k, per_problem, points
from ttc.analysis.estimators import best_at_k, maj_at_k


@pytest.fixture
def known_store(tmp_path_factory: pytest.TempPathFactory):
    return known_store_for(tmp_path_factory)


TOL = 0.05
"""Tolerance of a population estimate from 300 problems (about 2.5 standard errors)."""


def _brute(n: int, k: int, f) -> float:
    subsets = list(itertools.combinations(range(n), k))
    return sum(f(s) for s in subsets) / len(subsets)


def test_pass_at_k_equals_the_subset_average() -> None:
    for n, c in [(5, 0), (5, 2), (8, 3), (8, 8), (10, 1)]:
        marks = [1] * c + [0] * (n - c)
        for k in range(1, n + 1):
            want = _brute(n, k, lambda s, marks=marks: float(any(marks[i] for i in s)))
            assert pass_at_k(n, c, k) == pytest.approx(want)


def test_best_at_k_equals_the_subset_average_with_ties() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        n = int(rng.integers(2, 8))
        scores = rng.integers(0, 3, n).astype(float)  # many ties
        correct = rng.integers(0, 2, n).astype(float)
        for k in range(1, n + 1):

            def best(s, scores=scores, correct=correct):
                top = max(scores[i] for i in s)
                tied = [i for i in s if scores[i] == top]
                return np.mean([correct[i] for i in tied])

            got = best_at_k(scores[None, :], correct[None, :], k)[0]
            assert got == pytest.approx(_brute(n, k, best))


def test_maj_at_k_is_exact_when_subsets_are_few() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        n = int(rng.integers(2, 8))
        votes = rng.integers(-1, 3, n)  # -1: no answer
        correct = (votes == 0).astype(float)
        for k in range(1, n + 1):

            def maj(s, votes=votes):
                counts = Counter(int(votes[i]) for i in s if votes[i] >= 0)
                if not counts:
                    return 0.0
                top = max(counts.values())
                leaders = [a for a, c in counts.items() if c == top]
                return sum(a == 0 for a in leaders) / len(leaders)

            got = maj_at_k(votes[None, :], correct[None, :], k, max_subsets=10_000)[0]
            assert got == pytest.approx(_brute(n, k, maj))


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_problems() -> None:
    rng = np.random.default_rng(2)
    small = rng.random(30)
    large = rng.random(3000)
    m1, lo1, hi1 = bootstrap(small)
    _, lo2, hi2 = bootstrap(large)
    assert lo1[0] < m1[0] < hi1[0]
    assert (hi2 - lo2)[0] < (hi1 - lo1)[0] / 5


def test_pass_and_maj_recover_the_known_values(known_store) -> None:
    url, env, ids = known_store
    tables = load(url, [ids["best_of_n"], ids["self_consistency"]])
    pts = points(tables, n_boot=400)
    for run in ("best_of_n", "self_consistency"):
        mine = pts[pts["run_id"] == ids[run]]
        for k in (1, 2, 4, 8, 16):
            row = mine[(mine["metric"] == "pass@k") & (mine["k"] == k)].iloc[0]
            assert abs(row["value"] - env.pass_at_k(k)) < TOL, (run, k)
            assert row["ci_lo"] <= row["value"] <= row["ci_hi"]
        for k in (1, 4, 16):
            row = mine[(mine["metric"] == "maj@k") & (mine["k"] == k)].iloc[0]
            assert abs(row["value"] - env.maj_at_k(k, draws=4000)) < TOL, (run, k)
    # curves: pass@k rises with k; maj@k does not (a dominant distractor on hard ones)
    bon = pts[(pts["run_id"] == ids["best_of_n"]) & (pts["metric"] == "pass@k")]
    assert bon.sort_values("k")["value"].is_monotonic_increasing
    assert env.pass_at_k(16) - env.maj_at_k(16, draws=4000) > 0.2


def test_the_full_k_estimate_is_the_runs_own_choice(known_store) -> None:
    """best@n is the best-of-n run's accuracy and maj@n the self-consistency run's (the
    synthetic strategies break ties as the estimators credit them, up to voting ties)."""
    url, _, ids = known_store
    tables = load(url, [ids["best_of_n"], ids["self_consistency"]])
    pts = points(tables, n_boot=50)
    acc = pts[pts["metric"] == "accuracy"].set_index("run_id")["value"]
    best16 = pts[
        (pts["run_id"] == ids["best_of_n"]) & (pts["metric"] == "best@k") & (pts["k"] == 16)
    ]
    assert best16["value"].iloc[0] == pytest.approx(acc[ids["best_of_n"]])
    maj16 = pts[
        (pts["run_id"] == ids["self_consistency"]) & (pts["metric"] == "maj@k") & (pts["k"] == 16)
    ]
    assert maj16["value"].iloc[0] == pytest.approx(acc[ids["self_consistency"]], abs=0.02)


def test_costs_scale_with_k_in_every_unit(known_store) -> None:
    url, _, ids = known_store
    tables = load(url, [ids["best_of_n"]])
    pts = points(tables, metrics=("pass@k",), n_boot=20)
    full = pts[pts["metric"] == "accuracy"].iloc[0]
    half = pts[(pts["metric"] == "pass@k") & (pts["k"] == 8)].iloc[0]
    for unit in (
        "samples",
        "tokens",
        "total_tokens",
        "prefill_tokens",
        "reward_tokens",
        "flops",
        "eflops",
        "bytes",
        "seconds",
    ):
        assert half[f"cost_{unit}"] == pytest.approx(full[f"cost_{unit}"] / 2), unit
    assert full["cost_samples"] == 16
    assert full["cost_eflops"] > full["cost_flops"] > 0


def test_step_level_runs_get_no_sample_metrics(known_store) -> None:
    url, _, ids = known_store
    tables = load(url, [ids["beam_search"]])
    assert per_problem(tables).empty
    pts = points(tables, n_boot=20)
    assert pts["metric"].tolist() == ["accuracy"]


def test_samples_without_an_answer_do_not_vote_and_are_wrong(tmp_path) -> None:
    from ttc.store import Store
    from ttc.types import Branch, Problem, ProblemResult

    url = f"sqlite:///{tmp_path / 'none.db'}"
    store = Store(url)
    run = store.create_run(
        config={"strategy": {"name": "self_consistency", "n": 3}, "task": {"name": "synthetic"}},
        strategy="self_consistency",
        backend="b",
        model="m",
        task="synthetic",
        reward="none",
        versions={},
        hardware={},
    )
    root = Branch(id=0, parent_id=None, step=0, token_ids=(), step_texts=())
    leaves = [
        Branch(
            id=i,
            parent_id=0,
            step=1,
            token_ids=(),
            step_texts=("x",),
            finished=True,
            answer=a,
            new_tokens=5,
        )
        for i, a in ((1, None), (2, None), (3, "7"))
    ]
    store.record_problem(
        run,
        ProblemResult(
            index=0,
            problem=Problem(id="p", reference="7"),
            status="ok",
            answer="7",
            correct=True,
            pass_at_1=1 / 3,
            majority_correct=True,
            oracle_correct=True,
            spent={"samples": 3, "tokens": 15},
            budget={},
            branches=[root, *leaves],
            calls=[],
        ),
    )
    tables = load(url)
    assert tables.nodes["correct"].tolist() == [0.0, 0.0, 1.0]
    pp = per_problem(tables, metrics=("pass@k", "maj@k")).set_index(["metric", "k"])["value"]
    assert pp[("pass@k", 1)] == pytest.approx(1 / 3)
    # any subset holding the one answer votes it; two answerless samples score 0
    assert pp[("maj@k", 1)] == pytest.approx(1 / 3)
    assert pp[("maj@k", 2)] == pytest.approx(2 / 3)
    assert pp[("maj@k", 3)] == pytest.approx(1.0)
