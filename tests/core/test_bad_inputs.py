"""Bad input, table-driven: every command, config group, data file, store URL and backend
setting that a user can get wrong ends with a non-zero exit, no traceback, and one line
(plus at most a hint line) that names the key or file and says what to do.

The CLI runs in-process (typer's CliRunner) so that the table stays fast; a few cases at
the end run the real console script in a subprocess.
"""

from __future__ import annotations

import os
import sqlite3
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ttc.cli import app
from ttc.store import Store

from conftest import DOUBLES, ttc_cli

FIX_WORDS = ("hint:", "valid choices", "valid keys", "must be", "pass ", "set ", "use ", "run ")
"""A line that says what to do contains one of these."""


@dataclass
class Case:
    id: str
    args: list[str]
    expect: list[str]
    """Substrings the error must contain (the key, the file, the value)."""
    setup: str | None = None
    env: dict[str, str] = field(default_factory=dict)


def run_case(*args: str) -> list[str]:
    return ["run", *DOUBLES, "store.url={store}", *args]


def sweep_case(*args: str) -> list[str]:
    return ["run", "-m", *DOUBLES, "store.url={store}", *args]


def jsonl(*args: str) -> list[str]:
    return run_case("task=jsonl", "task.data_files={tmp}/data.jsonl", *args)


