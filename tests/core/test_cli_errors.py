"""The root command group's error handling (`ttc.cli._common.OneLineErrors`)."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from ttc.cli._common import OneLineErrors


def _app(error: BaseException) -> typer.Typer:
    app = typer.Typer(cls=OneLineErrors)

    @app.command()
    def boom() -> None:
        raise error

    @app.command()
    def fine() -> None:
        pass

    return app


def test_an_unexpected_error_surfaces_as_itself() -> None:
    """A bug in a command shows its own exception; before, evaluating the handler's
    `click.exceptions.Abort` (absent from the click typer carries) raised AttributeError."""
    result = CliRunner().invoke(_app(KeyError("run-id")), ["boom"])
    assert isinstance(result.exception, KeyError), repr(result.exception)


def test_abort_prints_aborted_and_exits_1() -> None:
    result = CliRunner().invoke(_app(typer.Abort()), ["boom"])
    assert result.exit_code == 1
    assert "aborted" in result.output
