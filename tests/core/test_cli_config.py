"""Config errors at compose time: one line naming the key and what is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.errors import ConfigError
from ttc.launch import compose, expand_sweep

from conftest import DOUBLES, ttc_cli


def _error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


def test_unknown_strategy_names_key_and_choices(tmp_path: Path, store_url: str) -> None:
    proc = ttc_cli(["run", *DOUBLES, f"store.url={store_url}", "strategy=nope"], cwd=tmp_path)
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "strategy=nope" in lines[0]
    assert "best_of_n" in lines[0] and "beam_search" in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout


def test_out_of_range_value_names_key_and_range(tmp_path: Path, store_url: str) -> None:
    proc = ttc_cli(["run", *DOUBLES, f"store.url={store_url}", "strategy.n=-3"], cwd=tmp_path)
    assert proc.returncode != 0
    lines = _error_lines(proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "strategy.n" in lines[0] and ">= 1" in lines[0]
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("*.db"))


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("strategy.nn=3", "strategy.nn is not a config key"),
        ("strategy.n=abc", "strategy.n"),
        ("budget.tokens=0", "budget.tokens=0 is out of range"),
        ("scheduler.max_batch_size=0", "scheduler.max_batch_size"),
        ("reward.aggregate=median", "valid choices: last, min, prod, mean"),
        ("task=nope", "valid choices:"),
    ],
)
def test_compose_errors_name_the_key(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose([*DOUBLES, override])
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_valid_overrides_compose_to_typed_values() -> None:
    cfg = compose([*DOUBLES, "strategy.n=4", "budget.tokens=100"])
    assert cfg.strategy.n == 4
    assert cfg.budget.tokens == 100
    assert cfg.budget.samples is None


def test_sweep_expands_to_the_cartesian_product() -> None:
    jobs = expand_sweep(["strategy.n=1,2", "task.n_problems=3,4", "backend=scripted"])
    assert len(jobs) == 4
    assert {tuple(sorted(j)) for j in jobs} == {
        tuple(sorted([f"strategy.n={n}", f"task.n_problems={p}", "backend=scripted"]))
        for n in (1, 2)
        for p in (3, 4)
    }