CASES: list[Case] = [
    # -- run: config groups ----------------------------------------------------------------
    Case("unknown-strategy", run_case("strategy=nope"), ["strategy=nope", "best_of_n"]),
    Case("unknown-backend", run_case("backend=nope"), ["backend=nope", "hf"]),
    Case("unknown-reward", run_case("reward=nope"), ["reward=nope", "self_certainty"]),
    Case("unknown-allocator", run_case("allocator=nope"), ["allocator=nope", "fixed"]),
    Case("unknown-task", run_case("task=nope"), ["task=nope", "gsm8k"]),
    Case("unknown-store", run_case("store=nope"), ["store=nope", "sqlite"]),
    Case("misspelt-strategy-key", run_case("strategy.nn=3"), ["strategy.nn"]),
    Case("misspelt-backend-key", run_case("backend.stepz=3"), ["backend.stepz"]),
    Case("misspelt-reward-key", run_case("reward.nosie=1"), ["reward.nosie"]),
    Case("misspelt-task-key", run_case("task.limt=3"), ["task.limt"]),
    Case("misspelt-store-key", run_case("store.uri=x"), ["store.uri"]),
    Case("misspelt-allocator-key", run_case("allocator.foo=1"), ["allocator.foo"]),
    Case("misspelt-budget-key", run_case("budget.tokenz=3"), ["budget.tokenz"]),
    Case("misspelt-scheduler-key", run_case("scheduler.size=3"), ["scheduler.size"]),
    Case("misspelt-run-key", run_case("run.sed=3"), ["run.sed"]),
    Case("root-key-without-plus", run_case("foo=bar"), ["foo"]),
    Case("new-root-key", run_case("+foo=bar"), ["foo", "not a config key"]),
    Case("new-strategy-key", run_case("+strategy.foo=1"), ["strategy.foo"]),
    Case("new-run-key", run_case("+run.foo=1"), ["run.foo"]),
    Case("strategy-n-text", run_case("strategy.n=abc"), ["strategy.n"]),
    Case("strategy-n-negative", run_case("strategy.n=-3"), ["strategy.n", ">= 1"]),
    Case("strategy-n-zero", run_case("strategy.n=0"), ["strategy.n", ">= 1"]),
    Case(
        "strategy-n-huge",
        run_case("strategy.n=99999999999999999999999"),
        ["strategy.n", "<="],
    ),
    Case("strategy-n-large", run_case("strategy.n=10000000"), ["strategy.n", "<="]),
    Case(
        "self-consistency-n-huge",
        run_case("strategy=self_consistency", "reward=none", "strategy.n=5000000"),
        ["strategy.n", "<="],
    ),
    Case(
        "particles-huge",
        run_case("strategy=particle_filter", "strategy.particles=100000000"),
        ["strategy.particles", "<="],
    ),
    Case(
        "beam-width-huge",
        run_case("strategy=beam_search", "strategy.beam_width=100000000"),
        ["strategy.beam_width", "<="],
    ),
    Case(
        "beam-expansions-zero",
        run_case("strategy=beam_search", "strategy.expansions=0"),
        ["strategy.expansions"],
    ),
    Case(
        "adaptive-max-samples-huge",
        run_case("strategy=adaptive_consistency", "strategy.max_samples=100000000"),
        ["strategy.max_samples", "<="],
    ),
    Case("max-tokens-huge", run_case("strategy.max_tokens=100000000000"), ["strategy.max_tokens"]),
    Case("max-tokens-zero", run_case("strategy.max_tokens=0"), ["strategy.max_tokens"]),
    Case("temperature-negative", run_case("strategy.temperature=-1"), ["strategy.temperature"]),
    Case("top-p-zero", run_case("strategy.top_p=0"), ["strategy.top_p"]),
    Case("top-p-text", run_case("strategy.top_p=high"), ["strategy.top_p"]),
    Case("concurrency-zero", run_case("run.concurrency=0"), ["run.concurrency", ">= 1"]),
    Case("concurrency-huge", run_case("run.concurrency=10000000000"), ["run.concurrency", "<="]),
    Case("concurrency-text", run_case("run.concurrency=abc"), ["run.concurrency"]),
    Case("progress-maybe", run_case("run.progress=maybe"), ["run.progress"]),
    Case("seed-text", run_case("run.seed=abc"), ["run.seed"]),
    Case("budget-tokens-zero", run_case("budget.tokens=0"), ["budget.tokens", ">= 1"]),
    Case("budget-tokens-text", run_case("budget.tokens=lots"), ["budget.tokens"]),
    Case("budget-flops-negative", run_case("budget.flops=-1"), ["budget.flops"]),
    Case("budget-seconds-zero", run_case("budget.seconds=0"), ["budget.seconds"]),
    Case("batch-size-zero", run_case("scheduler.max_batch_size=0"), ["scheduler.max_batch_size"]),
    Case(
        "batch-size-huge",
        run_case("scheduler.max_batch_size=100000000000"),
        ["scheduler.max_batch_size", "<="],
    ),
    Case("max-wait-negative", run_case("scheduler.max_wait_ms=-1"), ["scheduler.max_wait_ms"]),
    Case("reward-aggregate", run_case("reward.aggregate=median"), ["reward.aggregate", "min"]),
    Case("reward-noise-negative", run_case("reward.noise=-1"), ["reward.noise"]),
    Case(
        "self-certainty-mode",
        run_case("reward=self_certainty", "reward.mode=bogus"),
        ["reward.mode", "entropy"],
    ),
    Case(
        "reward-none-with-ranking-strategy",
        run_case("reward=none", "strategy=beam_search"),
        ["reward", "beam_search"],
    ),
    Case("run-name-too-long", run_case("run.name=" + "x" * 201), ["run.name", "200"]),
    Case(
        "jsonl-id-too-long",
        jsonl("task.id_field=id"),
        ["data.jsonl", "row 0", "200"],
        setup='data:{"id": "' + "i" * 201 + '", "question": "1", "answer": "1"}\n',
    ),
    Case("task-limit-zero", run_case("task.limit=0"), ["task.limit"]),
    Case("task-limit-text", run_case("task.limit=abc"), ["task.limit"]),
    Case("task-n-problems-zero", run_case("task.n_problems=0"), ["task.n_problems"]),
    Case("backend-steps-negative", run_case("backend.steps=-1"), ["backend.steps"]),
    Case("backend-p-correct", run_case("backend.p_correct=2"), ["backend.p_correct", "<= 1"]),
    Case("override-syntax", run_case("strategy.n=[1,"), ["strategy.n"]),
    Case("override-no-equals", run_case("strategy"), ["strategy"]),
    # -- run: sweeps -----------------------------------------------------------------------
    Case("sweep-bad-value", sweep_case("strategy.n=1,abc"), ["strategy.n"]),
    Case("sweep-unknown-name", sweep_case("strategy=best_of_n,nope"), ["strategy=nope"]),
    Case("sweep-out-of-range", sweep_case("strategy.n=1,2", "budget.tokens=0"), ["budget.tokens"]),
    Case("sweep-parse-error", sweep_case("strategy.n=range("), ["strategy.n"]),
    Case("sweep-new-key", sweep_case("+foo=1,2"), ["foo"]),
    Case("sweep-huge", sweep_case("strategy.n=2,99999999999"), ["strategy.n", "<="]),
    # -- run: resume -----------------------------------------------------------------------
    Case(
        "resume-unknown-id",
        ["run", "resume=doesnotexist", "store.url={store}"],
        ["doesnotexist"],
        setup="run",
    ),
    Case("resume-with-flag", ["run", "-m", "resume=abc"], ["resume"]),
    Case(
        "resume-changes-strategy",
        ["run", "resume=abc", "strategy.n=3", "store.url={store}"],
        ["strategy.n"],
    ),
    Case(
        "resume-ambiguous-prefix",
        ["run", "resume=1a4", "store.url={store}"],
        ["1a4", "ambiguous"],
        setup="ids",
    ),
    Case(
        "resume-in-corrupt-store",
        ["run", "resume=abc", "store.url={store}"],
        ["ttc.db", "not a"],
        setup="corrupt",
    ),
    # -- run: store URLs -------------------------------------------------------------------
    Case("store-url-not-a-url", run_case("store.url=notaurl"), ["notaurl", "store.url"]),
    Case("store-url-empty", run_case("store.url="), ["store.url"]),
    Case("store-url-no-driver", run_case("store.url=nosuchdb://x/y"), ["nosuchdb", "store.url"]),
    Case(
        "store-path-under-file",
        run_case("store.url=sqlite:///{tmp}/afile/ttc.db"),
        ["afile"],
        setup="regular_file",
    ),
    Case(
        "store-path-is-directory",
        run_case("store.url=sqlite:///{tmp}"),
        ["directory"],
    ),
    Case(
        "store-corrupt",
        run_case(),
        ["ttc.db", "not a SQLite database"],
        setup="corrupt",
    ),
    Case(
        "store-truncated",
        run_case(),
        ["ttc.db"],
        setup="truncated",
    ),
    Case(
        "store-locked",
        run_case(),
        ["ttc.db", "locked"],
        setup="locked",
        env={"TTC_SQLITE_BUSY_TIMEOUT_MS": "200"},
    ),
    Case(
        "store-postgres-refused",
        run_case("store.url=postgresql+psycopg://ttc@127.0.0.1:9/ttc"),
        ["127.0.0.1", "store.url"],
    ),
    # -- run: data files -------------------------------------------------------------------
    Case("jsonl-no-file-given", run_case("task=jsonl"), ["task.data_files"]),
    Case("jsonl-missing-file", jsonl(), ["data.jsonl", "task.data_files"]),
    Case("jsonl-empty-file", jsonl(), ["data.jsonl", "empty"], setup="data:"),
    Case("jsonl-directory", run_case("task=jsonl", "task.data_files={tmp}"), ["directory"]),
    Case("jsonl-broken-json", jsonl(), ["data.jsonl"], setup='data:{"question": "1+1", "ans'),
    Case("jsonl-binary", jsonl(), ["data.jsonl"], setup="binary"),
    Case("jsonl-csv", jsonl(), ["data.jsonl"], setup="data:question,answer\n1+1,2\n"),
    Case(
        "jsonl-null-question",
        jsonl(),
        ["data.jsonl", "row 1", "question"],
        setup='data:{"question": "1+1", "answer": "2"}\n{"question": null, "answer": "3"}\n',
    ),
    Case(
        "jsonl-empty-question",
        jsonl(),
        ["data.jsonl", "row 0", "question"],
        setup='data:{"question": "  ", "answer": "2"}\n',
    ),
    Case(
        "jsonl-missing-answer",
        jsonl(),
        ["data.jsonl", "row 1", "answer"],
        setup='data:{"question": "1+1", "answer": "2"}\n{"question": "2+2"}\n',
    ),
    Case(
        "jsonl-null-answer",
        jsonl(),
        ["data.jsonl", "row 0", "answer", "task.answer_field=null"],
        setup='data:{"question": "1+1", "answer": null}\n',
    ),
    Case(
        "jsonl-wrong-question-field",
        jsonl("task.question_field=q"),
        ["data.jsonl", "'q'", "task.question_field"],
        setup='data:{"question": "1+1", "answer": "2"}\n',
    ),
    Case(
        "jsonl-duplicate-ids",
        jsonl("task.id_field=id"),
        ["'a'", "task.id_field"],
        setup='data:{"id": "a", "question": "1", "answer": "1"}\n'
        '{"id": "a", "question": "2", "answer": "2"}\n',
    ),
    Case(
        "jsonl-null-id",
        jsonl("task.id_field=id"),
        ["data.jsonl", "row 0", "id"],
        setup='data:{"id": null, "question": "1", "answer": "1"}\n',
    ),
    Case(
        "jsonl-row-not-object",
        jsonl(),
        ["data.jsonl"],
        setup="data:[1, 2]\n",
    ),
    Case(
        "gsm8k-no-hash-answer",
        run_case("task=gsm8k", "task.data_files={tmp}/data.jsonl"),
        ["data.jsonl", "####"],
        setup='data:{"question": "1+1", "answer": "2"}\n',
    ),
    Case(
        "math500-missing-file",
        run_case("task=math500", "task.data_files={tmp}/nope.jsonl"),
        ["nope.jsonl", "task.data_files"],
    ),
    Case(
        "math500-wrong-layout",
        run_case("task=math500", "task.data_files={tmp}/data.jsonl"),
        ["data.jsonl", "problem", "task=jsonl"],
        setup='data:{"question": "1+1", "answer": "2"}\n',
    ),
    # -- run: backend settings -------------------------------------------------------------
    Case(
        "openai-base-url-not-a-url",
        run_case("backend=openai", "backend.base_url=notaurl"),
        ["backend.base_url", "notaurl"],
    ),
    Case(
        "openai-base-url-scheme",
        run_case("backend=openai", "backend.base_url=ftp://127.0.0.1/v1"),
        ["backend.base_url"],
    ),
    Case(
        "openai-max-attempts-zero",
        run_case("backend=openai", "backend.max_attempts=0"),
        ["backend.max_attempts"],
    ),
    Case(
        "openai-timeout-zero",
        run_case("backend=openai", "backend.timeout_s=0"),
        ["backend.timeout_s"],
    ),
    Case(
        "openai-concurrency-huge",
        run_case("backend=openai", "backend.max_concurrency=100000000"),
        ["backend.max_concurrency", "<="],
    ),
    Case("hf-dtype", run_case("backend=hf", "backend.dtype=float8"), ["backend.dtype"]),
    Case(
        "hf-batch-zero",
        run_case("backend=hf", "backend.max_batch_sequences=0"),
        ["backend.max_batch_sequences"],
    ),
    Case(
        "hf-batch-huge",
        run_case("backend=hf", "backend.max_batch_sequences=100000000000"),
        ["backend.max_batch_sequences", "<="],
    ),
    Case(
        "hf-missing-gguf",
        run_case("backend=hf", "backend.model={tmp}/nope.gguf"),
        ["nope.gguf", "backend.model"],
    ),
    # -- runs list / show / export ---------------------------------------------------------
    Case(
        "list-bogus-status",
        ["runs", "list", "--status", "bogus", "--store", "{store}"],
        ["bogus", "finished"],
        setup="run",
    ),
    Case("list-limit-zero", ["runs", "list", "--limit", "0", "--store", "{store}"], ["limit"]),
    Case(
        "list-missing-store",
        ["runs", "list", "--store", "sqlite:///{tmp}/typo/ttc.db"],
        ["typo", "no store"],
    ),
    Case(
        "list-missing-store-file",
        ["runs", "list", "--store", "sqlite:///{tmp}/tcc.db"],
        ["tcc.db", "no store"],
    ),
    Case("list-store-not-a-url", ["runs", "list", "--store", "notaurl"], ["notaurl"]),
    Case("list-corrupt-store", ["runs", "list", "--store", "{store}"], ["ttc.db"], setup="corrupt"),
    Case("list-store-directory", ["runs", "list", "--store", "sqlite:///{tmp}"], ["directory"]),
    Case(
        "list-env-store-missing",
        ["runs", "list"],
        ["missing.db", "no store"],
        env={"TTC_STORE_URL": "sqlite:///{tmp}/missing.db"},
    ),
    Case(
        "show-unknown",
        ["runs", "show", "nope", "--store", "{store}"],
        ["nope", "runs list"],
        setup="run",
    ),
    Case("show-wildcard", ["runs", "show", "1_4", "--store", "{store}"], ["1_4"], setup="ids"),
    Case("show-percent", ["runs", "show", "1%", "--store", "{store}"], ["1%"], setup="ids"),
    Case(
        "show-ambiguous",
        ["runs", "show", "1a4", "--store", "{store}"],
        ["1a4", "ambiguous", "1a4000000000", "1a4111111111"],
        setup="ids",
    ),
    Case("show-empty-id", ["runs", "show", "", "--store", "{store}"], ["no run"], setup="run"),
    Case(
        "show-missing-store",
        ["runs", "show", "abc", "--store", "sqlite:///{tmp}/typo.db"],
        ["typo.db", "no store"],
    ),
    Case(
        "show-corrupt-store",
        ["runs", "show", "abc", "--store", "{store}"],
        ["ttc.db"],
        setup="truncated",
    ),
    Case(
        "export-missing-folder",
        ["runs", "export", "{run}", "-o", "{tmp}/nofolder/out.jsonl", "--store", "{store}"],
        ["nofolder"],
        setup="run",
    ),
    Case(
        "export-onto-folder",
        ["runs", "export", "{run}", "-o", "{tmp}", "--store", "{store}"],
        ["directory"],
        setup="run",
    ),
    Case(
        "export-under-file",
        ["runs", "export", "{run}", "-o", "{tmp}/afile/out.jsonl", "--store", "{store}"],
        ["afile"],
        setup="run_and_file",
    ),
    Case(
        "export-bad-format",
        ["runs", "export", "{run}", "--format", "xml", "--store", "{store}"],
        ["xml", "jsonl, csv"],
        setup="run",
    ),
    Case(
        "export-unknown-run",
        ["runs", "export", "nope", "--store", "{store}"],
        ["nope"],
        setup="run",
    ),
    Case(
        "export-missing-store",
        ["runs", "export", "abc", "--store", "sqlite:///{tmp}/typo.db"],
        ["typo.db", "no store"],
    ),
    # -- db ---------------------------------------------------------------------------------
    Case(
        "db-upgrade-bad-revision",
        ["db", "upgrade", "nosuchrev", "--store", "{store}"],
        ["nosuchrev", "revision"],
    ),
    Case(
        "db-downgrade-bad-revision",
        ["db", "downgrade", "nosuchrev", "--store", "{store}"],
        ["nosuchrev", "revision"],
        setup="run",
    ),
    Case("db-upgrade-not-a-url", ["db", "upgrade", "--store", "notaurl"], ["notaurl"]),
    Case(
        "db-upgrade-corrupt", ["db", "upgrade", "--store", "{store}"], ["ttc.db"], setup="corrupt"
    ),
    Case(
        "db-downgrade-corrupt",
        ["db", "downgrade", "base", "--store", "{store}"],
        ["ttc.db"],
        setup="corrupt",
    ),
    Case(
        "db-upgrade-under-file",
        ["db", "upgrade", "--store", "sqlite:///{tmp}/afile/ttc.db"],
        ["afile"],
        setup="regular_file",
    ),
    Case(
        "db-downgrade-missing-store",
        ["db", "downgrade", "base", "--store", "sqlite:///{tmp}/typo.db"],
        ["typo.db", "no store"],
    ),
    # -- plugins ----------------------------------------------------------------------------
    Case(
        "plugins-allow-list-unknown",
        ["plugins"],
        ["TTC_PLUGINS", "notinstalled"],
        env={"TTC_PLUGINS": "notinstalled"},
    ),
    Case(
        "run-allow-list-unknown",
        run_case(),
        ["TTC_PLUGINS", "notinstalled"],
        env={"TTC_PLUGINS": "doubles,notinstalled"},
    ),
    Case(
        "plugins-module-missing",
        ["plugins"],
        ["no_such_plugin_module"],
        env={"TTC_PLUGIN_MODULES": "doubles,no_such_plugin_module"},
    ),
    Case(
        "plugins-module-raises",
        ["plugins"],
        ["bad_input_plugin", "RuntimeError"],
        setup="plugin:raise RuntimeError('boom')\n",
        env={"TTC_PLUGIN_MODULES": "doubles,bad_input_plugin"},
    ),
    Case(
        "plugins-unknown-hook",
        ["plugins"],
        ["bad_input_plugin", "register_strategiez"],
        setup="plugin:import ttc\n\n@ttc.hookimpl\ndef register_strategiez(register):\n    pass\n",
        env={"TTC_PLUGIN_MODULES": "doubles,bad_input_plugin"},
    ),
]


