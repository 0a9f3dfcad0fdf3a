"""`global`: one pool for the whole run; what a problem leaves unspent returns to it.

The pool holds, for every unit the top-level `budget` limits (except `seconds`: wall time
is not shared out), the per-problem limit times the number of problems; `pool.<unit>`
sets a pool size explicitly (also for units the per-problem budget leaves open).

A problem starting while `k` problems have not started yet (itself included) reserves
`left / k` of each pooled unit; when it finishes, the part of its reservation it did not
spend returns to the pool. Reservations never exceed what is left, and every ledger
enforces its reservation, so the run never spends more than the pool, however many
problems run at once; problems that start later benefit from what earlier ones saved.
(Reward-model tokens are checked before a scoring call, not per token, so a scoring call
may overrun them by its own size; that overrun is not returned.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ttc.budget import UNITS, Budget
from ttc.config import AllocatorConfig
from ttc.errors import ConfigError
from ttc.interfaces import Allocator
from ttc.types import Problem

INT_UNITS = ("samples", "tokens", "prefill_tokens", "reward_tokens", "reward_calls")


@dataclass
class GlobalAllocatorConfig(AllocatorConfig):
    name: str = "global"
    pool: dict[str, float] = field(default_factory=dict)
    """Explicit pool sizes by unit (e.g. `allocator.pool={tokens: 20000}`); units not
    named get the per-problem limit times the number of problems."""


class GlobalAllocator(Allocator):
    name = "global"
    config: GlobalAllocatorConfig

    def __init__(self, config: GlobalAllocatorConfig, budget: Budget) -> None:
        super().__init__(config, budget)
        for unit in config.pool:
            if unit not in UNITS or unit == "seconds":
                valid = ", ".join(u for u in UNITS if u != "seconds")
                raise ConfigError(
                    f"allocator.pool.{unit} is not a poolable unit; valid: {valid}",
                    key=f"allocator.pool.{unit}",
                )
        self.size: dict[str, float] = {}
        self.left: dict[str, float] = {}
        self.waiting = 0
        self._grants: dict[str, dict[str, float]] = {}

    def plan(self, problems: Sequence[Problem]) -> None:
        n = len(problems)
        self.waiting = n
        self.size = {
            unit: float(limit) * n
            for unit, limit in self.budget.limits().items()
            if limit is not None and unit != "seconds"
        }
        self.size.update({unit: float(v) for unit, v in self.config.pool.items()})
        self.left = dict(self.size)

    def budget_for(self, problem: Problem) -> Budget:
        if not self.size and not self.waiting:
            self.plan([problem])  # used without a runner: a pool of one problem
        share = max(self.waiting, 1)
        self.waiting = max(self.waiting - 1, 0)
        grant: dict[str, float] = {}
        for unit, left in self.left.items():
            amount = max(left, 0.0) / share
            grant[unit] = math.floor(amount) if unit in INT_UNITS else amount
            self.left[unit] = left - grant[unit]
        self._grants[problem.id] = grant
        limits: dict[str, Any] = {u: v for u, v in self.budget.limits().items() if u == "seconds"}
        limits.update(grant)
        return Budget(**limits)

    def release(self, problem: Problem, budget: Budget, spent: dict[str, float]) -> None:
        grant = self._grants.pop(problem.id, {})
        for unit, amount in grant.items():
            self.left[unit] += max(amount - float(spent.get(unit, 0.0)), 0.0)

    @property
    def spent(self) -> dict[str, float]:
        """What the run has used or holds reserved, per pooled unit."""
        return {unit: self.size[unit] - self.left[unit] for unit in self.size}
