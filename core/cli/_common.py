"""What every command shares: the console, typed-error handling and the store option."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape

from ttc.errors import TtcError

console = Console()
err_console = Console(stderr=True)

DEFAULT_STORE_URL = "sqlite:///runs/ttc.db"

StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="SQLAlchemy URL of the run store (default: $TTC_STORE_URL or sqlite:///runs/ttc.db)",
    ),
]


def store_url(given: str | None) -> str:
    return given or os.environ.get("TTC_STORE_URL") or DEFAULT_STORE_URL


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Print a ttc error as one line plus a hint and exit non-zero (no traceback)."""
    try:
        yield
    except TtcError as exc:
        # One line: what is wrong, then what to do about it.
        from ttc.store.secrets import scrub  # a URL in a message must not show its password

        hint = f" (hint: {exc.hint})" if exc.hint else ""
        err_console.print(
            f"[bold red]error:[/] {escape(scrub(exc.message))}[dim]{escape(scrub(hint))}[/]",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: finished problems are stored; "
            "continue with `ttc run resume=<run id>`"
        )
        raise typer.Exit(130) from None


def fmt(value: Any, key: str = "") -> str:
    """Human formatting of a total (accuracies as percentages, FLOPs in engineering form)."""
    if value is None:
        return "-"
    if key in ("accuracy", "pass_at_1", "majority", "oracle_pass_at_n"):
        return f"{100 * float(value):.1f}%"
    if key == "flops":
        return f"{float(value):.3e}"
    if key == "seconds_per_problem":
        return f"{float(value):.2f}"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def totals_table(run_id: str, totals: dict[str, Any], *, status: str = "") -> Any:
    """The run's totals as a two-column table (`ttc run` and `ttc runs show` print it)."""
    from rich.table import Table

    from ttc.store import TOTAL_KEYS

    table = Table(title=f"run {run_id}" + (f" ({status})" if status else ""))
    table.add_column("total")
    table.add_column("value", justify="right")
    for key in TOTAL_KEYS:
        table.add_row(key, fmt(totals.get(key), key))
    return table
