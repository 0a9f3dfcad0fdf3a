"""Samplers of a linear-interpolant flow: the ODE, an SDE with the same marginals, and
both after converting the interpolant to a variance-preserving one.

A schedule writes the state as `z_s = alpha(s) * x1 + sigma(s) * x0` on a grid
`s_0 = 0 < ... < s_{T-1} < 1`. The network was trained on the linear interpolant
(`alpha = t`, `sigma = 1 - t`); any other schedule maps onto it by matching the
signal-to-noise ratio: `t(s) = alpha / (alpha + sigma)` and `x_t = z_s / (alpha + sigma)`.
One velocity evaluation at a state gives both predictions, the clean sample
`x1_hat = x_t + (1 - t) v` and the noise `x0_hat = x_t - t v`, and from them the
schedule's velocity `u = alpha' x1_hat + sigma' x0_hat` and score `-x0_hat / sigma`.

The SDE `dz = [u - (g^2 / 2) * x0_hat / sigma] ds + g dW` has the ODE's marginals for any
diffusion `g` (Fokker-Planck: the score term cancels the noise's spreading). We take
`g(s)^2 = 2 * eps * sigma^2`: noise in proportion to the noise level left (so each
Euler-Maruyama step perturbs by the same relative amount, `2 * eps * ds`, and the
correction `-eps * sigma * x0_hat` stays bounded where `sigma -> 0`), non-zero at `s = 0`
(so particles that start together still spread), zero at `s = 1`.

A trajectory of `T` NFEs evaluates the network at `s_0 .. s_{T-1}` and returns `x1_hat`
of the last state (for the linear ODE this is exactly Euler's method with `T` steps).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

ScheduleName = Literal["linear", "vp"]


@dataclass(frozen=True)
class Schedule:
    """`alpha(s)`, `sigma(s)` and their derivatives on [0, 1]."""

    name: ScheduleName

    def coefficients(self, s: float) -> tuple[float, float, float, float]:
        if self.name == "linear":
            return s, 1.0 - s, 1.0, -1.0
        half = math.pi / 2
        sin, cos = math.sin(half * s), math.cos(half * s)
        return sin, cos, half * cos, -half * sin

    def t_of(self, s: float) -> tuple[float, float]:
        """The linear interpolant's time for `s` and the scale `c` with `z_s = c * x_t`."""
        a, sg, _, _ = self.coefficients(s)
        return a / (a + sg), a + sg


def grid(nfes: int) -> list[float]:
    """The `nfes` evaluation points of one trajectory: `k / nfes` for k < nfes."""
    return [k / nfes for k in range(nfes)]


@dataclass(frozen=True)
class Predictions:
    """What one velocity evaluation at states `z` (schedule time `s`) tells."""

    x1_hat: np.ndarray
    x0_hat: np.ndarray
    u: np.ndarray
    """The schedule's ODE velocity `dz/ds`."""


def predict(schedule: Schedule, z: np.ndarray, s: float, v: np.ndarray) -> Predictions:
    """Predictions from the linear-time velocity `v` evaluated at `to_linear(z, s)`."""
    t, c = schedule.t_of(s)
    x = z / c
    x1_hat = x + (1.0 - t) * v
    x0_hat = x - t * v
    _, _, da, dsg = schedule.coefficients(s)
    return Predictions(x1_hat=x1_hat, x0_hat=x0_hat, u=da * x1_hat + dsg * x0_hat)


def to_linear(schedule: Schedule, z: np.ndarray, s: float) -> tuple[np.ndarray, float]:
    """The linear interpolant's state and time for schedule state `z` at `s`."""
    t, c = schedule.t_of(s)
    return z / c, t


def step(
    schedule: Schedule,
    z: np.ndarray,
    pred: Predictions,
    *,
    s: float,
    ds: float,
    eps: float,
    noise: np.ndarray | None,
) -> np.ndarray:
    """One Euler(-Maruyama) step from `s` to `s + ds`: the ODE when `eps == 0` (or no
    `noise`), else the marginal-preserving SDE with `noise ~ N(0, I)` of `z`'s shape."""
    if eps == 0 or noise is None:
        return z + ds * pred.u
    _, sg, _, _ = schedule.coefficients(s)
    g2 = 2.0 * eps * sg * sg
    drift = pred.u - (g2 / 2.0) * pred.x0_hat / max(sg, 1e-8)
    return z + ds * drift + math.sqrt(g2 * ds) * noise
