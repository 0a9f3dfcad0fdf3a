"""`adaptive_stop`: stop spending on a problem once its sampled answers agree.

Every problem gets the top-level budget plus an `AgreementStop` rule: the context tells
the problem's ledger the (normalised) final answer each new sample states, and once at
least `min_answers` answers were seen and the most common one holds at least `threshold`
of them, the ledger refuses the next generate call. Strategies end on a refusal with the
best answer they have (the refusal is recorded as a refused call
whose error says "stopped early (agreement)"; the problem's trace records
`ended_by="early_stop"`), so easy problems stop after a few samples and hard ones go
on to the budget. Strategies may also ask before a round: `ctx.should_stop()`.

It helps strategies that sample in rounds (adaptive_consistency, beam search, particle
filtering, ...); one that draws everything in a single call has nothing left to stop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ttc.budget import Budget, Ledger, SpendPolicy
from ttc.config import AllocatorConfig, bounded
from ttc.errors import BudgetExceeded, TtcError
from ttc.interfaces import Allocator
from ttc.types import Problem


class EarlyStop(BudgetExceeded):
    """A policy ended the search before the limits did (e.g. the answers agree)."""

    early = True
    """`run_strategy` records the end as `ended_by="early_stop"`."""

    def __init__(self, reason: str, *, value: float, threshold: float) -> None:
        TtcError.__init__(
            self,
            f"stopped early ({reason}): {value:.3g} >= {threshold:.3g}",
            hint="lower the allocator's threshold to stop sooner, raise it to sample more",
        )
        self.unit = reason
        self.limit = threshold
        self.spent = value
        self.requested = 0.0


class AgreementStop(SpendPolicy):
    """Refuse further generation once at least `min_answers` answers were stated and the
    most common one holds a share of at least `threshold` of them."""

    name = "adaptive_stop"
    wants_answers = True

    def __init__(self, *, min_answers: int, threshold: float) -> None:
        self.min_answers = min_answers
        self.threshold = threshold
        self.votes: Counter[str] = Counter()
        self.stopped = False

    def agreement(self) -> float:
        """The leading answer's share of the answers seen (0 when none)."""
        total = sum(self.votes.values())
        return self.votes.most_common(1)[0][1] / total if total else 0.0

    def should_stop(self) -> bool:
        return sum(self.votes.values()) >= self.min_answers and self.agreement() >= self.threshold

    def observe_answers(self, answers: Sequence[str]) -> None:
        self.votes.update(answers)

    def limit_generate(self, ledger: Ledger, *, sequences: int, max_tokens: int) -> int:
        if self.should_stop():
            self.stopped = True
            ledger.spent.refused_calls += 1
            raise EarlyStop("agreement", value=self.agreement(), threshold=self.threshold)
        return max_tokens

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "answers": sum(self.votes.values()),
            "agreement": self.agreement(),
            "stopped": self.stopped,
        }


@dataclass
class AdaptiveStopAllocatorConfig(AllocatorConfig):
    name: str = "adaptive_stop"
    min_answers: int = bounded(4, ge=1, help="answers seen before agreement is checked")
    threshold: float = bounded(
        0.75, gt=0.0, le=1.0, help="stop when the top answer's share reaches this"
    )


class AdaptiveStopAllocator(Allocator):
    name = "adaptive_stop"
    config: AdaptiveStopAllocatorConfig

    def budget_for(self, problem: Problem) -> Budget:
        rule = AgreementStop(min_answers=self.config.min_answers, threshold=self.config.threshold)
        return self.budget.replace(policy=rule)
