"""The synthetic environment's runs are stored as real runs are: one problem at a time
or all in one transaction (`bulk`), the same rows come back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ttc.analysis.synthetic import SyntheticEnv
from ttc.store import Store

VOLATILE = {"id", "run_id", "result_id", "created_at"}


def _stored(store: Store, run_id: str) -> list[Any]:
    out = []
    for r in store.results(run_id):
        nodes = store.nodes(run_id, r["problem_id"])
        calls = store.calls(run_id, r["problem_id"])
        out.append(
            (
                {k: v for k, v in r.items() if k not in VOLATILE},
                [{k: v for k, v in n.items() if k not in VOLATILE} for n in nodes],
                [{k: v for k, v in c.items() if k not in VOLATILE} for c in calls],
            )
        )
    return out


@pytest.mark.parametrize("strategy", ["best_of_n", "beam_search"])
def test_a_bulk_run_stores_what_a_problem_at_a_time_run_stores(
    tmp_path: Path, strategy: str
) -> None:
    env = SyntheticEnv.spread(12, seed=3)
    one = Store(f"sqlite:///{tmp_path / 'one.db'}")
    bulk = Store(f"sqlite:///{tmp_path / 'bulk.db'}")
    a = env.write_run(one, strategy=strategy, n=4, probe=2)
    b = env.write_run(bulk, strategy=strategy, n=4, probe=2, bulk=True)
    rows_a, rows_b = _stored(one, a), _stored(bulk, b)
    assert len(rows_a) == 12 and any(nodes for _, nodes, _ in rows_a)
    assert rows_a == rows_b
    assert one.totals(a) | {"wall_s": 0} == bulk.totals(b) | {"wall_s": 0}
