"""Per-difficulty compute-optimal policy (after Snell et al., 2024).

1. Every stored configuration is a *candidate*: each run (its chosen answers, at what it
   spent) and, from sampling runs, best-of-k by reward and majority-of-k for every k up
   to the n that was run (at k/n of the spending), unless `virtual=False`.
2. Problems get a difficulty: `oracle` (1 - pass@1 of the stored samples; known only
   after the fact) or a *predicted* measure the `difficulty` allocator computes at test
   time from a probe of its first `probe` samples: `agreement` (1 - the share of the
   most common answer), `score` (mean reward of the probe samples) or `entropy` (nats
   per generated token). Predicted measures are read from the first `probe` samples of
   the sampling run with the most samples; their cost is added to the policy's.
3. Problems are split into quantile bins of the difficulty; per bin and per budget level
   (the mean cost per problem, in one unit) the compute-optimal candidate is the
   cheapest whose accuracy in the bin is within `tolerance` of the best affordable one.
4. The saving over best-of-N: the cost best-of-N (the best_of_n runs and best@k
   candidates) needs to reach the policy's accuracy, over the policy's cost.

`policy_document` writes the chosen candidates as the policy table the `difficulty`
allocator reads (format: `ttc_policy: 1`, see docs/analysis.md).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ttc.analysis.estimators import per_problem, sampling_runs
from ttc.analysis.load import COST_UNITS, SAMPLING_STRATEGIES, Tables
from ttc.errors import ConfigError

MEASURES = ("oracle", "agreement", "score", "entropy")
PREDICTED = ("agreement", "score", "entropy")
SAMPLE_FIELDS = ("temperature", "top_p", "top_k", "min_p", "max_tokens")
"""Sampling fields a best-of-k / majority-of-k candidate keeps from the run it came from."""


@dataclass
class Candidates:
    """Candidate configurations: `meta` (one row each) and `values` (one row per
    candidate and problem: `value` in [0, 1] and the cost in every unit)."""

    meta: pd.DataFrame
    values: pd.DataFrame


def _nested(run: dict[str, Any], group: str) -> dict[str, Any]:
    """A config group of a run as stored (the budget: only its set limits)."""
    value = dict((run.get("config") or {}).get(group) or {})
    if group == "budget":
        value = {k: v for k, v in value.items() if v is not None}
    return value


SETTING_GROUPS = ("task", "backend", "reward")
"""Config groups a policy cannot change: it sets each bin's strategy and budget only."""
PROBLEM_KEYS = {("task", "n_problems")}
"""Keys that choose which problems a run solved (the fit meets them on shared problems)."""


def _setting(run: dict[str, Any]) -> dict[str, Any]:
    """The run's task, backend and reward config, each filled with its plugin's defaults
    where the run did not store a key (an older ttc had no such field)."""
    config = run.get("config") or {}
    out: dict[str, Any] = {}
    for group in SETTING_GROUPS:
        node = dict(config.get(group) or {})
        for key, value in {**_defaults(group, str(node.get("name"))), **node}.items():
            if (group, key) not in PROBLEM_KEYS:
                out[f"{group}.{key}"] = value
    return out


def _defaults(group: str, name: str) -> dict[str, Any]:
    """The default config of plugin `name` of `group`, as plain data ({} if unknown)."""
    from ttc.registry import get_registry

    try:
        cls = get_registry().get(group, name).config_cls
        return dataclasses.asdict(cls()) if dataclasses.is_dataclass(cls) else {}
    except Exception:  # not installed here, or a config that needs arguments
        return {}


