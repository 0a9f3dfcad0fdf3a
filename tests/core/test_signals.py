"""Ctrl-C and SIGTERM at the edges of a run, and in a sweep; Hydra output folders."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from ttc.store import Store

from conftest import DOUBLES, peek, subprocess_env, wait_for


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(args: list[str], cwd: Path) -> subprocess.Popen[str]:
    """`ttc <args>` as a user's shell starts it: with Ctrl-C's default action. A suite
    started in the background by a script (`cmd &` without job control) ignores SIGINT,
    its children inherit that, and Python keeps an inherited SIG_IGN, so ttc would then
    rightly ignore the test's SIGINT too."""
    return subprocess.Popen(
        [sys.executable, "-m", "ttc.cli", *args],
        cwd=cwd,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint,
    )


def test_sigint_before_the_run_row_exists_prints_no_resume_command(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    gate = tmp_path / "loading"
    gate.touch()  # the task's load waits until it is gone: no run row before the signal
    job = [*DOUBLES, f"store.url=sqlite:///{db}", f"task.load_gate={gate}"]
    proc = _start(["run", *job], tmp_path)
    try:
        # the store is open (migrated), the task is loading: no run row yet
        wait_for(lambda: peek(db, "SELECT id FROM runs") == [], what="the migrated store")
        proc.send_signal(signal.SIGINT)
        time.sleep(0.5)  # the child handles the signal before it sees the gate open
    finally:
        gate.unlink()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume" not in err and "nothing was stored" in err
    assert "Traceback" not in err
    assert Store(f"sqlite:///{db}").list_runs() == []


def test_sigint_after_everything_is_stored_is_not_interrupted(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    n = 3
    proc = _start(
        ["run", *DOUBLES, f"store.url=sqlite:///{db}", f"task.n_problems={n}",
         "backend.close_delay_s=3"],
        tmp_path,
    )  # fmt: skip
    wait_for(lambda: peek(db, "SELECT count(*) FROM results") == [(n,)], what="all problems")
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "interrupted" not in out + err
    assert "status: finished" in out
    (run,) = Store(f"sqlite:///{db}").list_runs()
    assert run["status"] == "finished" and run["totals"]["problems"] == n


def test_sigterm_stops_a_sweep_and_prints_each_unfinished_jobs_command(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    proc = _start(
        ["run", "-m", *DOUBLES, f"store.url={url}", "task.n_problems=4", "backend.delay_s=0.3",
         "run.concurrency=1", "strategy.n=1,2,3"],
        tmp_path,
    )  # fmt: skip
    wait_for(lambda: peek(db, "SELECT count(*) FROM results") == [(1,)], what="a problem of job 0")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    runs = Store(url).list_runs()
    (run,) = runs  # the sweep stopped: no second job was started
    assert run["status"] == "interrupted"
    assert "sweep stopped after 0 of 3 jobs" in err
    commands = re.findall(r"^\s+(ttc run .*)$", err, flags=re.M)
    assert commands[0] == f"ttc run resume={run['id']} store.url={url}"
    assert [c.split()[-1] for c in commands[1:]] == ["strategy.n=2", "strategy.n=3"]
    assert "Traceback" not in err


def test_jobs_started_in_the_same_second_get_their_own_folders(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    procs = [_start(["run", *DOUBLES, f"store.url={url}", "task.n_problems=1"], tmp_path)
             for _ in range(3)]  # fmt: skip
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    folders = {p.parent for p in (tmp_path / "runs" / "hydra").rglob(".hydra/config.yaml")}
    assert len(folders) == 3
