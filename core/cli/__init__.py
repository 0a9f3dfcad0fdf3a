"""The `ttc` command line: one module per command group, each thin over library calls."""

from __future__ import annotations

from typing import Annotated

import typer

from ttc.cli import analyze, db, plugins, run, runs, serve
from ttc.cli._common import OneLineErrors, set_verbose

app = typer.Typer(
    name="ttc",
    help="Test-time compute for LLMs: search, verify, count every token, store every run.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    cls=OneLineErrors,
)


@app.callback()
def _root(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="show detail: retries, libraries' progress bars and warnings",
        ),
    ] = False,
) -> None:
    set_verbose(verbose)


run.register(app)
plugins.register(app)
serve.register(app)
app.add_typer(runs.app, name="runs")
app.add_typer(db.app, name="db")
app.add_typer(analyze.app, name="analyze")


def main() -> None:
    app()
