"""Resuming a stored run: it continues the stored config, retries errored problems,
validates what may change, refuses a run another process is running and a problem set
other than the one it started with."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store
from ttc.store.models import Result, Run

import doubles
from conftest import DOUBLES, ttc_cli

COMPARED = (
    "problem_id", "problem_index", "status", "answer", "correct", "pass_at_1",
    "majority_correct", "oracle_correct", "n_branches", "n_leaves", "samples", "tokens",
    "prompt_tokens", "prefill_tokens", "reward_tokens", "flops", "refused_calls",
)  # fmt: skip
"""What a problem's result is made of (not its timing or row ids)."""


def run_job(store_url: str, *overrides: str) -> Any:
    cfg = compose([*DOUBLES, f"store.url={store_url}", *overrides])
    return Runner(cfg).run()


def solved(store: Store, run_id: str) -> dict[str, tuple[Any, ...]]:
    """Problem id -> its result and the texts of its search tree."""
    out = {}
    for r in store.results(run_id):
        texts = tuple(n["text"] for n in store.nodes(run_id, r["problem_id"]))
        out[r["problem_id"]] = (*(r[k] for k in COMPARED), texts)
    return out


def interrupt(store: Store, run_id: str, drop: set[str], *, status: str = "interrupted") -> None:
    """Make a finished run look like one stopped before `drop` were solved."""
    with store.session() as s, s.begin():
        s.execute(delete(Result).where(Result.run_id == run_id, Result.problem_id.in_(drop)))
        s.execute(update(Run).where(Run.id == run_id).values(status=status, totals=None))


