"""Slow Ray tests, each in fresh processes: a driver killed mid-run is resumed with
`resume=<id>`, and a 2x2 sweep through Hydra's Ray launcher (hydra/launcher=ray) makes
four runs in one PostgreSQL store."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from sqlalchemy import text

from ttc.store import Store

from conftest import DOUBLES, TESTS_DIR, peek, subprocess_env, ttc_cli, wait_for
from ray_harness import answers, stored_counts

pytestmark = pytest.mark.slow

PG_URL = os.environ.get("TTC_TEST_POSTGRES_URL")


def env() -> dict[str, str]:
    return subprocess_env(RAY_DEDUP_LOGS="0", PYTHONPATH=str(TESTS_DIR))


def test_a_killed_driver_is_resumed_with_resume_id(tmp_path: Path) -> None:
    db = tmp_path / "ttc.db"
    url = f"sqlite:///{db}"
    job = [
        *DOUBLES,
        f"store.url={url}",
        "strategy=beam_search",
        "task.n_problems=16",
        "backend.delay_s=0.1",
        "run.executor=ray",
        "ray.actors_per_node=2",
        "ray.cpus_per_actor=0.25",
        "ray.chunk_size=2",
    ]
    driver = subprocess.Popen(
        [sys.executable, "-m", "ttc.cli", "run", *job],
        cwd=tmp_path,
        env=env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,  # the kill takes the driver's local Ray cluster with it
    )
    try:
        stored = lambda: (peek(db, "select count(*) from results") or [(0,)])[0][0]  # noqa: E731
        wait_for(lambda: stored() >= 3 or driver.poll() is not None, timeout=180, what="3 rows")
        assert driver.poll() is None, driver.stderr.read() if driver.stderr else ""
        os.killpg(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    ((run_id, status, done),) = peek(
        db, "select runs.id, runs.status, count(results.id) from runs join results "
        "on results.run_id = runs.id group by runs.id"
    ) or [(None, None, 0)]  # fmt: skip
    assert status == "running" and 3 <= done < 16  # killed mid-run, marked nothing
    time.sleep(1)
    resumed = ttc_cli(["run", f"resume={run_id}", f"store.url={url}"], cwd=tmp_path, env=env(),
                      timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    counts = stored_counts(url, run_id)
    assert len(counts) == 16 and set(counts.values()) == {1}
    assert Store(url).get_run(run_id)["status"] == "finished"
    local = ttc_cli(
        ["run", *[o for o in job if not o.startswith(("run.executor", "ray."))]],
        cwd=tmp_path,
        env=env(),
    )
    assert local.returncode == 0, local.stderr
    (local_id,) = [r["id"] for r in Store(url).list_runs() if r["id"] != run_id]
    assert answers(url, run_id) == answers(url, local_id)


@pytest.mark.postgres
@pytest.mark.skipif(not PG_URL, reason="set TTC_TEST_POSTGRES_URL (bash scripts/postgres.sh)")
def test_a_sweep_through_the_ray_launcher_makes_four_runs_in_one_postgres_store(
    tmp_path: Path,
) -> None:
    assert PG_URL
    store = Store(PG_URL)
    with store.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    store.close()
    done = ttc_cli(
        [
            "run",
            "-m",
            "hydra/launcher=ray",
            "+hydra.launcher.ray.init.num_cpus=2",
            *DOUBLES,
            f"store.url={PG_URL}",
            "task.n_problems=3",
            "strategy.n=2,4",
            "run.seed=1,2",
        ],
        cwd=tmp_path,
        env=env(),
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = Store(PG_URL).list_runs()
    assert len(runs) == 4
    assert {r["status"] for r in runs} == {"finished"}
    assert len({r["sweep"] for r in runs}) == 1  # one sweep, one store
    jobs = Counter((r["config"]["strategy"]["n"], r["config"]["run"]["seed"]) for r in runs)
    assert jobs == Counter({(2, 1): 1, (2, 2): 1, (4, 1): 1, (4, 2): 1})
    assert all(len(stored_counts(PG_URL, r["id"])) == 3 for r in runs)


def test_a_failed_job_of_a_ray_sweep_fails_the_sweep_with_its_error(tmp_path: Path) -> None:
    done = ttc_cli(
        [
            "run",
            "-m",
            "hydra/launcher=ray",
            "+hydra.launcher.ray.init.num_cpus=1",
            *DOUBLES,
            f"store.url=sqlite:///{tmp_path / 'ttc.db'}",
            "task.n_problems=2",
            "task.fail_ids=[p000]",  # one problem of each job fails: each job fails
            "backend.fail_marker=FAIL",
            "strategy.n=2,3",
        ],
        cwd=tmp_path,
        env=env(),
        timeout=600,
    )
    assert done.returncode == 1
    assert "1 of 2 problems failed" in done.stderr  # the job's own error, back from Ray
    assert done.stderr.rstrip().splitlines()[-1].startswith("error: a job of the sweep failed")
    assert "Traceback" not in done.stderr
