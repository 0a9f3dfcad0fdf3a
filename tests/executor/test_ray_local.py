"""The Ray executor on a one-node local cluster (`ray.init(num_cpus=2)`, shared by the
module): the same answers as a local run, each problem stored once, an actor killed
mid-run, and Ray never loaded by `import ttc` or a local run."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

import ttc
from ttc.errors import ConfigError
from ttc.launch import compose
from ttc.runner import Runner

from conftest import DOUBLES, subprocess_env
from ray_harness import RAY_DOUBLES, answers, stored_counts, worker_env


@pytest.fixture(scope="module", autouse=True)
def cluster() -> Iterator[None]:
    with worker_env():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield
        finally:
            ray.shutdown()


def run(url: str, *overrides: str) -> Any:
    return Runner(compose([f"store.url={url}", *overrides])).run()


def test_two_actors_store_every_problem_once_with_the_local_answers(store_url: str) -> None:
    job = ["strategy=beam_search", "task.n_problems=12", "run.seed=7"]
    local = run(store_url, *DOUBLES, *job)
    remote = run(store_url, *RAY_DOUBLES, *job, "ray.actors_per_node=2", "ray.chunk_size=2")
    assert remote.status == "finished" and remote.solved_now == 12
    counts = stored_counts(store_url, remote.run_id)
    assert sorted(counts) == [f"p{i:03d}" for i in range(12)]
    assert set(counts.values()) == {1}
    assert answers(store_url, remote.run_id) == answers(store_url, local.run_id)
    # the driver's totals are the store's, as for a local run (clock readings aside)
    clock = {"wall_s", "mean_latency_s"}
    drop = lambda t: {k: v for k, v in t.items() if k not in clock}  # noqa: E731
    assert drop(remote.totals) == drop(local.totals)


class Seen:
    """An observer: what the driver's hooks saw (the progress line is such an observer)."""

    def __init__(self) -> None:
        self.calls = 0
        self.done: list[str] = []

    @ttc.hookimpl
    def on_call(self, run_id: str, problem_id: str, call: Any) -> None:
        self.calls += 1

    @ttc.hookimpl
    def on_problem_done(self, run_id: str, result: Any) -> None:
        self.done.append(result.problem.id)


def test_the_driver_sees_every_call_and_problem_of_the_workers(store_url: str) -> None:
    from ttc.registry import get_registry

    registry = get_registry()
    seen = Seen()
    registry.pm.register(seen)
    cfg = compose([*RAY_DOUBLES, f"store.url={store_url}", "task.n_problems=6"])
    out = Runner(cfg, registry=registry).run()
    from ttc.store import Store

    calls = Store(store_url).calls(out.run_id)
    assert sorted(seen.done) == [f"p{i:03d}" for i in range(6)]
    assert seen.calls == len(calls) > 0


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_the_driver_sees_the_tokens_the_workers_generate(store_url: str, executor: str) -> None:
    """The progress line moves with the actors' decoding (per batch slice), not only when
    a call ends: every generated token reaches the driver's listeners, before its
    problem is reported done."""
    from ttc.progress import add_token_listener, remove_token_listener
    from ttc.registry import get_registry
    from ttc.store import Store

    registry = get_registry()
    seen = Seen()
    registry.pm.register(seen)
    heard: list[tuple[int, int]] = []  # (tokens, problems done when they arrived)
    listener = lambda n: heard.append((n, len(seen.done)))  # noqa: E731
    add_token_listener(listener)
    try:
        overrides = [f"store.url={store_url}", "task.n_problems=6", "backend.token_delay_s=0.001"]
        base = RAY_DOUBLES if executor == "ray" else [*RAY_DOUBLES, "run.executor=local"]
        out = Runner(compose([*base, *overrides]), registry=registry).run()
    finally:
        remove_token_listener(listener)
    calls = Store(store_url).calls(out.run_id)
    generated = sum(c["completion_tokens"] for c in calls if c["kind"] == "generate")
    assert sum(n for n, _ in heard) == generated > 0
    assert len(heard) > 1  # the line moved during the run, not once at its end
    assert heard[0][1] == 0  # tokens came while the first problem was still running


def test_a_killed_actor_loses_only_its_unfinished_problems(store_url: str) -> None:
    n = 16
    job = ["strategy=beam_search", f"task.n_problems={n}", "backend.delay_s=0.05"]
    ray_job = ["ray.actors_per_node=2", "ray.chunk_size=1", "ray.concurrency_per_actor=2"]
    cfg = compose([*RAY_DOUBLES, f"store.url={store_url}", *job, *ray_job])
    runner = Runner(cfg)
    outcome: list[Any] = []
    failed: list[BaseException] = []

    def go() -> None:
        try:
            outcome.append(runner.run())
        except BaseException as exc:
            failed.append(exc)

    thread = threading.Thread(target=go)
    thread.start()
    deadline = time.monotonic() + 120
    while runner.run_id is None or sum(stored_counts(store_url, runner.run_id).values()) < 2:
        assert time.monotonic() < deadline and thread.is_alive(), failed
        time.sleep(0.05)
    victim = runner.executor.actors[0]  # busy: one problem per chunk, two chunks each
    stored_at_kill = sum(stored_counts(store_url, runner.run_id).values())
    ray.kill(victim)
    thread.join(timeout=180)
    assert not failed and outcome, failed
    assert stored_at_kill < n  # the actor died with problems left to solve
    assert outcome[0].status == "finished"
    assert runner.executor.deaths == 1
    counts = stored_counts(store_url, runner.run_id)
    assert len(counts) == n and set(counts.values()) == {1}
    local = run(store_url, *DOUBLES, *job)
    assert answers(store_url, runner.run_id) == answers(store_url, local.run_id)


def test_an_in_memory_sqlite_store_is_refused_in_one_line() -> None:
    with pytest.raises(ConfigError, match="use store=postgres"):
        run("sqlite://", *RAY_DOUBLES, "task.n_problems=2")


def test_import_ttc_and_a_local_run_never_load_ray(tmp_path: Path) -> None:
    overrides = [*DOUBLES, f"store.url=sqlite:///{tmp_path / 'l.db'}"]
    code = (
        "import sys, ttc\n"
        "from ttc.launch import compose\n"
        "from ttc.runner import Runner\n"
        "assert 'ray' not in sys.modules, 'import ttc loaded ray'\n"
        f"cfg = compose({overrides!r})\n"
        "assert Runner(cfg).run().status == 'finished'\n"
        "assert 'ray' not in sys.modules, 'a local run loaded ray'\n"
        "print('ok')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_without_ray_installed_a_ray_run_says_what_to_install(tmp_path: Path) -> None:
    overrides = [*RAY_DOUBLES, f"store.url=sqlite:///{tmp_path / 'r.db'}"]
    code = (
        "import sys\n"
        "sys.modules['ray'] = None  # as if Ray were not installed\n"
        "from ttc.errors import ConfigError\n"
        "from ttc.launch import compose\n"
        "from ttc.runner import Runner\n"
        "try:\n"
        f"    Runner(compose({overrides!r})).run()\n"
        "except ConfigError as exc:\n"
        "    print(exc, '|', exc.hint)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "run.executor=ray needs Ray, which is not installed | "
        "pip install 'ttc[ray]', or run.executor=local"
    )
