"""`ttc serve`: the OpenAI-compatible gateway (see docs/serve.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from ttc.cli._common import console, errors_to_exit, take_verbose
from ttc.errors import ConfigError

if TYPE_CHECKING:
    from ttc.serve import ServingRun


def serve(ctx: typer.Context) -> None:
    """Serve `/v1/chat/completions`, `/v1/completions` and `/v1/models`: `ttc serve
    \\[key=value ...]` with `ttc run`'s overrides (backend, reward, default strategy,
    budget, store) plus serve.* (host, port, api_keys_env, max_budget.*). Every request
    is a problem of one serving run in the store.
    """
    from ttc.serve.server import compose_serve, serve_forever

    def ready(run: ServingRun, url: str) -> None:
        console.print(f"serving run {run.run_id} at {url} (Ctrl-C stops)", highlight=False)

    with errors_to_exit():
        args = take_verbose(ctx.args)
        if any(a.startswith("-") for a in args):
            raise ConfigError(
                f"ttc serve takes overrides only, not {next(a for a in args if a[0] == '-')}",
                hint="e.g. `ttc serve backend=hf serve.port=8000`",
            )
        run = serve_forever(compose_serve(args), on_ready=ready)
        if run.run_id is not None:
            console.print(
                f"stopped: run {run.run_id}, {run.answered} requests answered", highlight=False
            )


def register(app: typer.Typer) -> None:
    app.command(
        "serve",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(serve)
