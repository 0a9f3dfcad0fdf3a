"""PNG plots of an analysis (matplotlib, Agg backend: no display needed).

- `accuracy_cost`: accuracy against mean cost per problem, one line per configuration
  family, bootstrap intervals as error bars, the Pareto frontier marked.
- `coverage`: pass@k against k on a log axis with the power-law fit and its band.
- `per_bin`: accuracy per difficulty bin of each candidate family at one budget level,
  the policy's choice marked.

Each function returns the PNG bytes (and writes them when given a path).
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ttc.analysis.frontier import pareto_mask

UNIT_LABELS = {
    "samples": "samples per problem",
    "tokens": "generated tokens per problem",
    "total_tokens": "prompt + generated tokens per problem",
    "prefill_tokens": "prefilled tokens (net of cache) per problem",
    "reward_tokens": "reward-model tokens per problem",
    "flops": "FLOPs per problem",
    "eflops": "effective FLOPs per problem",
    "bytes": "bytes moved per problem",
    "seconds": "seconds per problem",
}


def _figure(width: float = 7.5, height: float = 4.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return fig, ax


def _png(fig: Any, path: str | Path | None) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    plt.close(fig)
    data = buf.getvalue()
    if path is not None:
        Path(path).write_bytes(data)
    return data


def accuracy_cost(
    points: pd.DataFrame,
    *,
    unit: str = "tokens",
    metrics: tuple[str, ...] = ("accuracy", "maj@k", "best@k"),
    path: str | Path | None = None,
    title: str = "",
) -> bytes:
    """Accuracy-cost curves with intervals; frontier points ringed and joined."""
    col = f"cost_{unit}"
    pts = points[points["metric"].isin(metrics)].copy()
    fig, ax = _figure(9.0, 5.0)
    # the runs of one family (differing in size and budget) form one curve; k-curves come
    # from the largest sampling run of each family only
    runs = pts[pts["metric"] == "accuracy"]
    biggest = runs.sort_values("k").groupby("family")["run_id"].last()
    ks = pts[(pts["metric"] != "accuracy") & pts["run_id"].isin(set(biggest))]
    # one colour and marker per family (its k-curves share them, dashed): many families
    # stay apart where matplotlib's ten default colours repeat
    style = _family_styles(sorted(set(runs["family"]) | set(ks["family"])))
    for name, g in runs.groupby("family", sort=True):
        color, marker = style[name]
        _curve(ax, g.sort_values(col), col, f"-{marker}", f"{name} (runs)", color=color)
    for (name, metric), g in ks.groupby(["family", "metric"], sort=True):
        color, _ = style[name]
        dashes = "--" if metric == "best@k" else ":"
        _curve(ax, g.sort_values(col), col, f"{dashes}.", f"{metric} of {name}", color=color)
    pts = pd.concat([runs, ks])
    mask = pareto_mask(pts[col].to_numpy(float), pts["value"].to_numpy(float))
    front = pts[mask].sort_values(col)
    if len(front):
        ax.plot(front[col], front["value"], "k:", lw=1.5, zorder=5)
        ax.scatter(
            front[col],
            front["value"],
            s=90,
            facecolors="none",
            edgecolors="k",
            zorder=6,
            label="Pareto frontier",
        )
    if (pts[col] > 0).all() and pts[col].max() / max(pts[col].min(), 1e-12) > 20:
        ax.set_xscale("log")
    ax.set_xlabel(UNIT_LABELS.get(unit, unit))
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"accuracy vs {unit}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _png(fig, path)


def _curve(
    ax: Any, g: pd.DataFrame, col: str, style: str, label: str, *, color: Any = None
) -> None:
    yerr = np.vstack([g["value"] - g["ci_lo"], g["ci_hi"] - g["value"]]).clip(min=0)
    ax.errorbar(
        g[col], g["value"], yerr=yerr, fmt=style, capsize=2, ms=4, lw=1, label=label, color=color
    )


_MARKERS = "os^Dv<>PX*"


def _family_styles(names: list[str]) -> dict[str, tuple[Any, str]]:
    """A (colour, marker) per name, distinct for up to 200 names (20 colours x 10 markers)."""
    import matplotlib

    cmap = matplotlib.colormaps["tab20"]
    pairs = [cmap(i) for i in range(20)]  # dark and light of one hue alternate
    colors = [*pairs[0::2], *pairs[1::2]]
    return {
        name: (colors[i % len(colors)], _MARKERS[(i // len(colors)) % len(_MARKERS)])
        for i, name in enumerate(names)
    }


def coverage(
    curves: list[dict[str, Any]],
    *,
    path: str | Path | None = None,
    title: str = "coverage (pass@k) and power-law fit",
) -> bytes:
    """`curves`: dicts with `label`, `k`, `value`, `lo`, `hi` (the estimate and its
    interval) and optionally `fit_k`, `fit`, `fit_lo`, `fit_hi` (the fit and its band)."""
    fig, ax = _figure()
    for i, c in enumerate(curves):
        color = f"C{i % 10}"
        k = np.asarray(c["k"], dtype=float)
        v = np.asarray(c["value"], dtype=float)
        yerr = np.vstack([v - np.asarray(c["lo"]), np.asarray(c["hi"]) - v]).clip(min=0)
        label = str(c["label"])
        if c.get("fit") is not None:
            # one legend entry per run: its name and its fit (line and points share a colour)
            label += f": exp({c['a']:.2f} k^{c['b']:.2f}), R²={c['r2']:.3f}"
            fk = np.asarray(c["fit_k"], dtype=float)
            ax.plot(fk, c["fit"], "-", color=color, lw=1)
            ax.fill_between(fk, c["fit_lo"], c["fit_hi"], color=color, alpha=0.15)
        ax.errorbar(k, v, yerr=yerr, fmt="o-", color=color, ms=4, lw=0, capsize=2, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k (samples)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig, path)


def per_bin(
    by_bin: pd.DataFrame,
    chosen: pd.DataFrame,
    *,
    path: str | Path | None = None,
    measure: str = "difficulty",
    title: str = "accuracy per difficulty bin",
) -> bytes:
    """`by_bin`: rows of (bin, family, value); `chosen`: rows of (bin, accuracy, choice,
    and `up_to`, the bin's upper edge in `measure`, named under each bin)."""
    fig, ax = _figure()
    # the ten families with the best accuracy in some bin (the title says when others
    # were left out): bars for more than ten per bin are unreadable
    every = list(dict.fromkeys(by_bin["family"]))
    best = by_bin.groupby("family")["value"].max()
    fams = sorted(every, key=lambda f: -float(best[f]))[:10]
    fams = [f for f in every if f in fams]
    if len(every) > len(fams):
        title = f"{title} (the {len(fams)} best of {len(every)})"
    bins = sorted(by_bin["bin"].unique())
    width = 0.8 / max(len(fams), 1)
    for i, fam in enumerate(fams):
        g = by_bin[by_bin["family"] == fam].set_index("bin").reindex(bins)
        ax.bar(
            np.arange(len(bins)) + i * width - 0.4 + width / 2,
            g["value"],
            width,
            label=str(fam),
            color=f"C{i % 10}",
            alpha=0.8,
        )
    ch = chosen.set_index("bin").reindex(bins)
    ax.scatter(
        np.arange(len(bins)),
        ch["accuracy"],
        marker="*",
        s=160,
        c="k",
        zorder=5,
        label="policy's choice",
    )
    ax.set_xticks(np.arange(len(bins)), [_bin_tick(ch, b, measure) for b in bins])
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.05)
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    return _png(fig, path)


def _bin_tick(chosen: pd.DataFrame, b: int, measure: str) -> str:
    """`bin2` and the bin's range in the measure: `agreement ≤ 0.25`, the last one `> ...`."""
    if "up_to" not in chosen.columns:
        return f"bin{b + 1}"
    edges = chosen["up_to"].astype(float)
    up_to = float(edges.loc[b])
    if np.isfinite(up_to):
        return f"bin{b + 1}\n{measure} ≤ {up_to:.3g}"
    below = edges[edges.index < b]
    return f"bin{b + 1}\n{measure} > {float(below.iloc[-1]):.3g}" if len(below) else f"bin{b + 1}"
