"""What the plots say: legends and axis labels a reader needs (read from the figures)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ttc.analysis import plots


@pytest.fixture
def figures(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the plot functions draw, caught before they are closed."""
    caught: list[Any] = []
    real = plots._png

    def keep(fig: Any, path: Any) -> bytes:
        caught.append(fig)
        return real(fig, path)

    monkeypatch.setattr(plots, "_png", keep)
    return caught


def _legend(fig: Any) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_each_coverage_fit_names_its_run(figures: list[Any]) -> None:
    k = np.array([1, 2, 4])
    curves = [
        {
            "label": label,
            "k": k,
            "value": v,
            "lo": v - 0.05,
            "hi": v + 0.05,
            "fit_k": k,
            "fit": v,
            "fit_lo": v - 0.1,
            "fit_hi": v + 0.1,
            "a": a,
            "b": -0.5,
            "r2": 0.99,
        }
        for label, v, a in (
            ("best_of_n(n=4)", np.array([0.2, 0.3, 0.4]), -1.6),
            ("self_consistency(n=4)", np.array([0.3, 0.4, 0.5]), -1.2),
        )
    ]
    plots.coverage(curves)
    legend = _legend(figures[0])
    # one entry per run, its fit beside its name (the fits were listed apart, unnamed)
    assert len(legend) == 2
    assert legend[0].startswith("best_of_n(n=4)") and "-1.60" in legend[0]
    assert legend[1].startswith("self_consistency(n=4)") and "-1.20" in legend[1]


def test_per_bin_ticks_give_each_bins_difficulty_range(figures: list[Any]) -> None:
    by_bin = pd.DataFrame(
        {"bin": [0, 1, 0, 1], "family": ["a", "a", "b", "b"], "value": [0.9, 0.2, 0.8, 0.3]}
    )
    chosen = pd.DataFrame(
        {"bin": [0, 1], "up_to": [0.25, float("inf")], "accuracy": [0.9, 0.3], "choice": ["a", "b"]}
    )
    plots.per_bin(by_bin, chosen, measure="agreement")
    ticks = [t.get_text() for t in figures[0].axes[0].get_xticklabels()]
    assert ticks == ["bin1\nagreement ≤ 0.25", "bin2\nagreement > 0.25"]
