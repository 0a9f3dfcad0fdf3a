"""run heartbeat, owner and problem fingerprint

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 10:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


# recreate="never": plain ALTER TABLE ADD/DROP COLUMN (SQLite >= 3.35). Recreating `runs`
# would drop it, and with foreign keys on, dropping it deletes every result (ON DELETE
# CASCADE).


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None, recreate="never") as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("owner", sa.String(length=300), nullable=True))
        batch_op.add_column(sa.Column("fingerprint", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("fingerprint")
        batch_op.drop_column("owner")
        batch_op.drop_column("heartbeat_at")