# -- setups ------------------------------------------------------------------------------------


def _make_run(url: str) -> str:
    store = Store(url)
    run_id = store.create_run(
        config={}, strategy="s", backend="b", model="m", task="t", reward="r",
        versions={}, hardware={}, n_problems=0,
    )  # fmt: skip
    store.finish_run(run_id, "finished")
    store.close()
    return run_id


@pytest.fixture
def prepared(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, str]]:
    case: Case = request.param
    db = tmp_path / "ttc.db"
    values = {"tmp": str(tmp_path), "store": f"sqlite:///{db}", "run": "none"}
    holders: list[Callable[[], None]] = []
    setup = case.setup or ""
    if setup in ("run", "run_and_file"):
        values["run"] = _make_run(values["store"])
    if setup in ("regular_file", "run_and_file"):
        (tmp_path / "afile").write_text("not a folder\n")
    if setup == "ids":
        for new in ("1a4000000000", "1a4111111111", "1b4222222222"):
            old = _make_run(values["store"])
            with sqlite3.connect(db) as conn:
                conn.execute("UPDATE runs SET id = ? WHERE id = ?", (new, old))
    if setup == "corrupt":
        db.write_bytes(b"this is not a database, just some text\n" * 200)
    if setup == "truncated":
        _make_run(values["store"])
        with sqlite3.connect(db) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        data = db.read_bytes()
        db.write_bytes(data[: len(data) // 3])
    if setup == "locked":
        _make_run(values["store"])
        conn = sqlite3.connect(db, isolation_level=None)
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("BEGIN EXCLUSIVE")
        holders.append(conn.close)
    if setup.startswith("data:"):
        (tmp_path / "data.jsonl").write_text(setup[len("data:") :])
    if setup == "binary":
        (tmp_path / "data.jsonl").write_bytes(bytes(range(256)) * 40)
    if setup.startswith("plugin:"):
        (tmp_path / "bad_input_plugin.py").write_text(setup[len("plugin:") :])
        monkeypatch.syspath_prepend(str(tmp_path))
        sys.modules.pop("bad_input_plugin", None)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value.format(**values))
    monkeypatch.chdir(tmp_path)
    before = db.read_bytes() if db.is_file() else None
    values["before"] = "" if before is None else str(len(before))
    yield values
    for release in holders:
        release()
    sys.modules.pop("bad_input_plugin", None)
    if before is not None and setup != "locked":
        # Nothing stored is lost: a failing command leaves an existing store file as it was.
        assert db.read_bytes() == before, "the store file changed"


def check_error(output: str, expect: list[str]) -> None:
    assert "Traceback" not in output, output
    lines = [line for line in output.splitlines() if line.strip()]
    assert 1 <= len(lines) <= 2, f"expected one line (plus a hint line), got:\n{output}"
    text = " ".join(lines)
    assert lines[0].startswith("error:"), output
    for word in expect:
        assert word in text, f"{word!r} not in {text!r}"
    assert any(w in text for w in FIX_WORDS), f"no fix named in {text!r}"


@pytest.mark.parametrize("prepared", CASES, ids=[c.id for c in CASES], indirect=True)
def test_bad_input(prepared: dict[str, str], request: pytest.FixtureRequest) -> None:
    case: Case = request.node.callspec.params["prepared"]
    args = [a.format(**prepared) for a in case.args]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"{type(result.exception).__name__} escaped") from result.exception
    assert result.exit_code != 0, result.output
    check_error(result.output, case.expect)


