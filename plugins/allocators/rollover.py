"""`rollover`: per-step budgets; what a step leaves unspent rolls over to later steps.

Each problem's limit in `unit` (tokens or samples, from the top-level `budget`) is split
evenly over `steps` generate calls (a step of a step-level search, a round of sampling):
call `k` may bring the problem's spending up to `limit * (k + 1) / steps`, so a step that
spends less than its share leaves more for the next. `max_tokens` is lowered to fit the
step's allowance; a call that cannot get one token per sequence is refused. The other
limits of the budget apply as usual.
"""

from __future__ import annotations

from dataclasses import dataclass

from ttc.budget import Budget, RolloverSteps
from ttc.config import AllocatorConfig, bounded
from ttc.errors import ConfigError
from ttc.interfaces import Allocator
from ttc.types import Problem


@dataclass
class RolloverAllocatorConfig(AllocatorConfig):
    name: str = "rollover"
    unit: str = bounded("tokens", choices=["tokens", "samples"], help="the unit split by step")
    steps: int = bounded(4, ge=1, help="generate calls the budget is spread over")


class RolloverAllocator(Allocator):
    name = "rollover"
    config: RolloverAllocatorConfig

    def budget_for(self, problem: Problem) -> Budget:
        total = getattr(self.budget, self.config.unit)
        if total is None:
            raise ConfigError(
                f"allocator=rollover splits budget.{self.config.unit}, which is not set",
                key=f"budget.{self.config.unit}",
                hint=f"set it, e.g. budget.{self.config.unit}=2000",
            )
        policy = RolloverSteps(unit=self.config.unit, total=total, steps=self.config.steps)
        return self.budget.replace(policy=policy)
