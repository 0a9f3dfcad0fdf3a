"""`ttc analyze`: every table in csv/json, the policy file, plots, the report, SQL views."""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from known import known_store_for
from sqlalchemy import create_engine, text
from typer.testing import CliRunner

from ttc.analysis import load, points
from ttc.analysis.sql import create_views
from ttc.cli import app


@pytest.fixture
def known_store(tmp_path_factory: pytest.TempPathFactory):
    return known_store_for(tmp_path_factory)


def invoke(*args: str) -> str:
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("command", ["runs", "points", "frontier", "fits", "bins"])
def test_every_table_comes_as_csv_and_json(known_store, command: str) -> None:
    url, _, _ = known_store
    as_csv = pd.read_csv(io.StringIO(invoke("analyze", command, "--store", url, "--format", "csv")))
    as_json = json.loads(invoke("analyze", command, "--store", url, "--format", "json"))
    assert len(as_csv) == len(as_json) > 0
    assert list(as_csv.columns) == list(as_json[0])


def test_runs_table_matches_the_library(known_store) -> None:
    url, _, ids = known_store
    out = json.loads(invoke("analyze", "runs", "--store", url, "--format", "json"))
    acc = {r["run_id"]: r["accuracy"] for r in out}
    pts = points(load(url), n_boot=10)
    lib = pts[pts["metric"] == "accuracy"].set_index("run_id")["value"]
    assert acc == pytest.approx(lib.to_dict())
    assert set(acc) == set(ids.values())
    # selection by --where on the flattened config
    only = json.loads(
        invoke(
            "analyze", "runs", "--store", url, "--format", "json", "--where", "strategy=beam_search"
        )
    )
    assert [r["run_id"] for r in only] == [ids["beam_search"]]


def test_bad_input_is_one_line(known_store) -> None:
    url, _, _ = known_store
    result = CliRunner().invoke(app, ["analyze", "runs", "--store", url, "--unit", "furlongs"])
    assert result.exit_code != 0
    assert "unknown cost unit 'furlongs'" in result.output
    assert "Traceback" not in result.output


def test_policy_command_writes_the_allocators_format(known_store, tmp_path: Path) -> None:
    from ttc.plugins.allocators.policy import load_policy

    url, _, _ = known_store
    path = tmp_path / "policy.yaml"
    invoke("analyze", "policy", "--store", url, "-o", str(path), "--measure", "score")
    policy = load_policy(path)  # the allocator's own reader validates it
    assert policy.measure == "score"
    assert policy.bins[-1].up_to == float("inf")
    assert all(b.strategy["name"] in ("best_of_n", "self_consistency") for b in policy.bins)


def test_plots_are_pngs(known_store, tmp_path: Path) -> None:
    url, _, _ = known_store
    invoke("analyze", "plots", "--store", url, "--out", str(tmp_path))
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs == ["accuracy_vs_tokens.png", "coverage.png", "per_bin.png"]
    for p in tmp_path.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_is_one_self_contained_file(known_store, tmp_path: Path) -> None:
    url, _, ids = known_store
    out = tmp_path / "report.html"
    invoke("analyze", "report", "--store", url, "-o", str(out), "--measure", "score")
    page = out.read_text()
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3
    for b64 in images:
        assert base64.b64decode(b64)[:4] == b"\x89PNG"
    assert not re.search(r'(src|href)="(http|/|\.)', page)  # nothing outside the file
    for table in (
        "headline-table",
        "frontier-table",
        "fits-table",
        "policy-table",
        "configs-table",
    ):
        assert f'id="{table}"' in page
    for run_id in ids.values():
        assert run_id in page
    assert list(tmp_path.iterdir()) == [out]


