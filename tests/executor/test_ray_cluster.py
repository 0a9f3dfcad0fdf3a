"""The Ray executor on a two-node cluster on this machine (`ray.cluster_utils.Cluster`,
shared by the module): SQLite refused across nodes; with a real PostgreSQL
(TTC_TEST_POSTGRES_URL, started by .ci/run), 2 nodes x 2 actors give the local answers
and 8 actors write concurrently without losing or doubling a row."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster
from sqlalchemy import func, select, text

from ttc.errors import ConfigError
from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store
from ttc.store.models import Call, Node, Result

from conftest import DOUBLES
from ray_harness import RAY_DOUBLES, answers, stored_counts, worker_env

PG_URL = os.environ.get("TTC_TEST_POSTGRES_URL")
needs_postgres = pytest.mark.skipif(
    not PG_URL, reason="set TTC_TEST_POSTGRES_URL (bash scripts/postgres.sh)"
)


@pytest.fixture(scope="module", autouse=True)
def two_nodes() -> Iterator[Cluster]:
    with worker_env():
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            yield cluster
        finally:
            ray.shutdown()
            cluster.shutdown()


@pytest.fixture
def pg_url() -> str:
    assert PG_URL
    store = Store(PG_URL)
    with store.engine.begin() as conn:  # a clean schema for every test
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    store.close()
    return PG_URL


def run_in_thread(runner: Runner, *, timeout: float) -> Any:
    """`runner.run()`, failing the test instead of hanging when it deadlocks."""
    out: list[Any] = []
    failed: list[BaseException] = []

    def go() -> None:
        try:
            out.append(runner.run())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"the run did not finish within {timeout} s"
    if failed:
        raise failed[0]
    return out[0]


def test_sqlite_is_refused_for_a_run_across_nodes_in_one_line(store_url: str) -> None:
    with pytest.raises(ConfigError) as err:
        Runner(compose([*RAY_DOUBLES, f"store.url={store_url}", "task.n_problems=2"])).run()
    message = str(err.value)
    assert "across 2 nodes" in message and "use store=postgres" in message
    assert "\n" not in message
    assert Store(store_url).list_runs() == []  # refused before the run was recorded


@pytest.mark.postgres
@needs_postgres
def test_two_nodes_two_actors_each_store_the_local_answers_once(pg_url: str) -> None:
    job = ["strategy=beam_search", "task.n_problems=16", "run.seed=3"]
    local = Runner(compose([*DOUBLES, f"store.url={pg_url}", *job])).run()
    cfg = compose([*RAY_DOUBLES, f"store.url={pg_url}", *job, "ray.actors_per_node=2"])
    runner = Runner(cfg)
    remote = run_in_thread(runner, timeout=240)
    assert remote.status == "finished"
    assert len(runner.executor.nodes_used) == 2  # the actors ran on both nodes
    counts = stored_counts(pg_url, remote.run_id)
    assert len(counts) == 16 and set(counts.values()) == {1}
    assert answers(pg_url, remote.run_id) == answers(pg_url, local.run_id)


@pytest.mark.postgres
@needs_postgres
def test_eight_actors_write_to_postgres_without_lost_or_doubled_rows(pg_url: str) -> None:
    n = 64
    job = ["strategy=beam_search", f"task.n_problems={n}", "run.seed=5"]
    local = Runner(compose([*DOUBLES, f"store.url={pg_url}", *job])).run()
    cfg = compose(
        [
            *RAY_DOUBLES,
            f"store.url={pg_url}",
            *job,
            "ray.actors_per_node=4",  # 2 nodes x 4 = 8 actors
            "ray.chunk_size=2",
            "ray.concurrency_per_actor=4",
            "ray.cpus_per_actor=0.1",
        ]
    )
    remote = run_in_thread(Runner(cfg), timeout=300)
    assert remote.status == "finished" and remote.solved_now == n
    counts = stored_counts(pg_url, remote.run_id)
    assert len(counts) == n and set(counts.values()) == {1}

    def rows(run_id: str) -> tuple[int, int]:
        store = Store(pg_url)
        with store.session() as s:
            nodes = s.scalar(
                select(func.count(Node.id)).join(Result).where(Result.run_id == run_id)
            )
            calls = s.scalar(
                select(func.count(Call.id)).join(Result).where(Result.run_id == run_id)
            )
        store.close()
        return int(nodes or 0), int(calls or 0)

    # every tree and every call of every problem landed, as in the local run
    assert rows(remote.run_id) == rows(local.run_id)
    assert rows(remote.run_id)[0] > n
    assert answers(pg_url, remote.run_id) == answers(pg_url, local.run_id)
