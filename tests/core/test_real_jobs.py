"""Real jobs on the real default model (SmolLM2-135M on CPU), offline after its first
fetch: the default job at a small size, and MATH-500 from the local data copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from ttc.store import Store

from conftest import ROOT, subprocess_env, ttc_cli

DATA = ROOT.parent / "shared" / "data"


def _env() -> dict[str, str]:
    env = subprocess_env(HF_HUB_OFFLINE="1")
    env.pop("TTC_PLUGIN_MODULES", None)  # the product's plugins only
    return env


@pytest.mark.slow
def test_default_job_runs_on_the_real_model(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'ttc.db'}"
    proc = ttc_cli(
        ["run", f"store.url={store}", "task.n_problems=3", "strategy.n=2",
         "strategy.max_tokens=48"],
        cwd=tmp_path, env=_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = Store(store).list_runs()
    assert (run["backend"], run["model"], run["task"]) == ("hf", "smollm2-135m", "arith")
    assert run["strategy"] == "best_of_n" and run["reward"] == "self_certainty"
    totals = run["totals"]
    assert totals["problems"] == 3 and totals["samples"] == 6
    assert 0 < totals["tokens"] <= 6 * 48
    assert totals["flops"] > 0


@pytest.mark.slow
@pytest.mark.skipif(not DATA.is_dir(), reason="no ../shared/data beside the checkout")
def test_math500_from_the_local_copy_runs_offline(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'ttc.db'}"
    proc = ttc_cli(
        ["run", f"store.url={store}", "task=math500",
         "task.data_files=../shared/data/math500/test.jsonl", "task.limit=3",
         "strategy.n=2", "strategy.max_tokens=48"],
        cwd=ROOT, env=_env(), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    (run,) = Store(store).list_runs()
    results = Store(store).results(run["id"])
    assert len(results) == 3
    assert all(r["reference"] for r in results)
