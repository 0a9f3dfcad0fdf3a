"""The Pareto frontier on hand-made point sets."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ttc.analysis.frontier import frontier, pareto_mask


def test_dominated_points_are_removed() -> None:
    cost = [1, 2, 3, 4, 2.5]
    value = [0.2, 0.5, 0.4, 0.7, 0.6]
    # (3, 0.4) is beaten by (2, 0.5); (2.5, 0.6) stays: nothing cheaper is as good
    assert pareto_mask(np.array(cost), np.array(value)).tolist() == [
        True,
        True,
        False,
        True,
        True,
    ]


def test_ties_are_kept_and_equal_cost_keeps_only_the_best() -> None:
    cost = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
    value = np.array([0.5, 0.5, 0.3, 0.5, 0.8])
    # the two (1, 0.5) tie and both stay; (1, 0.3) loses at equal cost; (2, 0.5) is
    # dominated by the cheaper (1, 0.5); (2, 0.8) is better
    assert pareto_mask(cost, value).tolist() == [True, True, False, False, True]


def test_equal_value_at_higher_cost_is_dominated() -> None:
    assert pareto_mask(np.array([1.0, 5.0]), np.array([0.9, 0.9])).tolist() == [True, False]


def test_nan_points_are_never_on_the_frontier() -> None:
    mask = pareto_mask(np.array([1.0, np.nan, 3.0]), np.array([np.nan, 0.9, 0.4]))
    assert mask.tolist() == [False, False, True]


def test_frontier_matches_brute_force_on_random_sets() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        cost = rng.integers(0, 6, 12).astype(float)
        value = rng.integers(0, 6, 12).astype(float)
        brute = [
            not any(
                (cost[j] <= cost[i] and value[j] >= value[i])
                and (cost[j] < cost[i] or value[j] > value[i])
                for j in range(12)
            )
            for i in range(12)
        ]
        assert pareto_mask(cost, value).tolist() == brute


def test_frontier_frame_is_sorted_by_cost() -> None:
    pts = pd.DataFrame({"cost_tokens": [300, 100, 200], "value": [0.9, 0.3, 0.2]})
    out = frontier(pts, unit="tokens")
    assert out["cost_tokens"].tolist() == [100, 300]
