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
        engine.dispose()


@app.command("downgrade")
def downgrade(
    revision: Annotated[str, typer.Argument(help="target revision, e.g. base")],
    store: StoreOption = None,
) -> None:
    """Revert the store's migrations down to REVISION."""
    from alembic import command
    from sqlalchemy.exc import DBAPIError

    from ttc.store.store import alembic_config, make_engine, migration_error, store_error

    with errors_to_exit():
        # downgrading a store that does not exist is a typo, not a request for a new one
        engine = make_engine(store_url(store), create=False)
        cfg = alembic_config(engine)
        try:
            with engine.begin() as conn:
                cfg.attributes["connection"] = conn
                command.downgrade(cfg, revision)
        except DBAPIError as exc:
            raise store_error(engine.url, exc) from exc
        except Exception as exc:  # alembic's CommandError: an unknown revision
            raise migration_error(engine, revision, exc) from exc
        finally:
            engine.dispose()
        console.print(f"store downgraded to {revision}")
