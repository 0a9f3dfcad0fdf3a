"""Resampling schemes of sequential Monte Carlo (particle filtering).

Each takes normalised weights and returns `n` ancestor indices: particle `j` of the new
population is a copy of particle `ancestors[j]`. All three are unbiased (particle `i` is
copied `n * w_i` times in expectation); they differ in variance:

- `multinomial`: n independent draws; the simplest and the noisiest.
- `systematic`: one uniform offset and n evenly spaced points on the weights' CDF; every
  particle gets floor(n w_i) or ceil(n w_i) copies (Kitagawa 1996).
- `residual`: floor(n w_i) copies deterministically, the rest multinomially from the
  leftover weight (Liu and Chen 1998).

Douc, Cappé and Moulines, "Comparison of Resampling Schemes for Particle Filtering"
(2005) compare them.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Callable, Sequence

Resampler = Callable[[Sequence[float], int, random.Random], list[int]]


def _cdf(weights: Sequence[float]) -> list[float]:
    cdf = list(itertools.accumulate(weights))
    cdf[-1] = max(cdf[-1], 1.0)  # rounding must not leave the top of the CDF uncovered
    return cdf


def multinomial(weights: Sequence[float], n: int, rng: random.Random) -> list[int]:
    cdf = _cdf(weights)
    return [bisect.bisect_left(cdf, rng.random()) for _ in range(n)]


def systematic(weights: Sequence[float], n: int, rng: random.Random) -> list[int]:
    cdf = _cdf(weights)
    u = rng.random() / n
    return [min(bisect.bisect_left(cdf, u + j / n), len(cdf) - 1) for j in range(n)]


def residual(weights: Sequence[float], n: int, rng: random.Random) -> list[int]:
    copies = [math.floor(n * w) for w in weights]
    out = [i for i, k in enumerate(copies) for _ in range(k)]
    rest = n - len(out)
    if rest > 0:
        leftover = [n * w - k for w, k in zip(weights, copies, strict=True)]
        total = sum(leftover)
        if total <= 0:  # weights summed to slightly under 1: spread the rest evenly
            leftover, total = [1.0] * len(weights), float(len(weights))
        out += multinomial([v / total for v in leftover], rest, rng)
    return out


RESAMPLERS: dict[str, Resampler] = {
    "multinomial": multinomial,
    "systematic": systematic,
    "residual": residual,
}