def test_the_table_has_at_least_80_cases() -> None:
    assert len({c.id for c in CASES}) == len(CASES) >= 80


# -- a few as real subprocesses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["strategy.n=99999999999999999999999"], ["strategy.n", "<="]),
        (["+foo=bar"], ["foo"]),
        (["task=jsonl", "task.data_files=missing.jsonl"], ["missing.jsonl"]),
    ],
    ids=["huge-n", "new-key", "missing-data"],
)
def test_bad_input_in_a_subprocess(tmp_path: Path, args: list[str], expect: list[str]) -> None:
    proc = ttc_cli(
        ["run", *DOUBLES, f"store.url=sqlite:///{tmp_path / 'ttc.db'}", *args],
        cwd=tmp_path,
        timeout=60,
    )
    assert proc.returncode != 0
    check_error(proc.stderr + proc.stdout, expect)
    if not any("data" in a for a in args):  # refused before the store is opened
        assert not (tmp_path / "ttc.db").exists()


def test_subprocess_runs_list_on_a_corrupt_store(tmp_path: Path) -> None:
    db = tmp_path / "ttc.db"
    db.write_bytes(os.urandom(8192))
    before = db.read_bytes()
    proc = ttc_cli(["runs", "list", "--store", f"sqlite:///{db}"], cwd=tmp_path, timeout=60)
    assert proc.returncode != 0
    check_error(proc.stderr + proc.stdout, ["ttc.db"])
    assert db.read_bytes() == before