def test_sql_views_give_the_same_accuracy(known_store, tmp_path: Path) -> None:
    url, _, ids = known_store
    copy = tmp_path / "views.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    engine = create_engine(f"sqlite:///{copy}")
    assert create_views(engine) == ["ttc_run_summary", "ttc_samples", "ttc_pass_counts"]
    with engine.connect() as conn:
        rows = dict(conn.execute(text("SELECT run_id, accuracy FROM ttc_run_summary")).all())
        counts = conn.execute(
            text("SELECT n, c FROM ttc_pass_counts WHERE run_id = :r"), {"r": ids["best_of_n"]}
        ).all()
    pts = points(load(url), n_boot=10)
    lib = pts[pts["metric"] == "accuracy"].set_index("run_id")["value"]
    assert rows == pytest.approx(lib.to_dict())
    assert len(counts) == 300 and all(n == 16 for n, _ in counts)


DOCS = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", DOCS.read_text(), flags=re.S)


def test_docs_python_example_runs(known_store) -> None:
    url, _, _ = known_store
    (code,) = _blocks("python")
    scope: dict[str, object] = {}
    exec(code.replace("sqlite:///runs/ttc.db", url).replace('"arith"', '"synthetic"'), scope)
    assert len(scope["tables"].runs) == 3  # type: ignore[attr-defined]
    assert "headline" in scope["a"].tables  # type: ignore[attr-defined]


def test_docs_sql_example_runs(known_store, tmp_path: Path) -> None:
    url, _, _ = known_store
    copy = tmp_path / "docs.db"
    copy.write_bytes(Path(url.removeprefix("sqlite:///")).read_bytes())
    engine = create_engine(f"sqlite:///{copy}")
    create_views(engine)
    (query,) = _blocks("sql")
    with engine.connect() as conn:
        rows = conn.execute(text(query.strip().rstrip(";"))).all()
    assert len(rows) == 3 and rows == sorted(rows, key=lambda r: r[2])


def test_runs_without_stored_problems_are_left_out_with_a_note(tmp_path: Path) -> None:
    """A run interrupted before its first problem finished has a runs row and no results
    (found on the real sweep: `ttc analyze runs` crashed with a KeyError on its id)."""
    from ttc.analysis.synthetic import SyntheticEnv
    from ttc.store import Store

    url = f"sqlite:///{tmp_path / 'partial.db'}"
    env = SyntheticEnv.spread(40, seed=3)
    store = Store(url)
    kept = env.write_run(store, strategy="best_of_n", n=4)
    empty = store.create_run(
        config={"strategy": {"name": "best_of_n", "n": 8}, "task": {"name": "synthetic"}},
        strategy="best_of_n",
        backend="synthetic",
        model="synthetic-135m",
        task="synthetic",
        reward="synthetic",
        versions={},
        hardware={},
        n_problems=40,
    )
    store.finish_run(empty, "interrupted")
    store.close()
    result = CliRunner().invoke(app, ["analyze", "runs", "--store", url, "--format", "json"])
    assert result.exit_code == 0, result.output
    assert [r["run_id"] for r in json.loads(result.stdout)] == [kept]
    assert f"note: run {empty} has no stored problems" in result.stderr
    out = tmp_path / "report.html"
    invoke("analyze", "report", "--store", url, "-o", str(out))
    page = out.read_text()
    assert kept in page
    assert f"run {empty} has no stored problems" in page
    # a selection of only such runs is one clear line, not a traceback
    result = CliRunner().invoke(app, ["analyze", "runs", "--store", url, empty])
    assert result.exit_code != 0
    assert "no stored problems" in result.output
    assert "Traceback" not in result.output


def test_runs_table_gives_each_runs_wall_time(known_store) -> None:
    """Wall seconds of the whole run (runs.totals), beside the per-problem `seconds`:
    problems overlap, so the two differ."""
    from ttc.store import Store

    url, _, ids = known_store
    rows = json.loads(invoke("analyze", "runs", "--store", url, "--format", "json"))
    store = Store(url)
    try:
        wall = {i: store.get_run(i)["totals"]["wall_s"] for i in ids.values()}
    finally:
        store.close()
    assert {r["run_id"]: r["wall_s"] for r in rows} == pytest.approx(wall)
