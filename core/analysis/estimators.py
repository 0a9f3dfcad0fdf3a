"""Estimates from stored samples, without generating again.

For a problem with `n` stored samples of which `c` are right:

- `pass@k`: the unbiased estimator of Chen et al. (2021), `1 - C(n-c, k) / C(n, k)`: the
  chance that at least one of k samples drawn without replacement is right.
- `maj@k`: the chance that the majority answer of k of the samples is right. Exact over
  all k-subsets when there are at most `max_subsets` of them, else the mean over
  `max_subsets` seeded random subsets. A tie between answers is credited fractionally
  (the share of the tied answers that are right: a uniform tie-break). Samples stating
  no answer do not vote; k of them score 0.
- `best@k` (best-of-k by reward): the chance that the highest-scored of k samples is
  right, by exact combinatorics: the sample ranked r-th of n is the best of a random
  k-subset with probability `C(n-1-r, k-1) / C(n, k)`; tied scores share their
  correctness (a uniform tie-break).

Confidence intervals are percentile bootstraps over problems (seeded: the same problems
are drawn for every configuration, so their intervals are comparable).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.special import gammaln

from ttc.analysis.load import COST_UNITS, SAMPLING_STRATEGIES, Tables

METRICS = ("pass@k", "maj@k", "best@k")
"""Sample-based metrics, named as the evaluation harnesses name them."""


def _log_comb(a: np.ndarray, k: int) -> np.ndarray:
    a = np.asarray(a, dtype=float)
    with np.errstate(invalid="ignore"):
        out = gammaln(a + 1) - gammaln(k + 1) - gammaln(a - k + 1)
    return np.where(a >= k, out, -np.inf)


def pass_at_k(n: np.ndarray | int, c: np.ndarray | int, k: int) -> np.ndarray:
    """Unbiased pass@k per problem (`n` samples, `c` right; `k <= n`)."""
    n_arr = np.asarray(n, dtype=float)
    c_arr = np.asarray(c, dtype=float)
    return 1.0 - np.exp(_log_comb(n_arr - c_arr, k) - _log_comb(n_arr, k))


def best_weights(n: int, k: int) -> np.ndarray:
    """P(the sample ranked r-th of n is the best of a uniform k-subset), r = 0..n-1."""
    r = np.arange(n)
    return np.exp(_log_comb(n - 1 - r, k - 1) - _log_comb(np.array(n), k))


def best_at_k(scores: np.ndarray, correct: np.ndarray, k: int) -> np.ndarray:
    """best-of-k by reward per row (rows: problems with the same n; NaN scores rank last)."""
    s = np.where(np.isnan(scores), -np.inf, scores)
    order = np.argsort(-s, axis=1, kind="stable")
    s_sorted = np.take_along_axis(s, order, axis=1)
    c_sorted = np.take_along_axis(correct, order, axis=1).astype(float)
    tied = np.any(s_sorted[:, 1:] == s_sorted[:, :-1], axis=1)
    for row in np.flatnonzero(tied):  # tied scores share their correctness
        _, inverse = np.unique(s_sorted[row], return_inverse=True)
        means = np.bincount(inverse, c_sorted[row]) / np.bincount(inverse)
        c_sorted[row] = means[inverse]
    return c_sorted @ best_weights(scores.shape[1], k)


def subsets(n: int, k: int, *, max_subsets: int, rng: np.random.Generator) -> np.ndarray:
    """All k-subsets of range(n) when there are at most `max_subsets`, else that many
    random ones (rows of indices)."""
    if math.comb(n, k) <= max_subsets:
        return np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)
    return np.argsort(rng.random((max_subsets, n)), axis=1)[:, :k]


def maj_at_k(
    votes: np.ndarray,
    correct: np.ndarray,
    k: int,
    *,
    max_subsets: int = 256,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """maj@k per row. `votes`: integer answer codes (-1: no answer); `correct`: 0/1."""
    rng = rng or np.random.default_rng(0)
    n = votes.shape[1]
    idx = subsets(n, k, max_subsets=max_subsets, rng=rng)
    out = np.empty(votes.shape[0])
    # bound the (rows, subsets, k, k) comparison to ~16M elements
    step = max(1, int(16_000_000 // max(len(idx) * k * k, 1)))
    for lo in range(0, votes.shape[0], step):
        a = votes[lo : lo + step][:, idx]  # rows x subsets x k
        c = correct[lo : lo + step][:, idx]
        valid = a >= 0
        counts = (a[..., :, None] == a[..., None, :]).sum(-1) * valid
        top = counts.max(-1, keepdims=True)
        sel = (counts == top) & valid & (top > 0)
        den = sel.sum(-1)
        num = (sel * c).sum(-1)
        val = np.divide(num, den, out=np.zeros(num.shape, dtype=float), where=den > 0)
        out[lo : lo + step] = val.mean(-1)
    return out


def default_ks(n: int) -> list[int]:
    """1, 2, 4, ... up to n, and n itself."""
    ks = [1 << i for i in range(int(math.log2(max(n, 1))) + 1) if (1 << i) <= n]
    return sorted({*ks, n})


def sampling_runs(tables: Tables) -> list[str]:
    """Runs whose leaves are independent samples (a sampling strategy, or every leaf a
    child of the root)."""
    out = []
    for run in tables.runs.itertuples():
        leaves = tables.nodes[tables.nodes["run_id"] == run.id]
        if leaves.empty:
            continue
        if run.strategy in SAMPLING_STRATEGIES or bool((leaves["parent_id"] == 0).all()):
            out.append(str(run.id))
    return out


def per_problem(
    tables: Tables,
    *,
    metrics: Sequence[str] = METRICS,
    ks: Sequence[int] | None = None,
    max_subsets: int = 256,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per (run, problem, metric, k) of every sampling run: the estimate for
    that problem (`value`), its sample count `n`, and `k`."""
    nodes = tables.nodes
    picked = set(sampling_runs(tables))
    leaves = nodes[nodes["run_id"].isin(picked)]
    if leaves.empty:
        return pd.DataFrame(columns=["run_id", "problem_id", "metric", "k", "n", "value"])
    leaves = leaves.sort_values(["run_id", "result_id", "node_id"])
    codes = pd.factorize(leaves["vote"], use_na_sentinel=True)[0]
    result_ids = leaves["result_id"].to_numpy()
    starts = np.flatnonzero(np.r_[True, result_ids[1:] != result_ids[:-1]])
    sizes = np.diff(np.r_[starts, len(result_ids)])
    run_of = leaves["run_id"].to_numpy()[starts]
    pid_of = leaves["problem_id"].to_numpy()[starts]
    correct = np.nan_to_num(leaves["correct"].to_numpy(dtype=float), nan=0.0)
    score = leaves["score"].to_numpy(dtype=float)
    rng = np.random.default_rng(seed)
    frames = []
    for n in np.unique(sizes):
        rows = np.flatnonzero(sizes == n)
        take = starts[rows][:, None] + np.arange(n)[None, :]
        c_mat, s_mat, v_mat = correct[take], score[take], codes[take]
        for k in ks or default_ks(int(n)):
            if k > n:
                continue
            for metric in metrics:
                if metric == "pass@k":
                    value = pass_at_k(n, c_mat.sum(axis=1), k)
                elif metric == "best@k":
                    if np.isnan(s_mat).all():
                        continue  # not ranked by a reward
                    value = best_at_k(s_mat, c_mat, k)
                elif metric == "maj@k":
                    value = maj_at_k(v_mat, c_mat, k, max_subsets=max_subsets, rng=rng)
                else:
                    raise ValueError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}")
                frames.append(
                    pd.DataFrame(
                        {
                            "run_id": run_of[rows],
                            "problem_id": pid_of[rows],
                            "metric": metric,
                            "k": int(k),
                            "n": int(n),
                            "value": value,
                        }
                    )
                )
    return pd.concat(frames, ignore_index=True)


