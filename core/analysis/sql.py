"""SQL views that give the analysis's per-run numbers to users of plain SQL.

The statements live in `views.sql` (package data), read by `view_statements` and run by
`create_views`; docs/analysis.md points at that file, and a test checks the views
against `ttc.analysis`.
"""

from __future__ import annotations

import importlib.resources
from typing import Any

from sqlalchemy import text


def views_sql() -> str:
    """The text of views.sql."""
    return importlib.resources.files("ttc.analysis").joinpath("views.sql").read_text()


def view_statements(dialect: str = "sqlite") -> list[str]:
    """The CREATE VIEW statements (PostgreSQL spells `IF NOT EXISTS` as `OR REPLACE`)."""
    body = "\n".join(
        line for line in views_sql().splitlines() if not line.lstrip().startswith("--")
    )
    statements = [s.strip() for s in body.split(";") if s.strip()]
    if dialect == "postgresql":
        statements = [
            s.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW") for s in statements
        ]
    return statements


def create_views(engine: Any) -> list[str]:
    """Create the views in the store; return their names."""
    names = []
    with engine.begin() as conn:
        for statement in view_statements(engine.dialect.name):
            conn.execute(text(statement))
            names.append(statement.split(" AS", 1)[0].split()[-1])
    return names
