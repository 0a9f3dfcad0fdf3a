"""One analysis of a selection of stored runs: every table the CLI prints and the report
shows, computed once.

`analyze(tables)` returns an `Analysis` whose `tables` map a name to a DataFrame:

- `headline`: one row per run: its configuration and budget, accuracy with a bootstrap
  interval, stored pass@1, the mean cost per problem in the main units and the run's
  wall-clock seconds (`wall_s`; problems overlap, so not the sum of `seconds`);
  `frontier` marks the runs on the Pareto frontier in the chosen unit.
- `points`: accuracy-cost points (runs, and pass@k / maj@k / best@k of sampling runs).
- `frontier`: the points on the frontier (realisable ones: runs, maj@k, best@k).
- `fits`: per sampling run, the power-law fit of coverage (a, b, R^2, RMSE, an
  extrapolation with its band) and TTSPM's saturation budget.
- `policy_bins`, `policy`: the per-difficulty policy (per bin and level; per level with
  the saving over best-of-N), when the selection holds sampling runs.
- `configs`: the configuration keys that differ between the selected runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ttc.analysis.estimators import _wide, per_problem, points, sampling_runs
from ttc.analysis.fits import extrapolate, fit_power_law, fit_saturation
from ttc.analysis.frontier import pareto_mask
from ttc.analysis.load import COST_UNITS, Tables
from ttc.analysis.policy import PolicyFit, assign_bins, candidates, difficulty, fit_policy

HEADLINE_UNITS = ("samples", "tokens", "total_tokens", "prefill_tokens", "flops", "seconds")
REALISABLE = ("accuracy", "maj@k", "best@k")
"""Point metrics a strategy can achieve (pass@k needs an oracle to pick the sample)."""


@dataclass
class Analysis:
    source: Tables
    unit: str
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    policy: PolicyFit | None = None
    coverage: list[dict[str, Any]] = field(default_factory=list)
    """Per sampling run: pass@k with its interval and the fitted curve (for the plot)."""
    notes: list[str] = field(default_factory=list)


def analyze(
    tables: Tables,
    *,
    unit: str = "tokens",
    measure: str = "agreement",
    bins: int = 3,
    probe: int = 4,
    n_boot: int = 1000,
    seed: int = 0,
    policy: bool = True,
) -> Analysis:
    """Compute every table of the analysis (see the module docstring)."""
    out = Analysis(source=tables, unit=unit, notes=list(tables.notes))
    pp = per_problem(tables, seed=seed)
    pts = points(tables, n_boot=n_boot, seed=seed, per_problem_values=pp)
    out.tables["points"] = pts
    col = f"cost_{unit}"
    real = pts[pts["metric"].isin(REALISABLE)]
    out.tables["frontier"] = real[
        pareto_mask(real[col].to_numpy(float), real["value"].to_numpy(float))
    ].sort_values(col)
    out.tables["headline"] = _headline(tables, pts, unit)
    out.tables["configs"] = _configs(tables)
    out.tables["fits"] = _fits(tables, out, n_boot=min(n_boot, 200), seed=seed)
    if policy and sampling_runs(tables):
        try:
            fit = fit_policy(
                tables,
                measure=measure,
                unit=unit,
                bins=bins,
                probe=probe,
                cands=candidates(tables, pp=pp),
            )
        except (ValueError, KeyError, IndexError) as exc:
            out.notes.append(f"no policy: {exc}")
        else:
            out.policy = fit
            out.tables["policy_bins"] = fit.per_bin
            out.tables["policy"] = fit.overall
            out.notes.extend(fit.notes)
    return out


def _headline(tables: Tables, pts: pd.DataFrame, unit: str) -> pd.DataFrame:
    acc = pts[pts["metric"] == "accuracy"].set_index("run_id")
    res = tables.results.groupby("run_id")
    rows = []
    for run in tables.runs.itertuples():
        a = acc.loc[run.id]
        rows.append(
            {
                "run_id": run.id,
                "config": run.label,
                "budget": run.budget_label,
                "problems": int(a["n_problems"]),
                "accuracy": a["value"],
                "ci_lo": a["ci_lo"],
                "ci_hi": a["ci_hi"],
                "pass@1": float(res.get_group(run.id)["pass_at_1"].mean()),
                **{u: a[f"cost_{u}"] for u in HEADLINE_UNITS},
                "wall_s": run.wall_s,
            }
        )
    df = pd.DataFrame(rows)
    if unit not in df:
        df[unit] = [acc.loc[r, f"cost_{unit}"] for r in df["run_id"]]
    df["frontier"] = pareto_mask(df[unit].to_numpy(float), df["accuracy"].to_numpy(float))
    return df.sort_values(["config", unit], ignore_index=True)


def _configs(tables: Tables) -> pd.DataFrame:
    runs = tables.runs
    keys = [c for c in runs.columns if "." in c and not c.startswith("budget.")]
    varying = [k for k in keys if runs[k].astype(str).nunique() > 1]
    budget = [c for c in runs.columns if c.startswith("budget.") and runs[c].notna().any()]
    shown = ["id", "label", *varying, *budget]
    return runs[shown].rename(columns={"id": "run_id"})


def _fits(tables: Tables, out: Analysis, *, n_boot: int, seed: int) -> pd.DataFrame:
    picked = sampling_runs(tables)
    if not picked:
        return pd.DataFrame()
    n_max = int(tables.nodes[tables.nodes["run_id"].isin(picked)].groupby("result_id").size().max())
    pp = per_problem(tables, metrics=("pass@k",), ks=range(1, n_max + 1), seed=seed)
    runs = tables.runs.set_index("id")
    rows = []
    for run_id, g in pp.groupby("run_id", sort=False):
        wide, _ = _wide(g)
        ks = wide.columns.to_numpy(dtype=float)
        if len(ks) < 3:
            continue
        cov = np.nanmean(wide.to_numpy(), axis=0)
        label = str(runs.loc[run_id, "label"])
        try:
            fit = fit_power_law(ks, cov)
            at = np.unique(np.geomspace(1, 4 * ks.max(), 24).round())
            curve, lo, hi = extrapolate(ks, wide.to_numpy(), at, n_boot=n_boot, seed=seed)
            sat = fit_saturation(ks, cov)
        except (RuntimeError, ValueError) as exc:
            out.notes.append(f"no fit for run {run_id}: {exc}")
            continue
        per_sample = tables.results[tables.results["run_id"] == run_id]
        tokens_per_sample = float(per_sample["tokens"].sum() / max(per_sample["samples"].sum(), 1))
        x = 4 * ks.max()
        row_lo, row_hi = float(lo[-1]), float(hi[-1])
        rows.append(
            {
                "run_id": run_id,
                "config": label,
                "n": int(ks.max()),
                "a": fit.a,
                "b": fit.b,
                "r2": fit.r2,
                "rmse": fit.rmse,
                "extrapolated_k": int(x),
                "coverage_at_k": float(curve[-1]),
                "band_lo": row_lo,
                "band_hi": row_hi,
                "ttspm_f_max": sat.f_max,
                "ttspm_p": sat.p,
                "saturation_samples": sat.n_star,
                "saturation_tokens": sat.n_star * tokens_per_sample
                if sat.n_star is not None
                else math.nan,
            }
        )
        boot = out.tables["points"]
        mine = boot[(boot["run_id"] == run_id) & (boot["metric"] == "pass@k")].sort_values("k")
        out.coverage.append(
            {
                "label": label,
                "k": mine["k"].to_numpy(),
                "value": mine["value"].to_numpy(),
                "lo": mine["ci_lo"].to_numpy(),
                "hi": mine["ci_hi"].to_numpy(),
                "fit_k": at,
                "fit": curve,
                "fit_lo": lo,
                "fit_hi": hi,
                "a": fit.a,
                "b": fit.b,
                "r2": fit.r2,
            }
        )
    return pd.DataFrame(rows)


def by_bin_table(analysis: Analysis, level: float | None = None) -> pd.DataFrame:
    """Per bin and strategy family: the best accuracy a candidate of that family gets in
    the bin for no more than the policy spends there at `level` (for the per-bin plot)."""
    fit = analysis.policy
    if fit is None:
        return pd.DataFrame()
    chosen = fit.choice(level).set_index("bin")
    values = fit.candidates.values[fit.candidates.values["problem_id"].isin(fit.problems)]
    diff = difficulty(analysis.source, fit.measure, probe=fit.probe).set_index("problem_id")
    bin_of = pd.Series(
        assign_bins(diff["difficulty"].reindex(fit.problems).to_numpy(), fit.edges),
        fit.problems,
    )
    values = values.assign(bin=values["problem_id"].map(bin_of))
    meta = fit.candidates.meta.set_index("candidate")
    per = values.groupby(["bin", "candidate"]).agg(value=("value", "mean"), cost=(fit.unit, "mean"))
    per = per.reset_index()
    per = per[per["cost"] <= per["bin"].map(chosen["cost"]) * (1 + 1e-9)]
    per["family"] = per["candidate"].map(meta["strategy_name"])
    best = per.sort_values("value").groupby(["bin", "family"]).tail(1)
    return best.sort_values(["family", "bin"])


__all__ = ["COST_UNITS", "Analysis", "analyze", "by_bin_table"]
