"""Shared pieces of the Ray executor tests: a local cluster per module, and the checks
that every problem of a run is stored exactly once."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select

from ttc.store import Store
from ttc.store.models import Result

from conftest import DOUBLES, TESTS_DIR

RAY_DOUBLES = [*DOUBLES, "run.executor=ray", "ray.cpus_per_actor=0.25"]
"""A job on the test doubles, solved by Ray actors that fit a 2-CPU test cluster."""


@contextmanager
def worker_env() -> Iterator[None]:
    """Ray's worker processes import the test doubles (`doubles`) from tests/."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), saved) if p)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved


def stored_counts(url: str, run_id: str) -> Counter[str]:
    """How many result rows each problem of the run has."""
    store = Store(url)
    try:
        with store.session() as s:
            ids = s.scalars(select(Result.problem_id).where(Result.run_id == run_id)).all()
    finally:
        store.close()
    return Counter(ids)


def answers(url: str, run_id: str) -> dict[str, Any]:
    store = Store(url)
    try:
        return {r["problem_id"]: (r["answer"], r["tokens"]) for r in store.results(run_id)}
    finally:
        store.close()
