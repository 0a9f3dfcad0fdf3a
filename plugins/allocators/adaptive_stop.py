"""`adaptive_stop`: stop spending on a problem once its sampled answers agree.

Every problem gets the top-level budget plus an `AgreementStop` rule: the context tells
the problem's ledger the (normalised) final answer each new sample states, and once at
least `min_answers` answers were seen and the most common one holds at least `threshold`
of them, the ledger refuses the next generate call. Strategies end on a refusal with the
best answer they have (`ended_by="budget"`; the refusal is recorded as a refused call
whose error says "stopped early (agreement)"), so easy problems stop after a few
samples and hard ones go on to the budget. Strategies may also ask before a round:
`ctx.ledger.should_stop()`.

It helps strategies that sample in rounds (adaptive_consistency, beam search, particle
filtering, ...); one that draws everything in a single call has nothing left to stop.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttc.budget import AgreementStop, Budget
from ttc.config import AllocatorConfig, bounded
from ttc.interfaces import Allocator
from ttc.types import Problem


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
