"""`--verbose` / `-v` is ttc's flag wherever it stands on the command line."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import DOUBLES, ttc_cli


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("flag", ["--verbose", "-v"])
def test_verbose_before_or_after_the_command(tmp_path: Path, flag: str, where: str) -> None:
    """`ttc run --verbose ...` (where most people put it) was handed to Hydra, which
    stopped with its usage text: 'unrecognized arguments: --verbose'."""
    job = [*DOUBLES, "task.n_problems=2", f"store.url=sqlite:///{tmp_path / 'v.db'}"]
    args = [flag, "run", *job] if where == "before" else ["run", flag, *job]
    proc = ttc_cli(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "unrecognized arguments" not in proc.stderr
    assert "status: finished" in proc.stdout
