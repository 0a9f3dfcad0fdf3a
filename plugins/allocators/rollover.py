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
from typing import Any

from ttc.budget import Budget, Ledger, SpendPolicy, Unit
from ttc.config import AllocatorConfig, bounded
from ttc.errors import ConfigError
from ttc.interfaces import Allocator
from ttc.types import Problem


class RolloverSteps(SpendPolicy):
    """Per-step budgets: the problem's `total` (in `unit`, tokens or samples) is split
    evenly over `steps` generate calls; what a step leaves unspent rolls over to the
    next ones. Call `k` (0-based) may bring the unit's spending up to
    `total * (k + 1) / steps`; from call `steps - 1` on, up to `total`."""

    name = "rollover"

    def __init__(self, *, unit: Unit | str, total: float, steps: int) -> None:
        self.unit = Unit.parse(unit)
        if self.unit not in (Unit.TOKENS, Unit.SAMPLES):
            raise ValueError(f"rollover steps budget tokens or samples, not {unit!r}")
        self.total = total
        self.steps = max(steps, 1)
        self.allowances: list[float] = []
        """The allowance each call got (for inspection and the store)."""

    def allowance(self, step: int, spent: float) -> float:
        """What call `step` may spend, given `spent` so far."""
        cap = self.total * min(step + 1, self.steps) / self.steps
        return cap - spent

    def limit_generate(self, ledger: Ledger, *, sequences: int, max_tokens: int) -> int:
        # calls in flight count as spent at their worst case (their reservation)
        spent = float(getattr(ledger.spent, self.unit)) + ledger.held[self.unit]
        left = self.allowance(ledger.spent.generate_calls, spent)
        self.allowances.append(left)
        if self.unit == Unit.SAMPLES:
            if sequences > left:
                raise ledger.refuse(self.unit, sequences, limit=left + spent, rule="step")
            return max_tokens
        allowed = min(max_tokens, int(left // sequences))
        if allowed < 1:
            raise ledger.refuse(self.unit, sequences, limit=left + spent, rule="step")
        return allowed

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit.value,
            "total": self.total,
            "steps": self.steps,
            "allowances": self.allowances,
        }


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
