"""`self_certainty`: the policy's confidence in its own tokens, no extra model.

A step's score is the geometric-mean probability of its tokens, exp(mean logprob), in
[0, 1]. `mode=window` uses the lowest mean over a sliding window of tokens instead
(a low-confidence stretch inside a step pulls it down). Generations are requested with
logprobs; a step without them scores 0.5 (no information).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from ttc.config import RewardConfig, bounded
from ttc.interfaces import RewardModel
from ttc.types import ScoreRequest, ScoreResult


@dataclass
class SelfCertaintyConfig(RewardConfig):
    name: str = "self_certainty"
    aggregate: str = bounded("mean", choices=["last", "min", "prod", "mean"])
    mode: str = bounded("mean", choices=["mean", "window"], help="mean or lowest window")
    window: int = bounded(16, ge=1, help="tokens per window (mode=window)")


def step_confidence(logprobs: Sequence[float], *, mode: str = "mean", window: int = 16) -> float:
    if not logprobs:
        return 0.5
    if mode == "window" and len(logprobs) > window:
        sums = [sum(logprobs[i : i + window]) / window for i in range(len(logprobs) - window + 1)]
        return math.exp(min(sums))
    return math.exp(sum(logprobs) / len(logprobs))


class SelfCertainty(RewardModel):
    name = "self_certainty"
    needs_logprobs = True

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for r in requests:
            steps = r.step_logprobs or tuple(() for _ in r.steps)
            scores = tuple(
                step_confidence(lp, mode=self.config.mode, window=self.config.window)
                for lp in steps
            )
            out.append(ScoreResult(step_scores=scores, tokens=0))
        return out
