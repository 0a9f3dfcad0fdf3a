"""`ttc analyze report`: one self-contained HTML file (no network, no side files).

Plots are embedded as `data:image/png;base64` URIs; tables are plain HTML; the page
names the store (password masked) and every run id it came from, and lists the
configurations compared.
"""

from __future__ import annotations

import base64
import html
import math
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ttc.analysis import plots
from ttc.analysis.analysis import Analysis, by_bin_table

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em 0; }
.note { color: #7a4b00; } code { background: #f5f5f5; padding: 0 3px; }
"""


def mask_url(url: str) -> str:
    """The store URL with any password hidden."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url.split("@")[-1] if "@" in url else url


def _img(data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{b64}">'


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if math.isinf(value):
            return "inf"
        if abs(value) >= 1e5:
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def _table(df: pd.DataFrame, *, table_id: str, max_rows: int = 200) -> str:
    if df.empty:
        return "<p>(empty)</p>"
    shown = df.head(max_rows)
    body = shown.to_html(
        index=False, border=0, table_id=table_id, formatters={c: _fmt for c in shown.columns}
    )
    more = (
        f"<p>({len(df) - max_rows} more rows: use --format csv)</p>" if len(df) > max_rows else ""
    )
    return body + more


def render(analysis: Analysis, *, title: str = "ttc analysis") -> str:
    """The report as one HTML string."""
    t = analysis.tables
    unit = analysis.unit
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>store <code>{html.escape(mask_url(analysis.source.store_url))}</code>, "
        f"{len(analysis.source.runs)} runs, generated "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; cost axis: {html.escape(unit)} "
        "(mean per problem); intervals: 95% bootstrap over problems.</p>",
    ]
    for note in analysis.notes:
        parts.append(f"<p class='note'>note: {html.escape(note)}</p>")
    parts += [
        "<h2 id='headline'>Headline: accuracy and cost per run</h2>",
        _table(t["headline"], table_id="headline-table"),
    ]
    parts.append(_img(plots.accuracy_cost(t["points"], unit=unit), "accuracy vs cost"))
    parts += [
        "<h2 id='frontier'>Pareto frontier</h2>",
        _table(_points_view(t["frontier"], unit), table_id="frontier-table"),
    ]
    if analysis.coverage:
        parts.append("<h2 id='scaling'>Coverage and scaling fits</h2>")
        parts.append(_img(plots.coverage(analysis.coverage), "coverage with power-law fit"))
        parts.append(_table(t["fits"], table_id="fits-table"))
    if analysis.policy is not None:
        fit = analysis.policy
        parts.append("<h2 id='policy'>Per-difficulty policy</h2>")
        parts.append(
            f"<p>measure <code>{fit.measure}</code> (probe of {fit.probe} samples, "
            f"{_fmt(fit.probe_cost)} {unit} per problem), {len(fit.edges)} bins, "
            f"{len(fit.problems)} problems. Saving = best-of-N's cost to reach the policy's "
            "accuracy / the policy's cost.</p>"
        )
        parts.append(_table(t["policy"], table_id="policy-table"))
        top = fit.choice()
        parts.append(
            _img(
                plots.per_bin(by_bin_table(analysis), top, measure=fit.measure), "accuracy per bin"
            )
        )
        parts.append(_table(top.drop(columns=["candidate"]), table_id="policy-bins-table"))
    parts += [
        "<h2 id='points'>All accuracy-cost points</h2>",
        _table(_points_view(t["points"], unit), table_id="points-table"),
    ]
    parts += [
        "<h2 id='configs'>Configurations compared</h2>",
        _table(t["configs"], table_id="configs-table"),
    ]
    ids = ", ".join(f"<code>{html.escape(i)}</code>" for i in analysis.source.run_ids)
    parts += [f"<h2 id='runs'>Runs</h2><p>{ids}</p>", "</body></html>"]
    return "\n".join(parts)


def _points_view(df: pd.DataFrame, unit: str) -> pd.DataFrame:
    cols = [
        "run_id",
        "label",
        "budget_label",
        "metric",
        "k",
        "value",
        "ci_lo",
        "ci_hi",
        f"cost_{unit}",
        "n_problems",
    ]
    return df[[c for c in cols if c in df.columns]]


def write(analysis: Analysis, path: str | Path, *, title: str = "ttc analysis") -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(analysis, title=title), encoding="utf-8")
    return out
