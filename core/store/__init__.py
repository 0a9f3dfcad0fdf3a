"""The run store (SQLAlchemy models, Alembic migrations, reads and writes)."""

from ttc.store.store import TOTAL_KEYS, Store, upgrade

__all__ = ["TOTAL_KEYS", "Store", "upgrade"]
