"""A server that is not there stops the run at once with one line (no retry storm), and
the servers ttc must not crash get what they need (`backend.seed=false`)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from test_openai import FakeServer, _overrides
from typer.testing import CliRunner

from ttc.cli import app
from ttc.errors import ServerUnreachable
from ttc.launch import compose
from ttc.runner import Runner
from ttc.store import Store


def _dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dead_overrides(port: int, store_url: str, *extra: str) -> list[str]:
    return [
        "backend=openai",
        f"backend.base_url=http://127.0.0.1:{port}/v1",
        "backend.model=scripted",
        "backend.api_key_env=TTC_TEST_OPENAI_KEY",
        # retries that would wait: each request alone would try 5 times over ~7 s
        "backend.max_attempts=5",
        "backend.backoff_base_s=0.5",
        "task=synthetic",
        "task.n_problems=16",
        "reward=synthetic",
        "strategy=best_of_n",
        "strategy.n=2",
        "run.progress=false",
        f"store.url={store_url}",
        *extra,
    ]


def test_a_dead_server_stops_the_run_with_one_line_and_a_resume_finishes_it(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    port = _dead_port()
    caplog.set_level(logging.INFO, logger="ttc.backends.openai")
    runner = Runner(compose(_dead_overrides(port, store_url, "run.concurrency=4")))
    with pytest.raises(ServerUnreachable) as info:
        runner.run()
    err = info.value
    assert f"127.0.0.1:{port}" in err.message and "\n" not in err.message
    assert "refused" in err.message and "not running" in err.message
    assert err.hint is not None and f"resume={runner.run_id}" in err.hint
    # no retry storm: after `fail_fast` refusals in a row, no request is tried again
    attempts = caplog.text.count("attempt ")
    retried = caplog.text.count("; retrying")
    assert attempts <= 8 + 4 and retried <= 8, caplog.text
    store = Store(store_url)
    run = store.get_run(runner.run_id)
    assert run["status"] == "failed" and "refused" in (run["error"] or "")
    results = store.results(runner.run_id)
    # the problems in flight are stored with the error; the rest were never started
    assert results and len(results) < 16
    assert all(r["status"] == "error" and "refused" in r["error"] for r in results)
    # the server comes up at that address: a resume solves every problem
    with FakeServer(port=port) as srv:
        srv.plan = lambda body: []
        outcome = Runner(resume=_resume(runner.run_id, store_url)).run()
    assert outcome.status == "finished"
    results = store.results(runner.run_id)
    assert len(results) == 16 and all(r["status"] == "ok" for r in results)


def _resume(run_id: str | None, store_url: str) -> object:
    from ttc.resume import parse_request

    return parse_request([f"resume={run_id}", f"store.url={store_url}"])


def test_a_dead_server_is_one_line_on_the_command_line(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'ttc.db'}"
    port = _dead_port()
    args = ["run", *_dead_overrides(port, store_url), "task.n_problems=4"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "300"})
    assert result.exit_code != 0
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    assert len(lines) <= 2 and lines[0].startswith("error:"), result.output
    assert f"127.0.0.1:{port}" in lines[0] and "resume=" in result.output


def test_a_dead_server_at_start_fails_on_the_first_refusal(store_url: str) -> None:
    """Without `backend.model` the backend asks `GET /models` first: a refusal there
    needs no retries."""
    overrides = [o for o in _dead_overrides(_dead_port(), store_url) if "model=" not in o]
    with pytest.raises(ServerUnreachable, match="refused the connection: it is not running"):
        Runner(compose(overrides)).run()


def test_seed_false_sends_no_seed(store_url: str) -> None:
    """(With the default, every body carries its seed: test_openai.py checks it.)"""
    with FakeServer() as srv:
        srv.plan = lambda body: []
        cfg = compose(_overrides(srv, store_url, "backend.seed=false", "task.n_problems=2"))
        assert Runner(cfg).run().status == "finished"
        assert srv.bodies and all("seed" not in b for b in srv.bodies)
