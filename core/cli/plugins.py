"""`ttc plugins`: what is installed and what each plugin registers."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from ttc.cli._common import console, errors_to_exit


def plugins(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """List plugins, their versions, and the backends/strategies/... each registers."""
    from ttc.registry import get_registry

    with errors_to_exit():
        registry = get_registry()
        rows: list[dict[str, Any]] = [
            {
                "name": p.name,
                "version": p.version,
                "distribution": p.distribution,
                "builtin": p.builtin,
                "provides": p.provides,
            }
            for p in registry.plugins.values()
        ]
        if as_json:
            console.print_json(json.dumps(rows))
            return
        table = Table(title="ttc plugins")
        for col in ("plugin", "version", "distribution", "registers"):
            table.add_column(col)
        for r in rows:
            provides = "; ".join(f"{k}: {', '.join(v)}" for k, v in sorted(r["provides"].items()))
            table.add_row(r["name"], r["version"], r["distribution"] or "-", provides or "-")
        console.print(table)


def register(app: typer.Typer) -> None:
    app.command("plugins")(plugins)
