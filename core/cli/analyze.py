"""`ttc analyze`: accuracy-cost tables, frontiers, scaling fits, per-difficulty policies,
plots and a report from stored runs (thin over `ttc.analysis`)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from ttc.cli._common import StoreOption, console, err_console, errors_to_exit, store_url

app = typer.Typer(
    help="Analyse stored runs: accuracy vs cost, frontiers, scaling fits, policies, reports.",
    no_args_is_help=True,
)

RunsArg = Annotated[
    list[str] | None, typer.Argument(help="run ids (unique prefixes); default: every run")
]
SweepOpt = Annotated[str | None, typer.Option("--sweep", help="only runs of this sweep")]
TaskOpt = Annotated[str | None, typer.Option("--task", help="only runs of this task")]
WhereOpt = Annotated[
    list[str] | None,
    typer.Option("--where", help="KEY=VALUE on the flattened config, e.g. strategy=beam_search"),
]
UnitOpt = Annotated[
    str, typer.Option("--unit", help="cost unit of the x axis (see `ttc.analysis.COST_UNITS`)")
]
FormatOpt = Annotated[str, typer.Option("--format", help="table, csv or json")]
OutputOpt = Annotated[
    Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")
]
MeasureOpt = Annotated[
    str, typer.Option("--measure", help="difficulty: agreement, score, entropy or oracle")
]
BinsOpt = Annotated[int, typer.Option("--bins", min=1, help="quantile bins of difficulty")]
ProbeOpt = Annotated[int, typer.Option("--probe", min=1, help="probe samples per problem")]
BootOpt = Annotated[int, typer.Option("--bootstrap", min=10, help="bootstrap resamples")]


def _analysis(
    store: str | None,
    runs: list[str] | None,
    sweep: str | None,
    task: str | None,
    where: list[str] | None,
    *,
    unit: str = "tokens",
    measure: str = "agreement",
    bins: int = 3,
    probe: int = 4,
    n_boot: int = 1000,
    policy: bool = True,
) -> Any:
    from ttc.analysis import COST_UNITS, load
    from ttc.analysis.analysis import analyze
    from ttc.analysis.load import parse_where
    from ttc.errors import ConfigError

    if unit not in COST_UNITS:
        raise ConfigError(
            f"unknown cost unit '{unit}'; valid choices: {', '.join(COST_UNITS)}",
            key="--unit",
            value=unit,
        )
    with console.status("loading runs"):
        tables = load(
            store_url(store), runs, sweep=sweep, task=task, where=parse_where(where or [])
        )
    with console.status(f"analysing {len(tables.runs)} runs, {len(tables.results)} problems"):
        found = analyze(
            tables,
            unit=unit,
            measure=measure,
            bins=bins,
            probe=probe,
            n_boot=n_boot,
            policy=policy,
        )
    for note in found.notes:  # on stderr: csv / json on stdout stay data
        err_console.print(f"note: {note}", highlight=False, soft_wrap=True)
    return found


def emit(df: Any, fmt: str, output: Path | None, *, title: str = "") -> None:
    """Print or write one table as a rich table, CSV or JSON (records)."""
    from ttc.errors import ConfigError

    if fmt not in ("table", "csv", "json"):
        raise ConfigError(
            f"unknown format '{fmt}'; valid choices: table, csv, json", key="--format", value=fmt
        )
    if fmt == "csv":
        text = df.to_csv(index=False)
    elif fmt == "json":
        records = df.to_dict("records")
        text = json.dumps(records, default=_json_value, indent=1) + "\n"
    else:
        if output is not None:
            raise ConfigError(
                "--output needs --format csv or json", key="--output", hint="add --format csv"
            )
        console.print(_rich(df, title))
        return
    if output is None:
        sys.stdout.write(text)
    else:
        output.write_text(text)
        console.print(f"wrote {len(df)} rows to {output}")


def _json_value(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.3e}" if abs(value) >= 1e5 else f"{value:.4g}"
    return str(value)


def _rich(df: Any, title: str) -> Table:
    table = Table(title=title or None)
    for col in df.columns:
        table.add_column(str(col), overflow="fold")
    for row in df.itertuples(index=False):
        table.add_row(*(_cell(v) for v in row))
    return table


@app.command("runs")
def runs_cmd(
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    unit: UnitOpt = "tokens",
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    n_boot: BootOpt = 1000,
) -> None:
    """The headline table: accuracy (95% bootstrap interval) and mean cost per run."""
    with errors_to_exit():
        a = _analysis(store, runs, sweep, task, where, unit=unit, n_boot=n_boot, policy=False)
        emit(a.tables["headline"], fmt, output, title="runs")


@app.command("points")
def points_cmd(
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    metric: Annotated[
        str | None, typer.Option(help="accuracy, pass@k, maj@k or best@k (default: all)")
    ] = None,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
    n_boot: BootOpt = 1000,
) -> None:
    """Accuracy-cost points: runs and, from stored samples, pass@k / maj@k / best@k."""
    with errors_to_exit():
        a = _analysis(store, runs, sweep, task, where, n_boot=n_boot, policy=False)
        df = a.tables["points"]
        if metric:
            df = df[df["metric"] == metric]
        emit(df, fmt, output, title="accuracy-cost points")


@app.command("frontier")
def frontier_cmd(
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    unit: UnitOpt = "tokens",
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
) -> None:
    """The Pareto frontier of accuracy vs cost (dominated points removed, ties kept)."""
    with errors_to_exit():
        a = _analysis(store, runs, sweep, task, where, unit=unit, n_boot=200, policy=False)
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
        ]
        emit(a.tables["frontier"][cols], fmt, output, title=f"frontier ({unit})")


@app.command("fits")
def fits_cmd(
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
) -> None:
    """Coverage fits: power law exp(a k^b) with R^2 and an extrapolation band; TTSPM
    saturation budget."""
    with errors_to_exit():
        a = _analysis(store, runs, sweep, task, where, n_boot=200, policy=False)
        emit(a.tables["fits"], fmt, output, title="scaling fits")


@app.command("bins")
def bins_cmd(
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    unit: UnitOpt = "tokens",
    measure: MeasureOpt = "agreement",
    bins: BinsOpt = 3,
    probe: ProbeOpt = 4,
    fmt: FormatOpt = "table",
    output: OutputOpt = None,
) -> None:
    """The compute-optimal choice per difficulty bin and budget level."""
    with errors_to_exit():
        a = _analysis(
            store,
            runs,
            sweep,
            task,
            where,
            unit=unit,
            measure=measure,
            bins=bins,
            probe=probe,
            n_boot=200,
        )
        emit(a.tables.get("policy_bins", _empty()), fmt, output, title="per-bin choices")


@app.command("policy")
def policy_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="policy file (.yaml or .json)")],
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    unit: UnitOpt = "tokens",
    measure: MeasureOpt = "agreement",
    bins: BinsOpt = 3,
    probe: ProbeOpt = 4,
    level: Annotated[
        float | None, typer.Option(help="budget level (mean cost per problem); default: largest")
    ] = None,
    probe_max_tokens: Annotated[
        int | None, typer.Option(help="max_tokens of a probe sample (default: the runs')")
    ] = None,
) -> None:
    """Fit the per-difficulty policy and write it for `allocator=difficulty
    allocator.policy=<file>`; print its saving over best-of-N per budget level."""
    from ttc.analysis.policy import dump_policy, policy_document
    from ttc.analysis.report import mask_url
    from ttc.errors import ConfigError

    with errors_to_exit():
        a = _analysis(
            store,
            runs,
            sweep,
            task,
            where,
            unit=unit,
            measure=measure,
            bins=bins,
            probe=probe,
            n_boot=200,
        )
        if a.policy is None:
            raise ConfigError(
                "no policy: the selection holds no sampling run to measure difficulty from",
                hint="include a best_of_n or self_consistency run",
            )
        tokens = probe_max_tokens
        if tokens is None and "strategy.max_tokens" in a.source.runs:
            found = a.source.runs["strategy.max_tokens"].dropna()
            tokens = int(found.max()) if len(found) else None
        doc = policy_document(
            a.policy,
            level=level,
            store=mask_url(a.source.store_url),
            runs=a.source.run_ids,
            max_tokens=tokens,
        )
        dump_policy(doc, str(output))
        emit(a.tables["policy"], "table", None, title=f"policy vs best-of-N ({unit})")
        emit(
            a.policy.choice(level).drop(columns=["candidate"]),
            "table",
            None,
            title="per-bin choices written",
        )
        console.print(f"wrote the policy ({len(doc['bins'])} bins) to {output}")


@app.command("plots")
def plots_cmd(
    out: Annotated[Path, typer.Option("--out", help="folder for the PNG files")] = Path(
        "runs/plots"
    ),
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    unit: UnitOpt = "tokens",
    measure: MeasureOpt = "agreement",
) -> None:
    """PNG plots: accuracy vs cost with the frontier, coverage with its fit, per bin."""
    from ttc.analysis import plots
    from ttc.analysis.analysis import by_bin_table

    with errors_to_exit():
        a = _analysis(store, runs, sweep, task, where, unit=unit, measure=measure)
        out.mkdir(parents=True, exist_ok=True)
        written = [out / f"accuracy_vs_{unit}.png"]
        plots.accuracy_cost(a.tables["points"], unit=unit, path=written[0])
        if a.coverage:
            written.append(out / "coverage.png")
            plots.coverage(a.coverage, path=written[-1])
        if a.policy is not None:
            written.append(out / "per_bin.png")
            plots.per_bin(
                by_bin_table(a), a.policy.choice(), measure=a.policy.measure, path=written[-1]
            )
        for path in written:
            console.print(f"wrote {path}")


@app.command("report")
def report_cmd(
    output: Annotated[Path, typer.Option("--output", "-o", help="HTML file")] = Path(
        "runs/report.html"
    ),
    runs: RunsArg = None,
    store: StoreOption = None,
    sweep: SweepOpt = None,
    task: TaskOpt = None,
    where: WhereOpt = None,
    unit: UnitOpt = "tokens",
    measure: MeasureOpt = "agreement",
    bins: BinsOpt = 3,
    probe: ProbeOpt = 4,
    title: Annotated[str, typer.Option(help="page title")] = "ttc analysis",
) -> None:
    """One self-contained HTML report: tables, embedded plots, configs, store and run ids."""
    from ttc.analysis import report

    with errors_to_exit():
        a = _analysis(
            store, runs, sweep, task, where, unit=unit, measure=measure, bins=bins, probe=probe
        )
        path = report.write(a, output, title=title)
        console.print(
            f"wrote {path} ({path.stat().st_size // 1024} KiB, {len(a.source.runs)} runs)"
        )


@app.command("sql")
def sql_cmd(
    store: StoreOption = None,
    create: Annotated[bool, typer.Option("--create", help="create the views in the store")] = False,
) -> None:
    """Print the SQL views (ttc_run_summary, ttc_samples, ttc_pass_counts), or create them."""
    from ttc.analysis.sql import create_views, views_sql

    with errors_to_exit():
        if not create:
            sys.stdout.write(views_sql())
            return
        from ttc.store import Store

        st = Store(store_url(store))
        try:
            names = create_views(st.engine)
        finally:
            st.close()
        console.print(f"created views: {', '.join(names)}")


def _empty() -> Any:
    import pandas as pd

    return pd.DataFrame()
