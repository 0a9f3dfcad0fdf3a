"""The built-in strategies pass the conformance suite that ttc ships for plugin authors."""

from __future__ import annotations

from ttc.strategies.beam_search import BeamSearch, BeamSearchConfig
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
from ttc.testing import StrategyConformance


class TestBestOfN(StrategyConformance):
    strategy = BestOfN(BestOfNConfig(n=4))


class TestBeamSearch(StrategyConformance):
    strategy = BeamSearch(BeamSearchConfig(beam_width=2, expansions=2))
