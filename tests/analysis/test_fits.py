"""Scaling fits recover known parameters."""

from __future__ import annotations

import numpy as np
import pytest
from known import known_store_for

from ttc.analysis import load, per_problem
from ttc.analysis.fits import extrapolate, fit_power_law, fit_saturation, saturation_point
from ttc.analysis.synthetic import power_law_coverage


@pytest.fixture
def known_store(tmp_path_factory: pytest.TempPathFactory):
    return known_store_for(tmp_path_factory)


def test_power_law_recovers_known_parameters() -> None:
    rng = np.random.default_rng(0)
    ks = np.array([1, 2, 4, 8, 16, 32, 64, 128])
    for a, b in [(-1.2, -0.35), (-0.5, -0.8), (-3.0, -0.2)]:
        cov = power_law_coverage(a, b, ks) + rng.normal(0, 0.002, len(ks))
        fit = fit_power_law(ks, cov)
        assert fit.a == pytest.approx(a, abs=0.05)
        assert fit.b == pytest.approx(b, abs=0.03)
        assert fit.r2 > 0.99
        assert fit.rmse < 0.005


def test_power_law_band_holds_the_fit(known_store) -> None:
    url, _, ids = known_store
    pp = per_problem(load(url, [ids["best_of_n"]]), metrics=("pass@k",))
    wide = pp.pivot_table(index="problem_id", columns="k", values="value")
    at = np.array([16, 64, 256])
    fit, lo, hi = extrapolate(wide.columns.to_numpy(), wide.to_numpy(), at, n_boot=60)
    assert np.all(lo <= fit + 1e-9) and np.all(fit <= hi + 1e-9)
    assert np.all(np.diff(fit) > 0)  # coverage keeps rising
    assert np.all(hi - lo > 0)


def test_saturation_model_recovers_parameters_and_budget() -> None:
    ks = np.arange(1, 33)
    f_max, p = 0.8, 0.2
    cov = f_max * (1 - (1 - p) ** ks)
    fit = fit_saturation(ks, cov, epsilon=0.01)
    assert fit.f_max == pytest.approx(f_max, abs=1e-3)
    assert fit.p == pytest.approx(p, abs=1e-3)
    # the budget is the first N whose next sample adds less than epsilon
    gains = f_max * p * (1 - p) ** np.arange(0, 100)
    assert fit.n_star == int(np.argmax(gains < 0.01))
    assert saturation_point(1.0, 0.0, 0.01) is None
