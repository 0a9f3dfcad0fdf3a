"""The `ttc serve` command in a subprocess: it serves, and on SIGTERM the requests in
flight finish and are stored, the run is marked finished, and nothing else is written;
killed outright, it loses at most the requests in flight."""

from __future__ import annotations

import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

openai = pytest.importorskip("openai")

from ttc.store import Store  # noqa: E402

from conftest import DOUBLES, subprocess_env  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_sigterm_lets_in_flight_requests_finish_and_closes_the_run(tmp_path: Path) -> None:
    url, port = f"sqlite:///{tmp_path / 'ttc.db'}", free_port()
    overrides = [f"store.url={url}", f"serve.port={port}", "backend.delay_s=0.5", "strategy.n=2"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttc.cli", "serve", *DOUBLES, *overrides],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}/v1" in line, line
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=60
        )
        answers: list[object] = []

        def ask(i: int) -> None:
            messages = [{"role": "user", "content": f"q{i} answer={i}"}]
            try:
                answers.append(client.chat.completions.create(model="ttc", messages=messages))
            except Exception as exc:
                answers.append(exc)

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while httpx.get(f"http://127.0.0.1:{port}/health").json()["inflight"] < 4:
            assert time.monotonic() < deadline, "the requests never got in flight"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert len(answers) == 4 and all(not isinstance(a, Exception) for a in answers), answers
    assert "4 requests answered" in out
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/v1/models")
    store = Store(url)
    try:
        (run,) = store.list_runs()
        assert run["status"] == "finished" and run["task"] == "serve"
        assert len(store.results(run["id"])) == 4
    finally:
        store.close()


def test_a_killed_server_keeps_every_answered_request_whole_in_the_store(tmp_path: Path) -> None:
    """SIGKILL with requests in flight: every request that got its answer is in the store
    with its whole tree and calls (it was committed before the answer was sent); the
    requests cut off lose at most themselves; the store opens and checks clean."""
    db = tmp_path / "ttc.db"
    port = free_port()
    overrides = [f"store.url=sqlite:///{db}", f"serve.port={port}", "backend.delay_s=0.02"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "ttc.cli", "serve", *DOUBLES, *overrides],
        cwd=tmp_path,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    answered: list[dict] = []
    stop = threading.Event()
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}/v1" in line, line

        def client(k: int) -> None:
            with httpx.Client(base_url=f"http://127.0.0.1:{port}/v1", timeout=30) as http:
                i = 0
                while not stop.is_set():
                    body = {
                        "model": "ttc/self_consistency",
                        "messages": [{"role": "user", "content": f"c{k} q{i} answer={i}"}],
                        "n": 3,
                    }
                    i += 1
                    try:
                        r = http.post("/chat/completions", json=body)
                    except httpx.HTTPError:
                        return  # the server is gone
                    assert r.status_code == 200, r.text
                    answered.append(r.json()["usage"])

        threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(answered) < 40:
            assert time.monotonic() < deadline, "too few answers"
            time.sleep(0.01)
        proc.kill()  # mid-traffic: requests are in flight, some commits too
        proc.wait(timeout=30)
        stop.set()
        for t in threads:
            t.join(timeout=30)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    check.close()
    store = Store(f"sqlite:///{db}")
    try:
        (run,) = store.list_runs()
        rows = {r["problem_id"]: r for r in store.results(run["id"])}
        for usage in answered:
            row = rows[usage["ttc"]["problem_id"]]  # every answered request is stored
            assert row["tokens"] == usage["completion_tokens"]
        for pid, row in rows.items():  # and every stored one is whole
            nodes = store.nodes(run["id"], pid)
            calls = store.calls(run["id"], pid)
            assert len(nodes) == row["samples"] + 1 == 4
            assert sum(c["completion_tokens"] for c in calls) == row["tokens"]
        assert len(rows) - len(answered) <= 8  # at most the requests in flight
    finally:
        store.close()


def test_a_draining_server_answers_503(tmp_path: Path) -> None:
    from gateway_harness import gateway

    with gateway(f"sqlite:///{tmp_path / 'ttc.db'}") as g:
        g.run.draining = True
        try:
            with pytest.raises(openai.InternalServerError, match="shutting down"):
                g.client().chat.completions.create(
                    model="ttc", messages=[{"role": "user", "content": "hi"}]
                )
        finally:
            g.run.draining = False


@pytest.mark.parametrize(
    "overrides,words",
    [
        (["serve.prot=1"], ["serve.prot", "not a config key"]),
        (["serve.port=70000"], ["serve.port=70000", "<= 65535"]),
        (["serve.sqlite_synchronous=off"], ["serve.sqlite_synchronous='off'", "normal, full"]),
        (["reward=none", "strategy=best_of_n"], ["reward=none", "best_of_n"]),
        (["serve.api_keys_env=TTC_TEST_UNSET_KEYS"], ["TTC_TEST_UNSET_KEYS", "not set"]),
        (["backend=hf", "backend.model=no-such-model-dir"], ["no-such-model-dir"]),
    ],
)
def test_bad_serve_configs_fail_in_one_line_before_serving(
    tmp_path: Path, overrides: list[str], words: list[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'ttc.db'}"
    proc = subprocess.run(
        [sys.executable, "-m", "ttc.cli", "serve", *DOUBLES, f"store.url={url}", *overrides],
        cwd=tmp_path,
        env=subprocess_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr
    for w in words:
        assert w in lines[0]
    if (tmp_path / "ttc.db").exists():  # nothing was served: no run was created
        store = Store(url)
        try:
            assert store.list_runs() == []
        finally:
            store.close()
