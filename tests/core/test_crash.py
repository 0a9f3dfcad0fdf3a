"""A real `ttc run` SIGKILLed at every stage of a run and of its resumes; after the last
resume every problem is stored once, with what an uninterrupted run gives.

The test doubles are slowed down (task load, model load, each batch, model close) so that
every kill point is reached deterministically, by polling the store read-only.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store

from conftest import DOUBLES, peek, subprocess_env, ttc_cli, wait_for

N = 8
CONFIG = [
    *DOUBLES, "strategy=beam_search", "strategy.beam_width=2", f"task.n_problems={N}",
    "run.seed=5", "run.concurrency=2",
]  # fmt: skip
SLOW = ["task.load_delay_s=0.6", "backend.start_delay_s=0.8", "backend.delay_s=0.05",
        "backend.close_delay_s=1.2"]  # fmt: skip
COMPARED = ("problem_id", "status", "answer", "correct", "pass_at_1", "n_branches", "n_leaves",
            "samples", "tokens", "prefill_tokens", "reward_tokens", "flops")  # fmt: skip


def _results(store: Store, run_id: str) -> list[tuple[object, ...]]:
    return [
        (*(r[k] for k in COMPARED), tuple(n["text"] for n in store.nodes(run_id, r["problem_id"])))
        for r in store.results(run_id)
    ]


def test_sigkill_at_every_stage_then_resume_gives_the_uninterrupted_results(
    tmp_path: Path,
) -> None:
    db = tmp_path / "crash.db"
    url = f"sqlite:///{db}"
    ref_url = f"sqlite:///{tmp_path / 'ref.db'}"
    reference = Runner(compose([*CONFIG, f"store.url={ref_url}"])).run()
    expected = _results(Store(ref_url), reference.run_id)
    assert len(expected) == N

    def start(*args: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "ttc.cli", "run", *args],
            cwd=tmp_path,
            env=subprocess_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill_when(proc: subprocess.Popen[bytes], condition: object, what: str) -> None:
        try:
            wait_for(condition, timeout=90, what=what)  # type: ignore[arg-type]
        finally:
            proc.kill()
            proc.wait(timeout=30)

    def stored() -> int:
        rows = peek(db, "SELECT count(*) FROM results")
        return int(rows[0][0]) if rows else -1  # type: ignore[arg-type]

    def owner() -> str | None:
        rows = peek(db, "SELECT owner FROM runs")
        return str(rows[0][0]) if rows else None

    fresh = [*CONFIG, *SLOW, f"store.url={url}"]
    # 1. before the run row exists (the store is migrated, the task is loading)
    proc = start(*fresh)
    kill_when(proc, lambda: peek(db, "SELECT id FROM runs") == [], "the migrated store")
    assert Store(url).list_runs() == []

    # 2. during the model load: the run row exists, nothing is solved
    proc = start(*fresh)
    kill_when(proc, lambda: owner() == f"{socket.gethostname()}:{proc.pid}", "the run row")
    (run,) = Store(url).list_runs()
    run_id = run["id"]
    assert run["status"] == "stale" and stored() == 0
    resume = [f"resume={run_id}", f"store.url={url}"]  # no --force: a killed run is stale

    # 3. mid-run, some problems stored
    proc = start(*resume)
    kill_when(proc, lambda: stored() >= 3, "3 stored problems")
    assert 3 <= stored() < N

    # 4. during a resume's model load (it has claimed the run: its pid owns it)
    before = stored()
    proc = start(*resume)
    kill_when(proc, lambda: owner() == f"{socket.gethostname()}:{proc.pid}", "the claim")
    assert stored() == before

    # 5. after the last commit, while the model is being closed: status not yet written
    proc = start(*resume)
    kill_when(proc, lambda: stored() == N, "the last problem")
    assert Store(url).get_run(run_id)["status"] == "stale"

    # the last resume has nothing left to solve and marks the run finished
    done = ttc_cli(["run", *resume], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    store = Store(url)
    final = store.get_run(run_id)
    assert final["status"] == "finished"
    assert final["totals"]["problems"] == N and final["totals"]["errors"] == 0
    ids = [r["problem_id"] for r in store.results(run_id)]
    assert sorted(ids) == [f"p{i:03d}" for i in range(N)] and len(set(ids)) == N
    assert _results(store, run_id) == expected
    timed = ("wall_s", "mean_latency_s")  # clock readings: the only totals that may differ
    assert {k: v for k, v in final["totals"].items() if k not in timed} == {
        k: v for k, v in reference.totals.items() if k not in timed
    }
    assert set(final["totals"]) == set(reference.totals)
    assert len(store.list_runs()) == 1
