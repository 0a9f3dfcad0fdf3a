"""How the gateway's requests reach the store: a store that cannot take a request's
transaction makes it a 500 that says nothing was stored (and the next request, once the
store is free, is stored once); with `serve.write_behind` the answer comes first."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

openai = pytest.importorskip("openai")

from ttc.store import Store  # noqa: E402

from gateway_harness import gateway  # noqa: E402

QUESTION = [{"role": "user", "content": "What is 6 * 7? answer=42"}]


def test_a_request_whose_transaction_fails_is_a_500_and_nothing_of_it_is_stored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_SQLITE_BUSY_TIMEOUT_MS", "300")
    db = tmp_path / "ttc.db"
    with gateway(f"sqlite:///{db}") as g:
        client = g.client()
        locker = sqlite3.connect(db, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another program holds the store's write lock
        try:
            with pytest.raises(openai.InternalServerError) as err:
                client.chat.completions.create(model="ttc/self_consistency", messages=QUESTION)
        finally:
            locker.execute("COMMIT")
            locker.close()
        message = err.value.message
        assert "could not be stored" in message and "locked" in message, message
        ok = client.chat.completions.create(model="ttc/self_consistency", messages=QUESTION)
        run_id = g.run.run_id or ""
    store = Store(f"sqlite:///{db}")
    try:
        rows = store.results(run_id)
        assert [r["problem_id"] for r in rows] == [ok.usage.ttc["problem_id"]]
        assert rows[0]["tokens"] == ok.usage.completion_tokens
    finally:
        store.close()


@pytest.mark.parametrize("level,pragma", [(None, 1), ("full", 2)])
def test_the_sqlite_store_syncs_at_checkpoints_unless_told_to_sync_every_commit(
    tmp_path: Path, level: str | None, pragma: int
) -> None:
    overrides = [] if level is None else [f"serve.sqlite_synchronous={level}"]
    with gateway(f"sqlite:///{tmp_path / 'ttc.db'}", *overrides) as g:
        with g.run.store.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
            assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == pragma
        g.client().chat.completions.create(model="ttc/self_consistency", messages=QUESTION)
        assert g.run.writer is not None and g.run.writer.batch_sizes == [1]


def test_a_request_searching_alone_does_not_wait_for_company(tmp_path: Path) -> None:
    """With nobody else searching, a batch has no one to wait for: even under a batching
    window of a minute, a lone request is answered at once (the client gives up after
    20 s); the window applies again when requests overlap (the load test's batches)."""
    with gateway(f"sqlite:///{tmp_path / 'ttc.db'}", "scheduler.max_wait_ms=60000") as g:
        client = g.client(timeout=20)
        for _ in range(2):
            resp = client.chat.completions.create(model="ttc/best_of_n", messages=QUESTION)
            assert resp.usage.ttc["samples"] >= 1
