"""Fixture: a store filled with synthetic runs whose per-problem success probabilities are known."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.analysis.synthetic import SyntheticEnv
from ttc.store import Store

_CACHE: dict[str, tuple[str, SyntheticEnv, dict]] = {}


def known_store_for(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, SyntheticEnv, dict]:
    """300 problems of known p: best_of_n and self_consistency with 16 samples, and a
    step-level stand-in, written through the real Store API into SQLite."""
    if "store" in _CACHE:  # built once per session, shared by the test modules
        return _CACHE["store"]
    path: Path = tmp_path_factory.mktemp("analysis") / "known.db"
    url = f"sqlite:///{path}"
    env = SyntheticEnv.spread(300, seed=7)
    store = Store(url)
    ids = {
        "best_of_n": env.write_run(store, strategy="best_of_n", n=16),
        "self_consistency": env.write_run(store, strategy="self_consistency", n=16),
        "beam_search": env.write_run(store, strategy="beam_search", width=4),
    }
    store.close()
    _CACHE["store"] = (url, env, ids)
    return _CACHE["store"]
