"""Scaling fits of coverage (pass@k) against the number of samples.

- `fit_power_law`: the exponentiated power law of "Large Language Monkeys" (Brown et al.,
  2024), `coverage(k) = exp(a * k**b)` with `a < 0`, `b < 0`, fitted by least squares on
  the coverage curve; reports `a`, `b`, R^2 and RMSE, and `extrapolate` gives a band from
  refits on problems resampled with replacement.
- `fit_saturation`: the parallel-scaling model of "Scaling over Scaling" (TTSPM, Wang et
  al., 2025), `coverage(N) = F_max * (1 - (1 - p)**N)`; the saturation budget is the
  smallest N at which one more sample adds less than `epsilon` coverage,
  `N* = ceil(log(epsilon / (F_max * p)) / log(1 - p))`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit


def _power(k: np.ndarray, a: float, b: float) -> np.ndarray:
    return np.exp(a * np.power(k, b))


@dataclass(frozen=True)
class PowerLawFit:
    a: float
    b: float
    r2: float
    rmse: float
    ks: tuple[int, ...]

    def predict(self, k: np.ndarray | float) -> np.ndarray:
        return _power(np.asarray(k, dtype=float), self.a, self.b)


def fit_power_law(ks: np.ndarray, coverage: np.ndarray) -> PowerLawFit:
    """Fit `coverage = exp(a * k**b)` (needs 2+ points with 0 < coverage)."""
    ks = np.asarray(ks, dtype=float)
    cov = np.clip(np.asarray(coverage, dtype=float), 1e-9, 1.0)
    if len(ks) < 2:
        raise ValueError("a power-law fit needs coverage at two or more k")
    a0 = float(np.log(cov[0])) if cov[0] < 1 else -1e-3
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        (a, b), _ = curve_fit(
            _power,
            ks,
            cov,
            p0=(min(a0, -1e-6), -0.3),
            bounds=((-50.0, -5.0), (0.0, 0.0)),
            maxfev=5000,
        )
    pred = _power(ks, a, b)
    ss_res = float(np.sum((cov - pred) ** 2))
    ss_tot = float(np.sum((cov - cov.mean()) ** 2))
    r2 = 1.0 - ss_res / ss_tot if ss_tot > 0 else (1.0 if ss_res < 1e-12 else 0.0)
    return PowerLawFit(
        a=float(a),
        b=float(b),
        r2=r2,
        rmse=math.sqrt(ss_res / len(ks)),
        ks=tuple(int(k) for k in ks),
    )


def log_log_fit(ks: np.ndarray, coverage: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`a`, `b` of `coverage = exp(a * k**b)` by least squares on `log(-log coverage)` =
    `log(-a) + b log k`, for every row of `coverage` at once (rows: curves)."""
    cov = np.clip(np.atleast_2d(np.asarray(coverage, dtype=float)), 1e-9, 1 - 1e-9)
    x = np.log(np.asarray(ks, dtype=float))
    y = np.log(-np.log(cov))
    xm = x.mean()
    ym = y.mean(axis=1, keepdims=True)
    b = ((x - xm) * (y - ym)).sum(axis=1) / max(float(((x - xm) ** 2).sum()), 1e-12)
    a = -np.exp(ym[:, 0] - b * xm)
    return a, b


def extrapolate(
    ks: np.ndarray,
    per_problem: np.ndarray,
    at: np.ndarray,
    *,
    n_boot: int = 200,
    level: float = 0.9,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fitted coverage at `at` with a band from refits on problems resampled with
    replacement (the refits in log-log space, all at once).

    `per_problem` is problems x len(ks) pass@k values. Returns (fit, lower, upper)."""
    per_problem = np.asarray(per_problem, dtype=float)
    fit = fit_power_law(ks, np.nanmean(per_problem, axis=0))
    rng = np.random.default_rng(seed)
    p = per_problem.shape[0]
    weights = rng.multinomial(p, np.full(p, 1.0 / p), size=n_boot).astype(float)
    present = ~np.isnan(per_problem)
    means = (weights @ np.where(present, per_problem, 0.0)) / (weights @ present)
    a, b = log_log_fit(ks, means)
    # shift the band onto the least-squares fit: the spread comes from the resamples
    a0, b0 = log_log_fit(ks, np.nanmean(per_problem, axis=0))
    at = np.asarray(at, dtype=float)
    preds = np.exp(a[:, None] * np.power(at[None, :], b[:, None]))
    centre = np.exp(a0[0] * np.power(at, b0[0]))
    shift = fit.predict(at) - centre
    alpha = (1.0 - level) / 2
    lo = np.clip(np.quantile(preds, alpha, axis=0) + shift, 0.0, 1.0)
    hi = np.clip(np.quantile(preds, 1 - alpha, axis=0) + shift, 0.0, 1.0)
    curve = fit.predict(at)
    return curve, np.minimum(lo, curve), np.maximum(hi, curve)


@dataclass(frozen=True)
class SaturationFit:
    f_max: float
    p: float
    epsilon: float
    n_star: int | None
    """Saturation budget in samples (None when p is 0 or 1)."""
    rmse: float

    def predict(self, n: np.ndarray | float) -> np.ndarray:
        return self.f_max * (1.0 - np.power(1.0 - self.p, np.asarray(n, dtype=float)))


def saturation_point(f_max: float, p: float, epsilon: float) -> int | None:
    """Smallest N where the gain of the (N+1)-th sample, `F_max p (1-p)^N`, is < epsilon."""
    if not 0.0 < p < 1.0 or f_max <= 0:
        return None
    gain0 = f_max * p
    if gain0 < epsilon:
        return 1
    return max(1, math.ceil(math.log(epsilon / gain0) / math.log(1.0 - p)))


def fit_saturation(ks: np.ndarray, coverage: np.ndarray, *, epsilon: float = 0.01) -> SaturationFit:
    """Fit TTSPM's `F_max * (1 - (1 - p)**N)` and its saturation budget."""
    ks = np.asarray(ks, dtype=float)
    cov = np.asarray(coverage, dtype=float)

    def model(n: np.ndarray, f_max: float, p: float) -> np.ndarray:
        return f_max * (1.0 - np.power(1.0 - p, n))

    p0 = (float(min(max(cov.max(), 1e-3), 1.0)), float(min(max(cov[0], 1e-3), 0.999)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OptimizeWarning)
        (f_max, p), _ = curve_fit(
            model, ks, cov, p0=p0, bounds=((1e-6, 1e-6), (1.0, 1.0 - 1e-9)), maxfev=5000
        )
    rmse = float(np.sqrt(np.mean((cov - model(ks, f_max, p)) ** 2)))
    return SaturationFit(
        f_max=float(f_max),
        p=float(p),
        epsilon=epsilon,
        n_star=saturation_point(float(f_max), float(p), epsilon),
        rmse=rmse,
    )
