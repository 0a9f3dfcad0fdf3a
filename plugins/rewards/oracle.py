"""`oracle`: the task's reference answer as the reward (an upper bound, not a method).

Step `k` of a branch scores 1.0 when the text up to and including it states a final
answer equivalent to the problem's reference (`ttc.plugins.verifier`), else 0.0; with
`aggregate=last` (the default) a branch scores 1.0 exactly when its final answer is
correct. It reads the reference, so a run with it measures what a perfect verifier would
reach (a problem without a reference cannot be scored: a `DataError`, not a 0): such
runs are recognisable in the store by `runs.reward = 'oracle'` and by
`reward.oracle: true` in the stored config.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ttc.config import RewardConfig, bounded
from ttc.errors import DataError
from ttc.interfaces import RewardModel
from ttc.plugins import verifier
from ttc.types import ModelPass, ScoreRequest, ScoreResult


@dataclass
class OracleRewardConfig(RewardConfig):
    name: str = "oracle"
    aggregate: str = bounded("last", choices=["last", "min", "prod", "mean"])
    oracle: bool = bounded(True, choices=[True], help="marks runs that read the references")
    timeout_s: float = bounded(5.0, gt=0, help="seconds one equivalence check may take")


class OracleReward(RewardModel):
    name = "oracle"
    is_oracle = True

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        return []  # runs no model

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for r in requests:
            if r.problem.reference is None:  # nothing to compare with: not a score of 0
                raise DataError(
                    f"problem '{r.problem.id}' has no reference answer for the oracle reward",
                    hint="use reward=oracle only with tasks whose problems carry references",
                )
            scores = []
            text = ""
            for step in r.steps:
                text += step
                answer = verifier.extract_answer(text, fallback_to_last_number=False)
                ok = answer is not None and verifier.is_equivalent(
                    answer, r.problem.reference, timeout_s=self.config.timeout_s
                )
                scores.append(1.0 if ok else 0.0)
            out.append(ScoreResult(step_scores=tuple(scores), tokens=0))
        return out
