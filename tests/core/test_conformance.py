"""The built-in strategies and the documentation's example strategy pass the
conformance suite that ttc ships for plugin authors, the documentation's backend and
reward suite examples run; the docs show the tested files."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from ttc.strategies.beam_search import BeamSearch, BeamSearchConfig
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
from ttc.strategies.particle_filter import ParticleFilter, ParticleFilterConfig
from ttc.testing import StrategyConformance

from conftest import DOUBLES, ROOT

EXAMPLES = ROOT / "docs" / "examples"
sys.path.insert(0, str(EXAMPLES))

from test_first_agreement import TestFirstAgreement  # noqa: E402  (the docs' own test)
from test_plugin_conformance import TestMyBackend, TestMyReward  # noqa: E402  (the docs')

__all__ = ["TestFirstAgreement", "TestMyBackend", "TestMyReward"]

INCLUDE = re.compile(r"<!-- include: (\S+)[^>]*-->\n```python\n(.*?)```", re.S)


class TestBestOfN(StrategyConformance):
    strategy = BestOfN(BestOfNConfig(n=4))


class TestBeamSearch(StrategyConformance):
    strategy = BeamSearch(BeamSearchConfig(beam_width=2, expansions=2))


class TestParticleFilter(StrategyConformance):
    strategy = ParticleFilter(ParticleFilterConfig(particles=3))


@pytest.mark.parametrize("doc", sorted((ROOT / "docs").rglob("*.md")), ids=lambda p: p.name)
def test_included_examples_are_the_tested_files(doc: Path) -> None:
    for path, block in INCLUDE.findall(doc.read_text()):
        assert block == (ROOT / path).read_text(), (
            f"{doc.relative_to(ROOT)} shows an outdated copy of {path}: paste the file in"
        )


def test_the_docs_include_the_example_strategy() -> None:
    included = [p for p, _ in INCLUDE.findall((ROOT / "docs" / "plugins.md").read_text())]
    assert "docs/examples/ttc_first_agreement.py" in included
    assert "docs/examples/test_first_agreement.py" in included
    assert "docs/examples/test_plugin_conformance.py" in included


def test_the_example_plugin_runs_through_the_runner(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ttc.launch import compose
    from ttc.registry import reset_registry
    from ttc.runner import Runner
    from ttc.store import Store

    monkeypatch.setenv("TTC_PLUGIN_MODULES", "doubles,ttc_first_agreement")
    reset_registry()
    cfg = compose(
        [
            *DOUBLES,
            f"store.url={store_url}",
            "strategy=first_agreement",
            "reward=none",
            "task.n_problems=3",
            "budget.tokens=300",
        ]
    )
    outcome = Runner(cfg).run()
    results = Store(store_url).results(outcome.run_id)
    assert len(results) == 3 and all(r["status"] == "ok" for r in results)
    assert all(r["tokens"] <= 300 for r in results)
