"""The run store's tables (SQLAlchemy 2.0 typed models).

- `runs`: one row per run: resolved config (secrets masked), versions, hardware, status,
  totals, heartbeat and the fingerprint of its problems.
- `results`: one row per finished problem of a run (unique per run and problem).
- `nodes`: every branch of every search tree (parent links, tokens, text, scores).
- `calls`: every backend and reward call (kind, batch size, usage, latency).

Schema changes go through Alembic migrations in `ttc.store.migrations`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    strategy: Mapped[str] = mapped_column(String(100), index=True)
    backend: Mapped[str] = mapped_column(String(100))
    model: Mapped[str] = mapped_column(String(300), index=True)
    task: Mapped[str] = mapped_column(String(100), index=True)
    reward: Mapped[str] = mapped_column(String(100))
    sweep: Mapped[str | None] = mapped_column(String(300), index=True)
    n_problems: Mapped[int] = mapped_column(Integer, default=0)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    versions: Mapped[dict[str, Any]] = mapped_column(JSON)
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON)
    totals: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """Last sign of life of the process running it (see `ttc.store.liveness`)."""
    owner: Mapped[str | None] = mapped_column(String(300))
    """`host:pid` of the process that runs (or last ran) it."""
    fingerprint: Mapped[str | None] = mapped_column(String(64))
    """SHA-256 of the task's problems (ids, prompts, references): a resume must match it."""

    results: Mapped[list[Result]] = relationship(
        back_populates="run", lazy="raise", cascade="all, delete-orphan"
    )


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("run_id", "problem_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    problem_id: Mapped[str] = mapped_column(String(200))
    problem_index: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    answer: Mapped[str | None] = mapped_column(Text)
    reference: Mapped[str | None] = mapped_column(Text)
    correct: Mapped[bool | None]
    pass_at_1: Mapped[float | None] = mapped_column(Float)
    majority_correct: Mapped[bool | None]
    oracle_correct: Mapped[bool | None]
    n_branches: Mapped[int] = mapped_column(Integer, default=0)
    n_leaves: Mapped[int] = mapped_column(Integer, default=0)
    samples: Mapped[int] = mapped_column(Integer, default=0)
    tokens: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    prefill_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reward_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reward_calls: Mapped[int] = mapped_column(Integer, default=0)
    flops: Mapped[float] = mapped_column(Float, default=0.0)
    bytes: Mapped[float] = mapped_column(Float, default=0.0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    refused_calls: Mapped[int] = mapped_column(Integer, default=0)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)
    trace: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    run: Mapped[Run] = relationship(back_populates="results", lazy="raise")
    nodes: Mapped[list[Node]] = relationship(lazy="raise", cascade="all, delete-orphan")
    calls: Mapped[list[Call]] = relationship(lazy="raise", cascade="all, delete-orphan")


class Node(Base):
    __tablename__ = "nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    node_id: Mapped[int] = mapped_column(Integer)
    parent_id: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    """The text this node added to its parent (one step)."""
    n_tokens: Mapped[int] = mapped_column(Integer)
    cum_logprob: Mapped[float] = mapped_column(Float)
    step_scores: Mapped[list[Any]] = mapped_column(JSON)
    score: Mapped[float | None] = mapped_column(Float)
    finished: Mapped[bool]
    finish_reason: Mapped[str | None] = mapped_column(String(16))
    answer: Mapped[str | None] = mapped_column(Text)
    selected: Mapped[bool]
    extra: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Call(Base):
    __tablename__ = "calls"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    n_requests: Mapped[int] = mapped_column(Integer)
    n_sequences: Mapped[int] = mapped_column(Integer)
    batch_size: Mapped[int] = mapped_column(Integer)
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    cached_prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    reward_tokens: Mapped[int] = mapped_column(Integer)
    flops: Mapped[float] = mapped_column(Float)
    latency_s: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)
