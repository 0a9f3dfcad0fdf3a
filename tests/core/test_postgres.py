"""The store on a real PostgreSQL server (started by .ci/run via scripts/postgres.sh).

Skipped unless TTC_TEST_POSTGRES_URL names an empty database.
"""

from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store

from conftest import DOUBLES

URL = os.environ.get("TTC_TEST_POSTGRES_URL")
pytestmark = [
    pytest.mark.postgres,
    pytest.mark.skipif(not URL, reason="set TTC_TEST_POSTGRES_URL (bash scripts/postgres.sh)"),
]


@pytest.fixture
def pg_url() -> str:
    assert URL
    store = Store(URL)
    with store.engine.begin() as conn:  # a clean schema for every test
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    store.close()
    return URL


def test_a_run_and_its_tree_are_stored_in_postgres(pg_url: str) -> None:
    cfg = compose([*DOUBLES, f"store.url={pg_url}", "strategy=beam_search", "task.n_problems=6"])
    outcome = Runner(cfg).run()
    store = Store(pg_url)
    results = store.results(outcome.run_id)
    assert len(results) == 6
    assert store.totals(outcome.run_id) == outcome.totals
    assert outcome.totals["tokens"] == sum(r["tokens"] for r in results)
    nodes = store.nodes(outcome.run_id, "p000")
    assert sum(n["selected"] for n in nodes) == 1
    assert store.get_run(outcome.run_id)["status"] == "finished"


def test_a_problem_is_written_once_even_when_recorded_twice(pg_url: str) -> None:
    cfg = compose([*DOUBLES, f"store.url={pg_url}", "task.n_problems=2"])
    outcome = Runner(cfg).run()
    store = Store(pg_url)
    (first, *_) = store.results(outcome.run_id)
    assert store.finished_problem_ids(outcome.run_id) == {"p000", "p001"}
    # the unique (run, problem) constraint makes a second write of p000 a no-op
    from ttc.types import Problem, ProblemResult

    again = ProblemResult(
        index=0, problem=Problem(id="p000"), status="ok", answer="1", correct=False,
        pass_at_1=None, majority_correct=None, oracle_correct=None, spent={}, budget={},
        branches=[], calls=[],
    )  # fmt: skip
    assert store.record_problem(outcome.run_id, again) is False
    assert store.results(outcome.run_id)[0]["answer"] == first["answer"]
