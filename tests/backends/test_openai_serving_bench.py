"""benchmarks/serving.py runs end to end (capacity, both loops, every strategy, the
adaptive-vs-majority comparison) against the in-test HTTP server: the script the CI's
vLLM step runs at a small size works, and fails on a failing run. Timings are not
checked."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
from test_openai import FakeServer

from conftest import ROOT


def _bench() -> Any:
    spec = importlib.util.spec_from_file_location(
        "serving_bench", ROOT / "benchmarks" / "serving.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _args(srv: FakeServer, *extra: str) -> list[str]:
    return [
        "--base-url", srv.base_url, "--model", "scripted", "--tokenizer", "",
        "--problems", "2", "--width", "2", "--steps", "2", "--step-tokens", "6",
        "--naive-problems", "1", *extra,
    ]  # fmt: skip


def test_the_serving_benchmark_prints_its_tables(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    with FakeServer() as srv:
        srv.plan = lambda body: []
        bench.main(_args(srv, "--strategies", "particle_filter"))
    out = capsys.readouterr().out
    assert "particle_filter" in out and "capacity" in out and "utilisation" in out
    assert "overhead" in out and "x naive" in out and "x per-problem" in out


@pytest.mark.slow
def test_every_strategy_of_the_serving_benchmark_runs(capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    with FakeServer() as srv:
        srv.plan = lambda body: []
        bench.main(_args(srv, "--compare-problems", "2"))
    out = capsys.readouterr().out
    for name in ("best_of_n", "beam_search", "dvts", "particle_filter", "a_star"):
        assert name in out
    assert "adaptive_consistency" in out and "majority of 8" in out


def test_a_failing_run_fails_the_benchmark(tmp_path: Path) -> None:
    bench = _bench()
    with FakeServer() as srv:
        srv.plan = lambda body: ["500"] * 100  # every completion fails
        with pytest.raises(BaseException):  # noqa: B017 - SystemExit or the backend's error
            bench.main(_args(srv, "--strategies", "best_of_n", "--problems", "1"))