def _differences(setting: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """The keys whose value in `setting` is not the one in `base` (`-`: not stored)."""
    return [
        f"{k}={setting.get(k, '-')}"
        for k in sorted(set(setting) | set(base))
        if setting.get(k, _MISSING) != base.get(k, _MISSING)
    ]


_MISSING = object()


def reproducible(tables: Tables) -> tuple[set[str], list[str]]:
    """The runs a policy can choose from: those sharing the task, backend and reward
    config of the most runs; and a note for each run left out, naming what differs."""
    runs = tables.runs.to_dict("records")
    settings = {r["id"]: _setting(r) for r in runs}
    keys = [json.dumps(st, sort_keys=True, default=str) for st in settings.values()]
    common = max(dict.fromkeys(keys), key=keys.count) if keys else None  # ties: the first
    base = json.loads(common) if common else {}
    keep: set[str] = set()
    left: dict[str, list[str]] = {}
    for run in runs:
        differs = _differences(json.loads(json.dumps(settings[run["id"]], default=str)), base)
        if differs:
            left.setdefault(", ".join(differs), []).append(run["id"])
        else:
            keep.add(run["id"])
    notes = [
        f"{len(ids)} run{'s' if len(ids) > 1 else ''} left out of the policy, whose {what} "
        f"differs from the other runs' (a policy sets only each bin's strategy and budget): "
        f"{', '.join(ids)}"
        for what, ids in left.items()
    ]
    return keep, notes


def candidates(
    tables: Tables, *, pp: pd.DataFrame | None = None, virtual: bool = True
) -> Candidates:
    """Every run, plus best-of-k and majority-of-k from the sampling runs."""
    res = tables.results
    metas: list[dict[str, Any]] = []
    frames: list[pd.DataFrame] = []
    units = list(COST_UNITS)
    for run in tables.runs.to_dict("records"):
        g = res[res["run_id"] == run["id"]]
        cid = len(metas)
        metas.append(
            {
                "candidate": cid,
                "run_id": run["id"],
                "label": f"{run['label']} [{run['budget_label']}]",
                "strategy_name": run["strategy"],
                "family": run["label"],
                "k": None,
                "strategy": _nested(run, "strategy"),
                "budget": _nested(run, "budget"),
            }
        )
        frames.append(
            g[["problem_id", *units]].assign(candidate=cid, value=g["correct"].fillna(0.0))
        )
    if virtual:
        pp = per_problem(tables, metrics=("maj@k", "best@k")) if pp is None else pp
        runs = tables.runs.set_index("id")
        for (run_id, metric, k), g in pp[pp["metric"].isin(["maj@k", "best@k"])].groupby(
            ["run_id", "metric", "k"]
        ):
            run = runs.loc[run_id].to_dict()
            name = "best_of_n" if metric == "best@k" else "self_consistency"
            n = int(g["n"].max())
            if name == run["strategy"] and k == n:
                continue  # the run itself
            base = _nested(run, "strategy")
            strategy = {"name": name, "n": int(k)}
            strategy.update({f: base[f] for f in SAMPLE_FIELDS if f in base})
            budget = {u: v * k / n for u, v in _nested(run, "budget").items()}
            if "samples" in budget:
                budget["samples"] = int(k)
            cid = len(metas)
            metas.append(
                {
                    "candidate": cid,
                    "run_id": run_id,
                    "label": f"{name}(n={k}) [from {run['label']}, {run['budget_label']}]",
                    "strategy_name": name,
                    "family": f"{metric} of {run['label']}",
                    "k": int(k),
                    "strategy": strategy,
                    "budget": {
                        u: (math.ceil(v) if u not in ("flops", "eflops", "seconds") else v)
                        for u, v in budget.items()
                    },
                }
            )
            spent = res[res["run_id"] == run_id].set_index("problem_id")[units]
            frac = (k / g.set_index("problem_id")["n"]).reindex(spent.index)
            cost = spent.mul(frac, axis=0).reset_index()
            cost = cost.merge(g[["problem_id", "value"]], on="problem_id")
            frames.append(cost.assign(candidate=cid))
    meta = pd.DataFrame(metas)
    values = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Candidates(meta, values)


def difficulty(
    tables: Tables,
    measure: str = "agreement",
    *,
    probe: int = 4,
    pp: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Per problem: `difficulty` in the measure's units and `probe_<unit>` (what the
    probe costs; 0 for `oracle`)."""
    if measure not in MEASURES:
        raise ConfigError(
            f"unknown difficulty measure '{measure}'; valid choices: {', '.join(MEASURES)}",
            key="measure",
            value=measure,
        )
    runs = sampling_runs(tables)
    if not runs:
        raise ConfigError(
            "difficulty needs stored samples, but no selected run is a sampling run",
            hint="include a best_of_n or self_consistency run in the selection",
        )
    leaves = tables.nodes[tables.nodes["run_id"].isin(runs)]
    if measure == "oracle":
        out = 1.0 - leaves.groupby("problem_id")["correct"].mean()
        frame = out.rename("difficulty").reset_index()
        for u in COST_UNITS:
            frame[f"probe_{u}"] = 0.0
        return frame
    # the probe: the first `probe` samples of the run with the most samples per problem
    size = (
        leaves.groupby("run_id")["node_id"].size()
        / leaves.groupby("run_id")["problem_id"].nunique()
    )
    ref = str(size.idxmax())
    ref_leaves = leaves[leaves["run_id"] == ref].sort_values(["problem_id", "node_id"])
    first = ref_leaves.groupby("problem_id", sort=False).head(probe)
    rows = []
    for pid, g in first.groupby("problem_id", sort=False):
        if measure == "agreement":
            keys = [v if isinstance(v, str) else f"<none {i}>" for i, v in enumerate(g["vote"])]
            top = pd.Series(keys).value_counts().iloc[0]
            value = 1.0 - top / len(keys)
        elif measure == "score":
            value = float(g["score"].mean())
        else:
            tokens = float(g["n_tokens"].sum())
            value = -float(g["cum_logprob"].sum()) / tokens if tokens else math.nan
        rows.append((pid, value, len(g)))
    frame = pd.DataFrame(rows, columns=["problem_id", "difficulty", "probed"])
    spent = tables.results[tables.results["run_id"] == ref].set_index("problem_id")
    n_of = ref_leaves.groupby("problem_id").size()
    frac = (frame.set_index("problem_id")["probed"] / n_of).reindex(spent.index)
    for u in COST_UNITS:
        frame[f"probe_{u}"] = frame["problem_id"].map(spent[u] * frac).fillna(0.0).to_numpy()
    return frame.drop(columns="probed")


def bin_edges(values: np.ndarray, bins: int) -> list[float]:
    """Quantile edges (`up_to` of every bin but the last, which is +inf), deduplicated.

    An edge at the largest value would leave the last bin empty (a discrete measure with
    many problems at its top value, e.g. agreement of a small probe): such an edge moves
    down to the largest value below the top, so every bin holds problems."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    qs = np.quantile(values, np.arange(1, bins) / bins) if len(values) else []
    top = float(values.max()) if len(values) else math.inf
    below = values[values < top]
    edges: set[float] = set()
    for q in qs:
        if q < top:
            edges.add(float(q))
        elif len(below):
            edges.add(float(below.max()))
    return [*sorted(edges), math.inf]


def assign_bins(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Index of the first bin whose `up_to` holds the value (NaN: the last bin)."""
    values = np.nan_to_num(np.asarray(values, dtype=float), nan=math.inf)
    return np.searchsorted(np.asarray(edges), values, side="left")


@dataclass
class PolicyFit:
    """What `fit_policy` found (all tables are DataFrames)."""

    measure: str
    unit: str
    edges: list[float]
    levels: list[float]
    per_bin: pd.DataFrame
    """Per budget level and bin: the chosen candidate, its accuracy and cost in the bin,
    and the best best-of-N affordable in the bin at that level."""
    overall: pd.DataFrame
    """Per budget level: the policy's accuracy and cost (probe included), best-of-N's
    accuracy at that budget and the cost best-of-N needs to match the policy."""
    candidates: Candidates
    problems: list[str]
    probe: int = 4
    probe_cost: float = 0.0
    notes: list[str] = field(default_factory=list)

    def choice(self, level: float | None = None) -> pd.DataFrame:
        """The per-bin rows at `level` (default: `default_level`)."""
        level = self.default_level() if level is None else self._level(level)
        return self.per_bin[self.per_bin["level"] == level].sort_values("bin")

    def default_level(self, tolerance: float = 0.01) -> float:
        """The smallest level whose policy is within `tolerance` of the most accurate one
        (past it, more budget buys less than a point of accuracy)."""
        over = self.overall
        good = over[over["accuracy"] >= over["accuracy"].max() - tolerance]
        return float(good["level"].min())

    def _level(self, level: float) -> float:
        near = min(self.levels, key=lambda x: abs(x - level))
        return near


def _levels(costs: np.ndarray, n_levels: int) -> list[float]:
    lo, hi = float(np.nanmin(costs)), float(np.nanmax(costs))
    if not (lo > 0 and hi > lo):
        return [hi]
    return [float(x) for x in np.geomspace(lo, hi, n_levels)]


def bon_cost_to_reach(bon: pd.DataFrame, accuracy: float) -> float:
    """The least cost at which best-of-N reaches `accuracy` (linear between its frontier
    points; NaN when it never does)."""
    pts = bon.sort_values("cost")
    best = np.maximum.accumulate(pts["value"].to_numpy())
    cost = pts["cost"].to_numpy()
    hit = np.flatnonzero(best >= accuracy - 1e-12)
    if not len(hit):
        return math.nan
    i = int(hit[0])
    if i == 0 or best[i] == best[i - 1]:
        return float(cost[i])
    t = (accuracy - best[i - 1]) / (best[i] - best[i - 1])
    return float(cost[i - 1] + t * (cost[i] - cost[i - 1]))


def _bin_options(
    by_bin: pd.DataFrame, b: int, probe_cost: float, sampling: pd.Series
) -> pd.DataFrame:
    """The candidates of one bin with their cost including the probe: a sampling
    strategy counts the probe samples among its own, anything else pays for them."""
    here = by_bin[by_bin["bin"] == b].copy()
    shared = here["candidate"].map(sampling).fillna(False).astype(bool)
    here["total"] = np.where(
        shared, np.maximum(here["cost"], probe_cost), here["cost"] + probe_cost
    )
    return here


def _hull(options: list[pd.DataFrame], weights: np.ndarray) -> list[tuple[float, float, list[int]]]:
    """Per-bin choices on the accuracy-cost frontier of the whole policy: for every
    trade-off lambda each bin takes the candidate maximising accuracy - lambda * cost
    (ties to the cheaper), which traces the upper convex hull of the combinations."""
    spans = [float(o["total"].max() - o["total"].min()) for o in options]
    scale = max(max(spans), 1e-12)
    lambdas = np.concatenate([[0.0], np.geomspace(1e-6, 1e3, 600) / scale])
    picks_by_bin = []
    for o in options:
        value = o["value"].to_numpy(float)
        total = o["total"].to_numpy(float)
        gain = value[None, :] - lambdas[:, None] * total[None, :]
        best = gain.max(axis=1, keepdims=True)
        # among the (near-)best, the cheapest
        masked = np.where(gain >= best - 1e-12, total[None, :], np.inf)
        chosen = masked.argmin(axis=1)
        cheapest = np.lexsort((-value, total))[0]
        picks_by_bin.append(np.append(chosen, cheapest))
    combos = np.unique(np.stack(picks_by_bin, axis=1), axis=0)
    out = []
    for combo in combos:
        rows = [o.iloc[int(i)] for o, i in zip(options, combo, strict=True)]
        acc = float(sum(w * r["value"] for w, r in zip(weights, rows, strict=True)))
        cost = float(sum(w * r["total"] for w, r in zip(weights, rows, strict=True)))
        out.append((cost, acc, [int(r.name) for r in rows]))
    return sorted(out)


def fit_policy(
    tables: Tables,
    *,
    measure: str = "agreement",
    unit: str = "tokens",
    bins: int = 3,
    probe: int = 4,
    levels: Sequence[float] | None = None,
    n_levels: int = 8,
    problems: Sequence[str] | None = None,
    virtual: bool = True,
    cands: Candidates | None = None,
) -> PolicyFit:
    """Fit the per-difficulty policy on `problems` (default: all stored ones).

    At each budget level (mean cost per problem in `unit`, probe included) the policy is
    the most accurate combination of per-bin choices that costs no more on average: the
    budget moves between bins (less where more compute does not help)."""
    if unit not in COST_UNITS:
        raise ConfigError(
            f"unknown cost unit '{unit}'; valid choices: {', '.join(COST_UNITS)}",
            key="unit",
            value=unit,
        )
    cands = cands or candidates(tables, virtual=virtual)
    keep, notes = reproducible(tables)
    kept = cands.meta["run_id"].isin(keep)
    cands = Candidates(
        cands.meta[kept].reset_index(drop=True),
        cands.values[cands.values["candidate"].isin(cands.meta.loc[kept, "candidate"])],
    )
    diff = difficulty(tables, measure, probe=probe).set_index("problem_id")
    values = cands.values
    pids = sorted(set(values["problem_id"]) if problems is None else set(problems))
    values = values[values["problem_id"].isin(pids)]
    # a candidate competes only where it covers every fitted problem
    counts = values.groupby("candidate")["problem_id"].nunique()
    complete = counts[counts == len(pids)].index
    values = values[values["candidate"].isin(complete)]
    measured = diff["difficulty"].reindex(pids).to_numpy()
    edges = bin_edges(measured, bins)
    bin_of = pd.Series(assign_bins(measured, edges), pids)
    values = values.assign(bin=values["problem_id"].map(bin_of))
    by_bin = values.groupby(["bin", "candidate"]).agg(
        value=("value", "mean"), cost=(unit, "mean"), n=("problem_id", "size")
    )
    by_bin = by_bin.reset_index()
    overall = values.groupby("candidate").agg(value=("value", "mean"), cost=(unit, "mean"))
    meta = cands.meta.set_index("candidate")
    is_bon = meta["strategy_name"] == "best_of_n"
    sampling = meta["strategy_name"].isin(SAMPLING_STRATEGIES)
    probe_cost = float(diff[f"probe_{unit}"].reindex(pids).mean()) if measure in PREDICTED else 0.0
    sizes = bin_of.value_counts().sort_index()
    weights = sizes.to_numpy() / len(pids)
    options = [_bin_options(by_bin, int(b), probe_cost, sampling) for b in sizes.index]
    hull = _hull(options, weights)
    grid = list(levels) if levels else _levels(np.array([h[0] for h in hull]), n_levels)
    bon = overall[overall.index.map(is_bon).astype(bool)]
    rows, totals = [], []
    for level in grid:
        affordable = [h for h in hull if h[0] <= level * (1 + 1e-9)] or [hull[0]]
        cost, acc, picks = max(affordable, key=lambda h: (h[1], -h[0]))
        for b, o, i in zip(sizes.index, options, picks, strict=True):
            pick = o.loc[i]
            bon_here = o[o["candidate"].map(is_bon).fillna(False).astype(bool)]
            bon_here = bon_here[bon_here["cost"] <= level * (1 + 1e-9)]
            rows.append(
                {
                    "level": level,
                    "bin": int(b),
                    "up_to": edges[int(b)],
                    "problems": int(sizes[b]),
                    "candidate": int(pick["candidate"]),
                    "choice": meta.loc[int(pick["candidate"]), "label"],
                    "accuracy": float(pick["value"]),
                    "cost": float(pick["total"]),
                    "best_of_n_accuracy": float(bon_here["value"].max())
                    if len(bon_here)
                    else math.nan,
                }
            )
        bon_at = bon[bon["cost"] <= level * (1 + 1e-9)]["value"].max() if len(bon) else math.nan
        need = bon_cost_to_reach(bon, acc) if len(bon) else math.nan
        totals.append(
            {
                "level": level,
                "accuracy": acc,
                "cost": cost,
                "best_of_n_accuracy": float(bon_at) if bon_at == bon_at else math.nan,
                "best_of_n_cost_to_match": need,
                "saving": need / cost if cost > 0 and need == need else math.nan,
            }
        )
    if measure == "oracle":
        notes.append("oracle bins use each problem's stored correctness: not known at test time")
    return PolicyFit(
        measure=measure,
        unit=unit,
        edges=edges,
        levels=grid,
        per_bin=pd.DataFrame(rows),
        overall=pd.DataFrame(totals),
        candidates=cands,
        problems=pids,
        probe=probe,
        probe_cost=probe_cost,
        notes=notes,
    )


def evaluate(
    fit: PolicyFit, tables: Tables, problems: Sequence[str], *, level: float | None = None
) -> dict[str, float]:
    """Apply the fitted per-bin choices at `level` to other `problems` (their stored
    outcomes): the accuracy and mean cost (probe included, as in `fit_policy`) the policy
    gets there."""
    choice = fit.choice(level).set_index("bin")["candidate"]
    diff = difficulty(tables, fit.measure, probe=fit.probe).set_index("problem_id")
    pids = list(problems)
    bins = assign_bins(diff["difficulty"].reindex(pids).to_numpy(), fit.edges)
    values = fit.candidates.values.set_index(["candidate", "problem_id"])
    meta = fit.candidates.meta.set_index("candidate")
    predicted = fit.measure in PREDICTED
    acc = cost = 0.0
    for pid, b in zip(pids, bins, strict=True):
        cid = int(choice[min(int(b), len(choice) - 1)])
        row = values.loc[(cid, pid)]
        probe = float(diff.loc[pid, f"probe_{fit.unit}"]) if predicted else 0.0
        spent = float(row[fit.unit])
        shared = meta.loc[cid, "strategy_name"] in SAMPLING_STRATEGIES
        acc += float(row["value"])
        cost += max(spent, probe) if shared else spent + probe
    return {"accuracy": acc / len(pids), "cost": cost / len(pids)}


def policy_document(
    fit: PolicyFit,
    *,
    level: float | None = None,
    store: str = "",
    runs: Sequence[str] = (),
    max_tokens: int | None = None,
) -> dict[str, Any]:
    """The policy table the `difficulty` allocator reads (see docs/analysis.md)."""
    if fit.measure not in PREDICTED:
        raise ConfigError(
            f"a policy file needs a difficulty measure known at test time, not '{fit.measure}'",
            key="measure",
            value=fit.measure,
            hint=f"fit with --measure one of {', '.join(PREDICTED)}; oracle bins are for analysis",
        )
    meta = fit.candidates.meta.set_index("candidate")
    bins = []
    for row in fit.choice(level).itertuples():
        info = meta.loc[int(row.candidate)]
        bins.append(
            {
                "name": f"bin{int(row.bin) + 1}",
                "up_to": float(row.up_to),
                "strategy": dict(info["strategy"]),
                "budget": dict(info["budget"]),
            }
        )
    probe: dict[str, Any] = {"samples": fit.probe}
    if max_tokens is not None:
        probe["max_tokens"] = max_tokens
    return {
        "ttc_policy": 1,
        "measure": fit.measure,
        "probe": probe,
        "bins": bins,
        "source": {"store": store, "runs": list(runs), "fitted_on": fit.measure},
    }


def dump_policy(doc: dict[str, Any], path: str) -> None:
    """Write a policy document as YAML (`.yaml`/`.yml`) or JSON (anything else)."""
    from pathlib import Path

    p = Path(path)
    if p.suffix in (".yaml", ".yml"):
        from omegaconf import OmegaConf

        text = OmegaConf.to_yaml(OmegaConf.create(doc))
    else:
        text = json.dumps(doc, indent=2, default=_json_default) + "\n"
    p.write_text(text)


def _json_default(value: Any) -> Any:
    if isinstance(value, float) and math.isinf(value):
        return "Infinity"
    return str(value)
