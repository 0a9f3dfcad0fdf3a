"""`rule`: the `arith` task's exact step checker as a process reward.

Each step scores 1.0 when every result it states (a number after `=`, a final
`\\boxed{}`) is one of the problem's true intermediate values (the final answer: the
true result), else 0.0 (`ttc.plugins.tasks.arith.check_steps`). No model, no tokens; it
needs problems that carry `metadata["steps"]` (task=arith).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ttc.config import RewardConfig, bounded
from ttc.interfaces import RewardModel
from ttc.plugins.tasks.arith import check_steps
from ttc.types import ModelPass, ScoreRequest, ScoreResult


@dataclass
class RuleRewardConfig(RewardConfig):
    name: str = "rule"
    aggregate: str = bounded("min", choices=["last", "min", "prod", "mean"])


class RuleReward(RewardModel):
    name = "rule"

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        return []  # runs no model

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        return [
            ScoreResult(step_scores=tuple(check_steps(r.problem, r.steps)), tokens=0)
            for r in requests
        ]
