"""The run store through the CLI: totals read back, export, sweeps, resume after SIGKILL,
and the migrations."""

from __future__ import annotations

import csv
import io
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, inspect

from ttc.store import Store
from ttc.store.store import TOTAL_KEYS, alembic_config, make_engine, upgrade

from conftest import DOUBLES, subprocess_env, ttc_cli


def _table(text: str) -> dict[str, str]:
    """The rows of a totals table printed by rich: key -> value."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line) if c.strip()]
        if len(cells) == 2 and cells[0] in TOTAL_KEYS:
            rows[cells[0]] = cells[1]
    return rows


def _run_id(stdout: str) -> str:
    m = re.search(r"run id: (\w+)", stdout)
    assert m, stdout
    return m.group(1)


def test_runs_show_reads_back_the_printed_totals(tmp_path: Path, store_url: str) -> None:
    proc = ttc_cli(
        ["run", *DOUBLES, f"store.url={store_url}", "strategy=beam_search", "task.n_problems=5"],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    printed = _table(proc.stdout)
    assert set(printed) == set(TOTAL_KEYS)
    run_id = _run_id(proc.stdout)
    shown = ttc_cli(["runs", "show", run_id, "--store", store_url], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert _table(shown.stdout) == printed
    assert printed["problems"] == "5"
    listed = ttc_cli(["runs", "list", "--store", store_url], cwd=tmp_path)
    assert run_id in listed.stdout


def test_export_jsonl_and_csv(store_url: str, tmp_path: Path) -> None:
    proc = ttc_cli(["run", *DOUBLES, f"store.url={store_url}", "task.n_problems=3"], cwd=tmp_path)
    run_id = _run_id(proc.stdout)
    out = ttc_cli(["runs", "export", run_id, "--store", store_url], cwd=tmp_path)
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["problem_id"] for r in rows] == ["p000", "p001", "p002"]
    target = tmp_path / "out.csv"
    ttc_cli(
        ["runs", "export", run_id, "--format", "csv", "-o", str(target), "--store", store_url],
        cwd=tmp_path,
    )
    table = list(csv.DictReader(io.StringIO(target.read_text())))
    assert [r["problem_id"] for r in table] == ["p000", "p001", "p002"]
    assert [int(r["tokens"]) for r in table] == [r["tokens"] for r in rows]


def test_unknown_run_id_is_a_clear_error(store_url: str, tmp_path: Path) -> None:
    Store(store_url)
    proc = ttc_cli(["runs", "show", "doesnotexist", "--store", store_url], cwd=tmp_path)
    assert proc.returncode != 0
    assert "no run with id 'doesnotexist'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_2x2_sweep_creates_4_runs_in_one_store(store_url: str, tmp_path: Path) -> None:
    proc = ttc_cli(
        [
            "run",
            "-m",
            *DOUBLES,
            f"store.url={store_url}",
            "strategy.n=2,4",
            "task.n_problems=2,3",
        ],
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    runs = Store(store_url).list_runs()
    assert len(runs) == 4
    combos = {(r["config"]["strategy"]["n"], r["config"]["task"]["n_problems"]) for r in runs}
    assert combos == {(2, 2), (2, 3), (4, 2), (4, 3)}
    assert len({r["sweep"] for r in runs}) == 1 and runs[0]["sweep"]
    assert all(r["status"] == "finished" for r in runs)


def test_sigkill_then_resume_stores_every_problem_exactly_once(
    store_url: str, tmp_path: Path
) -> None:
    n = 12
    args = [
        "run",
        *DOUBLES,
        f"store.url={store_url}",
        "strategy=beam_search",
        f"task.n_problems={n}",
        "run.concurrency=2",
        "backend.delay_s=0.05",
    ]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttc.cli", *args],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    store = None
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            time.sleep(0.1)
            if not Path(store_url.removeprefix("sqlite:///")).exists():
                continue
            store = store or Store(store_url)
            runs = store.list_runs()
            if runs and 2 <= len(store.finished_problem_ids(runs[0]["id"])) < n:
                break
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert store is not None
    (run,) = store.list_runs()
    assert run["status"] == "stale"  # killed: marked running, but its process is gone
    before = len(store.finished_problem_ids(run["id"]))
    assert 2 <= before < n

    resumed = ttc_cli(["run", f"store.url={store_url}", f"resume={run['id']}"], cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    results = store.results(run["id"])
    ids = [r["problem_id"] for r in results]
    assert sorted(ids) == [f"p{i:03d}" for i in range(n)]
    assert len(ids) == len(set(ids))
    final = store.get_run(run["id"])
    assert final["status"] == "finished"
    assert final["totals"]["problems"] == n
    assert len(store.list_runs()) == 1


def test_migrations_have_one_head_and_round_trip(tmp_path: Path) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    url = f"sqlite:///{tmp_path / 'm.db'}"
    engine = make_engine(url)
    cfg = alembic_config(engine)
    assert len(ScriptDirectory.from_config(cfg).get_heads()) == 1
    upgrade(engine)
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"runs", "results", "nodes", "calls"} <= tables
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "base")
    assert not {"runs", "results"} & set(inspect(create_engine(url)).get_table_names())
    upgrade(engine)
    assert "runs" in inspect(create_engine(url)).get_table_names()


def test_models_match_the_migrations(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from ttc.store.models import Base

    engine = make_engine(f"sqlite:///{tmp_path / 'd.db'}")
    upgrade(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []


def test_sigterm_marks_the_run_interrupted_and_names_it(store_url: str, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttc.cli", "run", *DOUBLES, f"store.url={store_url}",
         "strategy=beam_search", "backend.delay_s=0.05", "run.concurrency=1"],
        cwd=tmp_path, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not Path(store_url.removeprefix("sqlite:///")).exists():
        time.sleep(0.1)
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    (run,) = Store(store_url).list_runs()
    assert run["status"] == "interrupted"
    assert f"resume={run['id']}" in err


def test_upgrading_a_0001_store_keeps_its_runs_and_results(tmp_path: Path) -> None:
    from alembic import command

    url = f"sqlite:///{tmp_path / 'old.db'}"
    proc = ttc_cli(["run", *DOUBLES, f"store.url={url}", "task.n_problems=3"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    engine = make_engine(url)
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0001")
    store = Store(url)  # opening upgrades to head again
    (run,) = store.list_runs()
    assert len(store.results(run["id"])) == 3
    assert len(store.nodes(run["id"], "p000")) > 0
    assert run["fingerprint"] is None  # unknown for old runs: a resume does not check it
