"""`ttc db`: manage the run store's schema."""

from __future__ import annotations

from typing import Annotated

import typer

from ttc.cli._common import StoreOption, console, errors_to_exit, store_url

app = typer.Typer(help="Manage the run store's schema (Alembic migrations).", no_args_is_help=True)


@app.command("upgrade")
def upgrade(
    store: StoreOption = None,
    revision: Annotated[str, typer.Argument(help="target revision")] = "head",
) -> None:
    """Apply the store's migrations up to REVISION (default: head)."""
    from ttc.store.store import make_engine
    from ttc.store.store import upgrade as do_upgrade

    with errors_to_exit():
        url = store_url(store)
        engine = make_engine(url)
        do_upgrade(engine, revision)
        console.print(f"store at {engine.url.render_as_string()} is at revision {revision}")


@app.command("downgrade")
def downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, e.g. base")],
    store: StoreOption = None,
) -> None:
    """Revert the store's migrations down to REVISION."""
    from alembic import command

    from ttc.store.store import alembic_config, make_engine

    with errors_to_exit():
        engine = make_engine(store_url(store))
        cfg = alembic_config(engine)
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
        console.print(f"store downgraded to {revision}")
