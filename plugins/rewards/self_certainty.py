"""`self_certainty`: the policy's confidence in its own tokens, no extra model.

Generations are requested with logprobs; a step's score comes from its tokens' logprobs:

- `mode=mean` (default): the geometric-mean token probability, `exp(mean logprob)`.
- `mode=entropy`: `exp(-H)` with `H` the step's mean token entropy (nats), each token's
  entropy computed from the `top_logprobs` most likely tokens the backend returned at
  its position (`ScoreRequest.step_entropies`; the mass outside them counts as one more
  outcome, so `H` is exact when they cover the distribution and a lower bound
  otherwise). Generations are then requested with that many top logprobs. A step without
  entropies scores 0.5, like one without logprobs.
- `mode=window`: the lowest mean logprob over a sliding window of `window` tokens
  (DeepConf's lowest group confidence), `exp` of it: one low-confidence stretch pulls the
  whole step down. A step shorter than the window uses its mean.

All three are in [0, 1], higher is more confident. A step without logprobs scores 0.5
(no information). No reward-model tokens are spent.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ttc.config import RewardConfig, bounded
from ttc.interfaces import RewardModel
from ttc.types import ModelPass, ScoreRequest, ScoreResult


@dataclass
class SelfCertaintyConfig(RewardConfig):
    name: str = "self_certainty"
    aggregate: str = bounded("mean", choices=["last", "min", "prod", "mean"])
    mode: str = bounded(
        "mean",
        choices=["mean", "entropy", "window"],
        help="mean logprob, mean entropy, or lowest sliding-window confidence",
    )
    window: int = bounded(16, ge=1, help="tokens per window (mode=window)")
    top_logprobs: int = bounded(20, ge=1, help="alternatives per token (mode=entropy)")


def lowest_window_mean(logprobs: Sequence[float], window: int) -> float:
    """The lowest mean over every run of `window` consecutive values (one pass)."""
    if len(logprobs) <= window:
        return sum(logprobs) / len(logprobs)
    total = sum(logprobs[:window])
    lowest = total
    for i in range(window, len(logprobs)):
        total += logprobs[i] - logprobs[i - window]
        lowest = min(lowest, total)
    return lowest / window


def step_confidence(
    logprobs: Sequence[float],
    *,
    mode: str = "mean",
    window: int = 16,
    entropies: Sequence[float] | None = None,
) -> float:
    """One step's confidence in [0, 1] (0.5 when there is nothing to read)."""
    if mode == "entropy":
        return math.exp(-sum(entropies) / len(entropies)) if entropies else 0.5
    if not logprobs:
        return 0.5
    if mode == "window":
        return math.exp(lowest_window_mean(logprobs, window))
    return math.exp(sum(logprobs) / len(logprobs))


class SelfCertainty(RewardModel):
    name = "self_certainty"
    needs_logprobs = True
    config: SelfCertaintyConfig

    def __init__(self, config: SelfCertaintyConfig) -> None:
        super().__init__(config)
        self.top_logprobs = config.top_logprobs if config.mode == "entropy" else 0

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        return []  # runs no model

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for r in requests:
            steps = r.step_logprobs or tuple(() for _ in r.steps)
            entropies: Sequence[Sequence[float] | None] = r.step_entropies or [None] * len(steps)
            scores = tuple(
                step_confidence(lp, mode=self.config.mode, window=self.config.window, entropies=h)
                for lp, h in zip(steps, entropies, strict=False)
            )
            out.append(ScoreResult(step_scores=scores, tokens=0))
        return out
