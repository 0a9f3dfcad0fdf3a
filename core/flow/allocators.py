"""NFE allocators of the flow modality: `fixed` and `rollover` (budget forcing).

`rollover` splits a problem's NFEs evenly over its timesteps with the arithmetic of the
language-model `rollover` allocator (`ttc.plugins.allocators.rollover.RolloverSteps`):
timestep `k` may bring the spending up to `nfes * (k + 1) / T`, so NFEs a timestep leaves
unused (a strategy that found a better particle early and moved on) roll over to later
timesteps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ttc.errors import ConfigError
from ttc.flow.budget import FlowBudget, StepPolicy
from ttc.flow.interfaces import FlowAllocator, FlowAllocatorConfig
from ttc.plugins.allocators.rollover import RolloverSteps
from ttc.types import Problem


class NFERollover(StepPolicy):
    """Per-timestep NFE allowances; what a timestep leaves unused rolls over."""

    name = "rollover"

    def __init__(self, *, total: int, steps: int) -> None:
        self._steps = RolloverSteps(unit="samples", total=total, steps=steps)
        self.total = total
        self.steps = self._steps.steps
        self.allowances: dict[int, int] = {}
        """The allowance each timestep had when it first asked (for the store)."""

    def allowance(self, step: int, spent: int) -> int:
        left = max(math.floor(self._steps.allowance(step, spent) + 1e-9), 0)
        self.allowances.setdefault(step, left)
        return left

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "total": self.total,
            "steps": self.steps,
            "allowances": {str(k): v for k, v in sorted(self.allowances.items())},
        }


@dataclass
class FixedFlowAllocatorConfig(FlowAllocatorConfig):
    name: str = "fixed"


class FixedFlowAllocator(FlowAllocator):
    """Every problem gets the run's budget, with no per-timestep limit."""

    name = "fixed"

    def budget_for(self, problem: Problem, *, timesteps: int) -> FlowBudget:
        return self.budget


@dataclass
class RolloverFlowAllocatorConfig(FlowAllocatorConfig):
    name: str = "rollover"
    steps: int | None = field(
        default=None, metadata={"ge": 1, "help": "timesteps to split over (None: the strategy's)"}
    )


class RolloverFlowAllocator(FlowAllocator):
    """The problem's NFEs split evenly over its timesteps, unused NFEs rolling over."""

    name = "rollover"
    config: RolloverFlowAllocatorConfig

    def budget_for(self, problem: Problem, *, timesteps: int) -> FlowBudget:
        if self.budget.nfes is None:
            raise ConfigError(
                "the rollover flow allocator splits budget.nfes, which is not set",
                key="budget.nfes",
                hint="set it, e.g. budget.nfes=100",
            )
        steps = self.config.steps or timesteps
        policy = NFERollover(total=self.budget.nfes, steps=steps)
        return FlowBudget(
            nfes=self.budget.nfes,
            flops=self.budget.flops,
            seconds=self.budget.seconds,
            policy=policy,
        )
