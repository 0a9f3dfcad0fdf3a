"""The Pareto frontier of accuracy against cost: points no other point beats.

A point is dominated when another costs no more, is no less accurate, and is strictly
better in one of the two. Dominated points are removed; ties (points equal in both) are
all kept.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def pareto_mask(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """True for the points on the frontier (lower cost and higher value are better;
    NaN points are never on it)."""
    cost = np.asarray(cost, dtype=float)
    value = np.asarray(value, dtype=float)
    ok = ~(np.isnan(cost) | np.isnan(value))
    keep = np.zeros(len(cost), dtype=bool)
    idx = np.flatnonzero(ok)
    # cheapest first; at equal cost the most accurate first
    order = idx[np.lexsort((-value[idx], cost[idx]))]
    best = -np.inf  # best value among strictly cheaper points or earlier at equal cost
    i = 0
    while i < len(order):
        j = i
        c = cost[order[i]]
        while j < len(order) and cost[order[j]] == c:
            j += 1
        group = order[i:j]  # equal cost, sorted by value descending
        top = value[group[0]]
        if top > best:
            keep[group[value[group] == top]] = True
            best = top
        i = j
    return keep


def frontier(points: pd.DataFrame, *, unit: str = "tokens", value: str = "value") -> pd.DataFrame:
    """The rows of `points` on the frontier in `cost_<unit>`, cheapest first."""
    column = unit if unit in points.columns else f"cost_{unit}"
    mask = pareto_mask(points[column].to_numpy(float), points[value].to_numpy(float))
    return points[mask].sort_values([column, value], ascending=[True, False])
