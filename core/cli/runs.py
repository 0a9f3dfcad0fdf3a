"""`ttc runs`: list, show and export stored runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ttc.cli._common import StoreOption, console, errors_to_exit, fmt, open_store, totals_table
from ttc.errors import TtcError

RUN_STATUSES = ("running", "finished", "failed", "interrupted", "stale")
"""What `--status` may filter on."""

app = typer.Typer(help="Query the run store.", no_args_is_help=True)


@app.command("list")
def list_runs(
    store: StoreOption = None,
    limit: Annotated[int, typer.Option(min=1, help="newest N runs")] = 20,
    status: Annotated[str | None, typer.Option(help="only runs with this status")] = None,
) -> None:
    """List runs, newest first."""
    from ttc.store.store import store_errors

    with errors_to_exit():
        if status is not None and status not in RUN_STATUSES:
            raise TtcError(
                f"--status {status!r} is not a run status; valid choices: "
                f"{', '.join(RUN_STATUSES)}",
                hint="leave --status out to list every run",
            )
        st = open_store(store)
        with store_errors(st.url):
            rows = st.list_runs(limit=limit, status=status)
        table = Table(title="runs")
        table.add_column("id", no_wrap=True)
        for col in ("created", "status", "strategy", "model", "task", "problems", "accuracy"):
            table.add_column(col)
        for r in rows:
            t = r["totals"] or {}
            table.add_row(
                r["id"],
                r["created_at"].strftime("%Y-%m-%d %H:%M:%S"),
                r["status"],
                r["strategy"],
                r["model"],
                r["task"],
                f"{t.get('problems', 0)}/{r['n_problems']}",
                fmt(t.get("accuracy"), "accuracy"),
            )
        console.print(table)


@app.command("show")
def show(
    run_id: Annotated[str, typer.Argument(help="run id (a unique prefix is enough)")],
    store: StoreOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Show a run's config summary and totals (recomputed from its stored problems)."""
    from ttc.store.store import store_errors

    with errors_to_exit():
        st = open_store(store)
        with store_errors(st.url):
            run = st.get_run(run_id)
            totals = st.totals(run["id"])
        if as_json:
            console.print_json(json.dumps({**run, "totals": totals}, default=str))
            return
        wall = ""
        if run["finished_at"] is not None:
            wall = f" wall={(run['finished_at'] - run['created_at']).total_seconds():.1f}s"
        console.print(
            f"strategy={run['strategy']} backend={run['backend']} model={run['model']} "
            f"task={run['task']} reward={run['reward']} status={run['status']}{wall}",
            highlight=False,
        )
        console.print(totals_table(run["id"], totals, status=run["status"]))


@app.command("export")
def export(
    run_id: Annotated[str, typer.Argument(help="run id (a unique prefix is enough)")],
    fmt_: Annotated[str, typer.Option("--format", help="jsonl or csv")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file to write (default: stdout)")
    ] = None,
    store: StoreOption = None,
) -> None:
    """Export one row per problem of a run."""
    from ttc.store.store import store_errors

    with errors_to_exit():
        if fmt_ not in EXPORT_FORMATS:
            raise TtcError(
                f"--format {fmt_!r} is not an export format; valid choices: "
                f"{', '.join(EXPORT_FORMATS)}",
                hint="pass --format jsonl or --format csv",
            )
        if output is not None:
            check_output_path(output)
        st = open_store(store)
        with store_errors(st.url):
            run_id = st.resolve_id(run_id)  # before a file is created
            if output is None:
                st.export(run_id, sys.stdout, fmt=fmt_)
                return
            try:
                with output.open("w", newline="") as fh:
                    n = st.export(run_id, fh, fmt=fmt_)
            except OSError as exc:
                raise TtcError(
                    f"cannot write '{output}': {exc.strerror}",
                    hint="choose another --output path",
                ) from exc
        console.print(f"wrote {n} rows to {output}")


EXPORT_FORMATS = ("jsonl", "csv")


def check_output_path(output: Path) -> None:
    """A file that can be written: not a folder, in a folder that exists."""
    if output.is_dir():
        raise TtcError(
            f"--output '{output}' is a directory",
            hint=f"give a file name, e.g. -o {output / 'run.jsonl'}",
        )
    parent = output.parent
    for folder in (parent, *parent.parents):
        if folder.exists():
            if not folder.is_dir():
                raise TtcError(
                    f"cannot write '{output}': '{folder}' is a file, not a folder",
                    hint="choose another --output path",
                )
            break
    if not parent.is_dir():
        raise TtcError(
            f"cannot write '{output}': the folder '{parent}' does not exist",
            hint=f"create it first (mkdir -p {parent}) or choose another --output path",
        )