def test_a_resumed_run_gives_what_an_uninterrupted_run_gives(tmp_path: Path) -> None:
    """Defect 1: the stored seed, concurrency and name are the resumed run's."""
    common = [
        "strategy=best_of_n", "strategy.n=4", "task.n_problems=10", "run.seed=7",
        "run.concurrency=2", "run.name=seven",
    ]  # fmt: skip
    ref_url, cut_url = f"sqlite:///{tmp_path / 'ref.db'}", f"sqlite:///{tmp_path / 'cut.db'}"
    ref = run_job(ref_url, *common)
    cut = run_job(cut_url, *common)
    store = Store(cut_url)
    expected = solved(Store(ref_url), ref.run_id)
    assert solved(store, cut.run_id) == expected  # the doubles are deterministic
    seed0 = solved(Store(ref_url), run_job(ref_url, *common, "run.seed=0").run_id)
    dropped = {f"p{i:03d}" for i in range(1, 10, 2)}
    assert any(seed0[p] != expected[p] for p in dropped), "the seed must matter"
    interrupt(store, cut.run_id, dropped)

    doubles.BATCH_SIZES.clear()
    proc = ttc_cli(["run", f"resume={cut.run_id}", f"store.url={cut_url}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert solved(store, cut.run_id) == expected
    run = store.get_run(cut.run_id)
    assert run["status"] == "finished" and run["name"] == "seven"
    assert run["config"]["run"] == {**run["config"]["run"], "seed": 7, "concurrency": 2}


def test_the_resumed_config_keeps_the_stored_run_options(tmp_path: Path, store_url: str) -> None:
    first = run_job(store_url, "task.n_problems=4", "run.seed=7", "run.concurrency=1")
    interrupt(Store(store_url), first.run_id, {"p003"})
    doubles.BATCH_SIZES.clear()
    runner = Runner(compose([*DOUBLES, f"store.url={store_url}", f"resume={first.run_id}"]))
    runner.run()
    assert runner.cfg is not None
    assert (runner.cfg.run.seed, runner.cfg.run.concurrency) == (7, 1)
    assert doubles.BATCH_SIZES and max(doubles.BATCH_SIZES) == 1


def _outage_run(store_url: str, tmp_path: Path) -> tuple[str, Path]:
    """A run whose problems p001 and p002 failed during a backend outage, now over."""
    outage = tmp_path / "outage"
    first = run_job(store_url, "task.n_problems=5", f"backend.fail_while_exists={outage}")
    store = Store(store_url)
    interrupt(store, first.run_id, {"p001", "p002"})
    outage.write_text("down")
    Runner(compose([*DOUBLES, f"store.url={store_url}", f"resume={first.run_id}"])).run()
    outage.unlink()
    statuses = store.problem_statuses(first.run_id)
    assert [statuses[f"p{i:03d}"] for i in range(5)] == ["ok", "error", "error", "ok", "ok"]
    return first.run_id, outage


def test_errored_problems_are_retried_on_resume(tmp_path: Path, store_url: str) -> None:
    """Defect 2: resume solves errored problems again, replacing their rows."""
    run_id, _ = _outage_run(store_url, tmp_path)
    store = Store(store_url)
    before = {r["problem_id"]: r["id"] for r in store.results(run_id)}
    proc = ttc_cli(["run", f"resume={run_id}", f"store.url={store_url}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    after = {r["problem_id"]: r for r in store.results(run_id)}
    assert sorted(after) == [f"p{i:03d}" for i in range(5)]
    assert all(r["status"] == "ok" for r in after.values())
    assert after["p000"]["id"] == before["p000"]  # solved ones are kept, not redone
    assert after["p001"]["id"] != before["p001"]
    assert store.get_run(run_id)["totals"]["errors"] == 0


def test_retry_errors_false_keeps_the_errored_problems(tmp_path: Path, store_url: str) -> None:
    run_id, _ = _outage_run(store_url, tmp_path)
    store = Store(store_url)
    before = store.results(run_id)
    proc = ttc_cli(
        ["run", f"resume={run_id}", f"store.url={store_url}", "resume.retry_errors=false",
         "run.progress=false"],
        cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr  # it still ends with errors
    assert store.results(run_id) == before


def test_a_run_ending_with_errors_says_so_and_exits_non_zero(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'e.db'}"
    args = ["run", *DOUBLES, f"store.url={url}", "task.n_problems=4", "task.fail_ids=[p002]",
            "backend.fail_marker=FAIL"]  # fmt: skip
    proc = ttc_cli(args, cwd=tmp_path)
    assert proc.returncode == 1
    assert "status: finished, 1 problem with an error" in proc.stdout
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "1 of 4 problems failed" in line and "resume=" in line
    assert "Traceback" not in proc.stderr
    ok = ttc_cli([*args, "run.allow_errors=true"], cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize(
    "override,words",
    [
        ("run.concurrency=0", "run.concurrency=0 is out of range"),
        ("run.concurrency=-2", "run.concurrency=-2 is out of range"),
        ("run.concurrency=abc", "run.concurrency='abc' is not valid"),
        ("run.progress=maybe", "run.progress='maybe' is not valid"),
        ("resume.retry_errors=perhaps", "resume.retry_errors='perhaps' is not valid"),
        ("strategy.n=8", "strategy.n cannot be changed when resuming"),
        ("-m", "takes no Hydra flags"),
        ("resume=", "resume= needs a run id"),
    ],
)
def test_resume_overrides_are_validated_before_anything_loads(
    tmp_path: Path, store_url: str, override: str, words: str
) -> None:
    """Defect 3: one line naming the key; the stored run is left as it was."""
    from typer.testing import CliRunner

    from ttc.cli import app

    first = run_job(store_url, "task.n_problems=2")
    args = ["run", f"resume={first.run_id}", f"store.url={store_url}", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [x for x in result.output.splitlines() if x.strip()]
    assert len(lines) == 1 and words in lines[0], result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert Store(store_url).get_run(first.run_id)["status"] == "finished"


def _pretend_running(store: Store, run_id: str, *, owner: str, beat_age_s: float) -> None:
    with store.session() as s, s.begin():
        s.execute(
            update(Run)
            .where(Run.id == run_id)
            .values(
                status="running",
                owner=owner,
                heartbeat_at=datetime.now(UTC) - timedelta(seconds=beat_age_s),
            )
        )


def test_a_run_with_a_stale_heartbeat_is_listed_as_stale(tmp_path: Path, store_url: str) -> None:
    """Defect 4: a killed run does not stay `running` forever."""
    first = run_job(store_url, "task.n_problems=2")
    store = Store(store_url)
    _pretend_running(store, first.run_id, owner="elsewhere:123", beat_age_s=3600)
    listed = ttc_cli(["runs", "list", "--store", store_url], cwd=tmp_path)
    assert "stale" in listed.stdout and "running" not in listed.stdout
    assert [r["id"] for r in store.list_runs(status="stale")] == [first.run_id]
    assert store.list_runs(status="running") == []
    # a process of this host that is gone is stale at once
    _pretend_running(store, first.run_id, owner=f"{socket.gethostname()}:999999999", beat_age_s=0)
    assert store.get_run(first.run_id)["status"] == "stale"
    _pretend_running(store, first.run_id, owner="elsewhere:123", beat_age_s=1)
    assert store.get_run(first.run_id)["status"] == "running"


def test_the_heartbeat_moves_while_a_run_runs(store_url: str) -> None:
    from ttc.store import liveness

    beats: list[datetime] = []
    cfg = compose([*DOUBLES, f"store.url={store_url}", "task.n_problems=3",
                   "backend.delay_s=0.2", "run.concurrency=1"])  # fmt: skip
    runner = Runner(cfg)
    store = Store(store_url)
    import ttc

    class Spy:
        @ttc.hookimpl
        def on_problem_done(self, run_id: str, result: Any) -> None:
            with store.session() as s:
                beats.append(s.scalar(select(Run.heartbeat_at).where(Run.id == run_id)))

    runner.registry.pm.register(Spy(), name="spy")
    old = liveness.HEARTBEAT_S
    liveness.HEARTBEAT_S = 0.1
    try:
        runner.run()
    finally:
        liveness.HEARTBEAT_S = old
    assert len(set(beats)) == len(beats) == 3  # every problem saw a newer heartbeat


def test_resuming_a_live_run_is_refused_and_force_takes_over(
    tmp_path: Path, store_url: str
) -> None:
    first = run_job(store_url, "task.n_problems=3")
    store = Store(store_url)
    interrupt(store, first.run_id, {"p002"})
    _pretend_running(store, first.run_id, owner=f"{socket.gethostname()}:{os.getppid()}",
                     beat_age_s=1)  # fmt: skip
    refused = ttc_cli(["run", f"resume={first.run_id}", f"store.url={store_url}"], cwd=tmp_path)
    assert refused.returncode == 1
    (line,) = [x for x in refused.stderr.splitlines() if x.strip()]
    assert "is still running" in line and "--force" in line
    assert store.finished_problem_ids(first.run_id) == {"p000", "p001"}
    forced = ttc_cli(
        ["run", f"resume={first.run_id}", f"store.url={store_url}", "--force"], cwd=tmp_path
    )
    assert forced.returncode == 0, forced.stderr
    assert store.get_run(first.run_id)["status"] == "finished"
    assert store.finished_problem_ids(first.run_id) == {"p000", "p001", "p002"}


def test_resume_over_different_problems_is_refused(tmp_path: Path, store_url: str) -> None:
    """Defect 10: a changed data file does not mix two problem sets."""
    data = tmp_path / "problems.jsonl"
    rows = [{"question": f"What is {i}+1? answer={i + 1}", "answer": str(i + 1)} for i in range(6)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = run_job(store_url, "task=jsonl", f"task.data_files={data}", "reward=none",
                    "strategy=self_consistency")  # fmt: skip
    store = Store(store_url)
    interrupt(store, first.run_id, {"4", "5"})
    rows.insert(2, {"question": "inserted answer=7", "answer": "7"})
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = ttc_cli(["run", f"resume={first.run_id}", f"store.url={store_url}"], cwd=tmp_path)
    assert proc.returncode != 0
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "problems changed since run" in line
    assert "Traceback" not in proc.stderr
    assert len(store.results(first.run_id)) == 4
    assert store.get_run(first.run_id)["status"] == "interrupted"


@pytest.mark.parametrize(
    "overrides",
    [
        ["backend.fail_marker=FAIL", "backend.fail_in=render"],
        ["backend.fail_marker=FAIL", "backend.fail_in=encode"],
        ["allocator=failing_budget"],
    ],
    ids=["render", "encode", "budget"],
)
def test_a_failure_before_solving_stays_that_problems(store_url: str, overrides: list[str]) -> None:
    """Defect 13 (runner): planning, rendering and encoding fail one problem, not the run."""
    outcome = run_job(store_url, "task.n_problems=5", "task.fail_ids=[p003]", *overrides)
    assert outcome.status == "finished"
    results = {r["problem_id"]: r for r in Store(store_url).results(outcome.run_id)}
    assert len(results) == 5
    assert results["p003"]["status"] == "error"
    assert "scripted failure in" in results["p003"]["error"]
    assert all(r["status"] == "ok" for pid, r in results.items() if pid != "p003")


@pytest.mark.parametrize("drawn", ["012345678901", "197977712e58", "1e2345678901"])
def test_a_run_id_is_never_one_that_an_override_reads_as_a_number(
    drawn: str, store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`resume=<id>` must give back the printed id: an all-digit id, or digits around one
    `e`, is read by Hydra as an int or a float and names no run."""
    import uuid

    import ttc.store.store as store_module

    draws = iter([uuid.UUID(drawn + "0" * 20), uuid.UUID("a" * 32)])
    monkeypatch.setattr(store_module.uuid, "uuid4", lambda: next(draws))
    store = Store(store_url)
    run_id = store.create_run(
        config={},
        strategy="s",
        backend="b",
        model="m",
        task="t",
        reward="r",
        versions={},
        hardware={},
    )
    assert compose([*DOUBLES, f"resume={run_id}"]).resume == run_id
    assert store.resolve_id(str(compose([f"resume={run_id}"]).resume)) == run_id