@functools.lru_cache(maxsize=16)
def _weights(p: int, n_boot: int, seed: int) -> np.ndarray:
    """How often each of p problems is drawn in each resample (shared: the same draws
    for every configuration over the same problems)."""
    rng = np.random.default_rng(seed)
    w = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot).astype(float)
    w.flags.writeable = False
    return w


def bootstrap(
    values: np.ndarray, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and percentile-bootstrap interval over rows (problems) of a problems x
    columns matrix (NaN: the column does not apply to that problem)."""
    values = np.asarray(values, dtype=float)
    if values.ndim == 1:
        values = values[:, None]
    p = values.shape[0]
    present = ~np.isnan(values)
    filled = np.where(present, values, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = filled.sum(0) / present.sum(0)
    if p == 0:
        nan = np.full(values.shape[1], np.nan)
        return nan, nan, nan
    weights = _weights(p, n_boot, seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        boots = (weights @ filled) / (weights @ present)
    alpha = (1.0 - level) / 2
    q = np.nanquantile if np.isnan(boots).any() else np.quantile
    lo = q(boots, alpha, axis=0)
    hi = q(boots, 1 - alpha, axis=0)
    return mean, lo, hi


def points(
    tables: Tables,
    *,
    metrics: Sequence[str] = METRICS,
    ks: Sequence[int] | None = None,
    n_boot: int = 1000,
    max_subsets: int = 256,
    seed: int = 0,
    per_problem_values: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Accuracy-cost points: one per run (`metric="accuracy"`: the chosen answers, at what
    the run spent) and, for sampling runs, one per (metric, k) at `k/n` of the run's
    spending (exchangeable samples cost alike). Each row has the mean, its bootstrap
    interval (`ci_lo`, `ci_hi`) and the mean cost per problem in every unit (`cost_<unit>`)."""
    res = tables.results
    runs = tables.runs.set_index("id")
    rows: list[dict[str, object]] = []
    for run_id, g in res.groupby("run_id", sort=False):
        g = g.sort_values("problem_id")
        mean, lo, hi = bootstrap(g["correct"].to_numpy(float), n_boot=n_boot, seed=seed)
        info = runs.loc[run_id]
        rows.append(
            {
                **_run_info(run_id, info),
                "metric": "accuracy",
                "k": float(g["samples"].mean()),
                "n_problems": len(g),
                "value": mean[0],
                "ci_lo": lo[0],
                "ci_hi": hi[0],
                **{f"cost_{u}": float(g[u].mean()) for u in COST_UNITS},
            }
        )
    pp = per_problem_values
    if pp is None:
        pp = per_problem(tables, metrics=metrics, ks=ks, max_subsets=max_subsets, seed=seed)
    if not pp.empty:
        spent_of = {
            rid: g.set_index("problem_id")[list(COST_UNITS)] for rid, g in res.groupby("run_id")
        }
        for (run_id, metric), g in pp.groupby(["run_id", "metric"], sort=False):
            wide, n_of = _wide(g)
            mean, lo, hi = bootstrap(wide.to_numpy(), n_boot=n_boot, seed=seed)
            cost = spent_of[run_id].reindex(wide.index)
            info = runs.loc[run_id]
            for j, k in enumerate(wide.columns):
                frac = int(k) / n_of
                rows.append(
                    {
                        **_run_info(run_id, info),
                        "metric": metric,
                        "k": int(k),
                        "n_problems": int(wide[k].notna().sum()),
                        "value": mean[j],
                        "ci_lo": lo[j],
                        "ci_hi": hi[j],
                        **{
                            f"cost_{u}": float(np.nanmean(cost[u].to_numpy(float) * frac))
                            for u in COST_UNITS
                        },
                    }
                )
    return pd.DataFrame(rows)


def _wide(g: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray]:
    """Problems x k values of one (run, metric), and each problem's sample count."""
    pids, rows = np.unique(g["problem_id"].to_numpy(), return_inverse=True)
    ks, cols = np.unique(g["k"].to_numpy(), return_inverse=True)
    grid = np.full((len(pids), len(ks)), np.nan)
    grid[rows, cols] = g["value"].to_numpy(float)
    n_of = np.zeros(len(pids))
    n_of[rows] = g["n"].to_numpy(float)
    return pd.DataFrame(grid, index=pids, columns=ks), n_of


def _run_info(run_id: object, info: pd.Series) -> dict[str, object]:
    return {
        "run_id": run_id,
        "config_id": int(info["config_id"]),
        "label": info["label"],
        "family": info["family"],
        "budget_label": info["budget_label"],
        "strategy": info["strategy"],
    }
