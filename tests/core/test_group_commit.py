"""Group commit: many finished problems in one transaction (`Store.record_problems`), and
the writer that gathers the problems of concurrent callers into such batches
(`GroupWriter`, what `ttc serve` stores its requests with). Real SQLite stores; the
failures are real ones (a unique-key clash, another connection holding the lock)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import event, text

from ttc.errors import RunNotFoundError, StoreError
from ttc.store import Store
from ttc.store.writer import GroupWriter
from ttc.types import Branch, CallRecord, Problem, ProblemResult


def result(i: int, *, status: str = "ok", answer: str | None = None) -> ProblemResult:
    """A finished problem with a small tree (root and `i % 3 + 1` samples) and calls."""
    n = i % 3 + 1
    branches = [Branch(id=0, parent_id=None, step=0, token_ids=(), step_texts=())]
    for k in range(1, n + 1):
        branches.append(
            Branch(
                id=k,
                parent_id=0,
                step=1,
                token_ids=tuple(range(k + 2)),
                step_texts=(f"sample {k} of {i}",),
                cum_logprob=-0.5 * k,
                step_scores=(0.1 * k,),
                finished=True,
                finish_reason="stop",
                new_tokens=k + 2,
                answer=str(i),
                score=0.1 * k,
                selected=k == n,
                extra={"k": k},
            )
        )
    tokens = sum(b.new_tokens for b in branches)
    calls = [
        CallRecord(
            seq=0,
            kind="generate",
            status="ok",
            n_requests=1,
            n_sequences=n,
            batch_size=n,
            prompt_tokens=7,
            completion_tokens=tokens,
            flops=1e6 * tokens,
            latency_s=0.01,
        )
    ]
    return ProblemResult(
        index=i,
        problem=Problem(id=f"p{i}", prompt=f"question {i}", reference=str(i)),
        status=status,  # type: ignore[arg-type]
        answer=answer if answer is not None else (str(i) if status == "ok" else None),
        correct=status == "ok",
        pass_at_1=1.0,
        majority_correct=True,
        oracle_correct=True,
        spent={"samples": n, "tokens": tokens, "prompt_tokens": 7, "flops": 1e6 * tokens},
        budget={"tokens": 1000},
        branches=branches,
        calls=calls,
        n_leaves=n,
        trace={"i": i},
        error=None if status == "ok" else "Boom: failed",
    )


def new_store(tmp_path: Path, name: str = "ttc.db") -> tuple[Store, str]:
    store = Store(f"sqlite:///{tmp_path / name}")
    run_id = store.create_run(
        config={},
        strategy="best_of_n",
        backend="scripted",
        model="m",
        task="t",
        reward="none",
        versions={},
        hardware={},
    )
    return store, run_id


def count_commits(store: Store) -> list[int]:
    commits = [0]

    @event.listens_for(store.engine, "commit")
    def _(conn: object) -> None:
        commits[0] += 1

    return commits


def stored_ids(store: Store, run_id: str) -> list[str]:
    return sorted(r["problem_id"] for r in store.results(run_id))


def test_a_batch_is_one_commit_and_reads_back_as_problems_written_one_by_one(
    tmp_path: Path,
) -> None:
    one, run_one = new_store(tmp_path, "one.db")
    many, run_many = new_store(tmp_path, "many.db")
    results = [result(i) for i in range(6)]
    for r in results:
        assert one.record_problem(run_one, r) is True
    commits = count_commits(many)
    assert many.record_problems(run_many, results) == [True] * 6
    assert commits[0] == 1

    def strip(rows: list[dict]) -> list[dict]:
        drop = {"id", "run_id", "result_id", "created_at"}
        return [{k: v for k, v in row.items() if k not in drop} for row in rows]

    assert strip(many.results(run_many)) == strip(one.results(run_one))
    assert strip(many.calls(run_many)) == strip(one.calls(run_one))
    for r in results:
        nodes = many.nodes(run_many, r.problem.id)
        assert strip(nodes) == strip(one.nodes(run_one, r.problem.id))
        assert len(nodes) == len(r.branches)  # each tree is whole
        assert [n["text"] for n in nodes[1:]] == [b.step_texts[-1] for b in r.branches[1:]]
    assert many.totals(run_many)["tokens"] == sum(r.spent["tokens"] for r in results)


def test_a_batch_meeting_stored_or_repeated_problems_writes_each_once(tmp_path: Path) -> None:
    store, run_id = new_store(tmp_path)
    assert store.record_problem(run_id, result(1, answer="first")) is True
    batch = [result(0), result(1, answer="second"), result(2), result(2, answer="again")]
    assert store.record_problems(run_id, batch) == [True, False, True, False]
    rows = {r["problem_id"]: r for r in store.results(run_id)}
    assert sorted(rows) == ["p0", "p1", "p2"]
    assert rows["p1"]["answer"] == "first" and rows["p2"]["answer"] == "2"
    assert len(store.nodes(run_id, "p1")) == len(result(1).branches)  # not doubled


PG_URL = os.environ.get("TTC_TEST_POSTGRES_URL")


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set TTC_TEST_POSTGRES_URL (bash scripts/postgres.sh)")
def test_a_unique_key_clash_inside_the_batch_falls_back_to_one_by_one() -> None:
    """Another process stores one of the batch's problems after the batch read what was
    stored (on PostgreSQL nothing stops it; SQLite's write lock, taken first, does): the
    batch rolls back and its problems are written one transaction each, none lost, none
    stored twice."""
    assert PG_URL
    clean = Store(PG_URL)
    with clean.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    clean.close()
    store = Store(PG_URL)
    run_id = store.create_run(
        config={}, strategy="s", backend="b", model="m", task="t", reward="r",
        versions={}, hardware={},
    )  # fmt: skip
    other = Store(PG_URL)
    sneaked = [False]

    @event.listens_for(store.engine, "before_cursor_execute")
    def race(conn, cursor, statement, params, context, executemany):  # type: ignore[no-untyped-def]
        if statement.lstrip().upper().startswith("INSERT INTO RESULTS") and not sneaked[0]:
            sneaked[0] = True  # a plain insert: the batch holds the run's row lock
            with other.engine.begin() as raw:
                raw.execute(
                    text(
                        "INSERT INTO results (run_id, problem_id, problem_index, status, "
                        "n_branches, n_leaves, samples, tokens, prompt_tokens, "
                        "cached_prompt_tokens, prefill_tokens, reward_tokens, reward_calls, "
                        "flops, bytes, seconds, refused_calls, budget, created_at, answer) "
                        "VALUES (:run, 'p1', 1, 'ok', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "
                        "'{}', now(), 'other')"
                    ),
                    {"run": run_id},
                )

    try:
        written = store.record_problems(run_id, [result(0), result(1), result(2)])
        assert sneaked[0]
        assert written == [True, False, True]
        rows = {r["problem_id"]: r for r in other.results(run_id)}
        assert sorted(rows) == ["p0", "p1", "p2"]
        assert rows["p1"]["answer"] == "other"
        assert len(other.nodes(run_id, "p0")) == len(result(0).branches)
        assert other.nodes(run_id, "p1") == []  # the batch's p1 tree was not added to it
    finally:
        other.close()
        store.close()


def test_replace_error_in_a_batch_replaces_only_stored_errors(tmp_path: Path) -> None:
    store, run_id = new_store(tmp_path)
    assert store.record_problems(run_id, [result(0, status="error"), result(1)]) == [True, True]
    again = [result(0), result(1, answer="new")]
    assert store.record_problems(run_id, again, replace_error=True) == [True, False]
    rows = {r["problem_id"]: r for r in store.results(run_id)}
    assert rows["p0"]["status"] == "ok" and rows["p1"]["answer"] == "1"
    assert len(store.nodes(run_id, "p0")) == len(result(0).branches)  # the old tree is gone


def test_a_batch_for_an_unknown_run_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    store, run_id = new_store(tmp_path)
    with pytest.raises(RunNotFoundError):
        store.record_problems("nosuchrun", [result(0)])
    assert store.totals(run_id)["problems"] == 0


def test_concurrent_writers_share_commits(tmp_path: Path) -> None:
    """Writes arriving while a commit waits (here: for another connection's lock) are
    gathered into the next transaction: 16 writes, 2 commits, each problem once."""
    store, run_id = new_store(tmp_path)
    commits = count_commits(store)
    locker = sqlite3.connect(tmp_path / "ttc.db", isolation_level=None, check_same_thread=False)
    locker.execute("BEGIN IMMEDIATE")

    def release() -> None:
        time.sleep(0.5)
        locker.execute("COMMIT")

    async def main() -> list[bool]:
        writer = GroupWriter(store, run_id)
        threading.Thread(target=release).start()
        first = asyncio.ensure_future(writer.write(result(0)))
        await asyncio.sleep(0.05)  # its commit now waits for the lock
        rest = []
        for i in range(1, 16):
            rest.append(asyncio.ensure_future(writer.write(result(i))))
            await asyncio.sleep(0.005)
        out = await asyncio.gather(first, *rest)
        await writer.close()
        assert writer.batch_sizes == [1, 15]
        return list(out)

    assert asyncio.run(main()) == [True] * 16
    locker.close()
    assert commits[0] == 2
    assert stored_ids(store, run_id) == sorted(f"p{i}" for i in range(16))


def test_a_failed_batch_commit_writes_nothing_tells_every_caller_and_a_retry_stores_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TTC_SQLITE_BUSY_TIMEOUT_MS", "200")
    store, run_id = new_store(tmp_path)
    locker = sqlite3.connect(tmp_path / "ttc.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")  # another program holds the write lock too long

    async def main() -> None:
        writer = GroupWriter(store, run_id)
        outcomes = await asyncio.gather(
            *(writer.write(result(i)) for i in range(4)), return_exceptions=True
        )
        assert all(isinstance(o, StoreError) for o in outcomes), outcomes
        message = str(outcomes[0])
        assert "locked" in message and "\n" not in message
        assert stored_ids(store, run_id) == []  # nothing half-written
        locker.execute("COMMIT")
        assert await asyncio.gather(*(writer.write(result(i)) for i in range(4))) == [True] * 4
        assert await writer.write(result(2)) is False
        await writer.close()

    asyncio.run(main())
    locker.close()
    assert stored_ids(store, run_id) == ["p0", "p1", "p2", "p3"]
    assert len(store.nodes(run_id, "p2")) == len(result(2).branches)


def test_close_commits_every_queued_write_and_then_refuses(tmp_path: Path) -> None:
    store, run_id = new_store(tmp_path)

    async def main() -> None:
        writer = GroupWriter(store, run_id)
        pending = [writer.submit(result(i)) for i in range(10)]  # nobody awaits them
        await writer.close()
        assert all(p.done() and p.result() is True for p in pending)
        with pytest.raises(RuntimeError, match="closed"):
            writer.submit(result(11))

    asyncio.run(main())
    assert stored_ids(store, run_id) == sorted(f"p{i}" for i in range(10))
