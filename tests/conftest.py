"""Shared fixtures: the test-double plugin, a store per test, and CLI helpers."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
ROOT = TESTS_DIR.parent

# The spine tests drive ttc with the test doubles in tests/doubles.py, loaded as a plugin.
os.environ["TTC_PLUGIN_MODULES"] = "doubles"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Without CUDA the kernel tests (tests/kernels) run the Triton kernels in Triton's CPU
# interpreter; `@triton.jit` reads the variable when a kernel is defined, so it is set
# here, before any test module imports ttc.kernels. (Not in a tests/kernels/conftest.py:
# pytest imports every conftest.py as the module `conftest`, and a second one would
# shadow this one for the `from conftest import ...` of test modules collected later.)
if os.environ.get("TRITON_INTERPRET") is None:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

DOUBLES = ["backend=scripted", "task=synthetic", "reward=synthetic", "run.progress=false"]
"""Overrides that put a job on the test doubles."""


@pytest.fixture(autouse=True)
def _fresh_registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    from ttc.registry import reset_registry

    reset_registry()
    yield
    reset_registry()


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'ttc.db'}"


def subprocess_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    env.setdefault("COLUMNS", "200")
    env.update(extra)
    return env


def ttc_cli(
    args: Sequence[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed `ttc` console script in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "ttc.cli", *args],
        cwd=cwd,
        env=env or subprocess_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def peek(db: Path, sql: str) -> list[tuple[object, ...]] | None:
    """Rows of a read-only query on a SQLite store another process is writing (None while
    the file or its tables do not exist yet). Never migrates, never writes."""
    import sqlite3

    if not db.exists():
        return None
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return None


def wait_for(condition: Callable[[], bool], *, timeout: float = 60, what: str = "") -> None:
    """Poll `condition` every 20 ms until it holds; fail the test after `timeout` s."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what or condition}")
        time.sleep(0.02)
