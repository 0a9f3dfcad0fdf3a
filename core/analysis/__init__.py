"""`ttc.analysis`: read stored runs back as tables, estimates, frontiers, fits and policies."""

from ttc.analysis.estimators import METRICS, bootstrap, pass_at_k, per_problem, points
from ttc.analysis.load import COST_UNITS, Tables, flatten, load

__all__ = [
    "COST_UNITS",
    "METRICS",
    "Tables",
    "bootstrap",
    "flatten",
    "load",
    "pass_at_k",
    "per_problem",
    "points",
]
