"""What every command shares: the console, typed-error handling and the store option."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

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


def open_store(given: str | None, *, create: bool = False) -> Any:
    """The store a command names (--store, $TTC_STORE_URL, the default). Read commands
    pass `create=False`: a mistyped SQLite path is an error, not a new empty store."""
    from ttc.store.store import open_store as _open

    return _open(store_url(given), create=create)


def print_error(message: str, hint: str | None = None) -> None:
    """`error: <message> (hint: <hint>)` on stderr, one line whatever the width."""
    from ttc.store.secrets import scrub  # a URL in a message must not show its password

    shown = f" (hint: {hint})" if hint else ""
    err_console.print(
        f"[bold red]error:[/] {escape(scrub(message))}[dim]{escape(scrub(shown))}[/]",
        highlight=False,
        soft_wrap=True,
    )


def _click() -> Any:
    """The click that typer runs on (recent typer releases carry their own copy)."""
    try:
        from typer import _click as vendored  # type: ignore[attr-defined]

        return vendored
    except ImportError:
        import click

        return click


VERBOSE_FLAGS = ("--verbose", "-v")


def take_verbose(args: list[str]) -> list[str]:
    """`args` of a command that passes its arguments on (as Hydra overrides) without
    `--verbose`/`-v`, which then act as `ttc --verbose` does wherever they stand."""
    if any(a in VERBOSE_FLAGS for a in args):
        set_verbose(True)
    return [a for a in args if a not in VERBOSE_FLAGS]


def set_verbose(on: bool) -> None:
    """`ttc --verbose`: ttc's own detail (retries, probes) and the libraries' bars and
    warnings; without it only ttc's progress, tables and errors are printed."""
    import logging

    from ttc.progress import VERBOSE_ENV

    if not on:
        return
    os.environ[VERBOSE_ENV] = "1"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    logger = logging.getLogger("ttc")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def _abort(click: Any) -> type[BaseException]:
    """Click's Abort (Ctrl-C at a prompt); typer releases that carry their own click
    define it in `typer.exceptions` instead."""
    found: type[BaseException] | None = getattr(click.exceptions, "Abort", None)
    if found is None:
        from typer.exceptions import Abort

        found = Abort
    return found


class OneLineErrors(TyperGroup):
    """The root command group: click's usage errors (a bad option value, a missing
    argument) print one line naming the option and how to get help, like ttc's own."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        click = _click()
        standalone = kwargs.pop("standalone_mode", True)
        try:
            rv = super().main(*args, **{**kwargs, "standalone_mode": False})
        except click.exceptions.UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # the help is already printed
                if not standalone:
                    raise
                sys.exit(exc.exit_code)
            where = exc.ctx.command_path if exc.ctx is not None else "ttc"
            print_error(exc.format_message(), f"see `{where} --help`")
            if not standalone:
                raise
            sys.exit(exc.exit_code)
        except click.exceptions.ClickException as exc:
            print_error(exc.format_message())
            if not standalone:
                raise
            sys.exit(exc.exit_code)
        except _abort(click):
            if not standalone:
                raise
            err_console.print("aborted")
            sys.exit(1)
        if not standalone:
            return rv
        sys.exit(rv if isinstance(rv, int) else 0)


@contextlib.contextmanager
def errors_to_exit() -> Iterator[None]:
    """Print a ttc error as one line plus a hint and exit non-zero (no traceback)."""
    try:
        yield
    except TtcError as exc:
        # One line: what is wrong, then what to do about it.
        print_error(exc.message, exc.hint)
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
    if key in ("wall_s", "mean_latency_s"):
        return f"{float(value):,.2f}"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"  # like the progress line: 5,212
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
