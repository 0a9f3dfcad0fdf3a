"""The run's allocator, applied to served requests.

`ttc run` builds its allocator once over the top-level budget and asks it for every
problem's budget (and, for `difficulty`, a probe and a plan). A serving run does the same
per request, over the request's own budget (the run's `budget.*` with the request's
units laid over it, under `serve.max_budget`): the allocator's budgets are held to it,
so a request never spends more than it asked for or the server allows. Its choice of
strategy (a policy bin's) applies when the request leaves the strategy to the server; a
strategy the request names (`ttc.strategy`, `model="ttc/<name>"`) is kept.

Allocators that split one budget across a run's problems (they implement `plan`, which
sees the run's whole problem list, or `release`, which pools what problems leave; e.g.
`global`) have no meaning for an open-ended stream of requests: the server refuses to
start with them, in one line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ttc.budget import Budget
from ttc.errors import ConfigError
from ttc.interfaces import Allocator, Plan, SolveContext, Strategy
from ttc.types import Problem

CACHE_SIZE = 64


def check_servable(allocator: Allocator) -> None:
    """Raise `ConfigError` (one line) for an allocator a serving run cannot honour."""
    cls = type(allocator)
    pooled = [
        hook for hook in ("plan", "release") if getattr(cls, hook) is not getattr(Allocator, hook)
    ]
    if pooled:
        raise ConfigError(
            f"allocator={allocator.name or cls.__name__} shares one budget across a run's "
            f"problems ({' and '.join(pooled)}), which a server's open-ended stream of "
            "requests does not have",
            key="allocator",
            value=allocator.name,
            hint="serve with a per-problem allocator (fixed, adaptive_stop, rollover, "
            "difficulty); a request's budget is set by ttc.budget under serve.max_budget",
        )


class RequestAllocators:
    """The run's allocator class and config, built over each request's budget (built
    ones are kept per distinct budget: building may read a policy file)."""

    def __init__(self, allocator: Allocator) -> None:
        check_servable(allocator)
        self.cls = type(allocator)
        self.config = allocator.config
        self._built: dict[str, Allocator] = {}

    def for_request(
        self, budget: Budget, *, strategy_named: bool, wrap: Callable[[Strategy], Strategy]
    ) -> RequestAllocator:
        key = json.dumps(budget.limits(), sort_keys=True)
        inner = self._built.get(key)
        if inner is None:
            inner = self.cls(self.config, budget)
            if len(self._built) >= CACHE_SIZE:
                self._built.pop(next(iter(self._built)))
            self._built[key] = inner
        return RequestAllocator(inner, budget, strategy_named=strategy_named, wrap=wrap)


class RequestAllocator(Allocator):
    """One request's view of the run's allocator: its budgets held to the request's."""

    name = "serve"

    def __init__(
        self,
        inner: Allocator,
        limit: Budget,
        *,
        strategy_named: bool,
        wrap: Callable[[Strategy], Strategy],
    ) -> None:
        super().__init__(inner.config, limit)
        self.inner = inner
        self.strategy_named = strategy_named
        self.wrap = wrap
        self.strategy: Strategy | None = None
        """The strategy the allocator's plan chose for the request (wrapped), if any."""

    def budget_for(self, problem: Problem) -> Budget:
        return held_to(self.inner.budget_for(problem), self.budget)

    async def prepare(self, problem: Problem, ctx: SolveContext) -> Plan | None:
        plan = await self.inner.prepare(problem, ctx)
        if plan is None:
            return None
        budget = held_to(plan.budget, self.budget) if plan.budget is not None else None
        strategy = None
        if plan.strategy is not None and not self.strategy_named:
            strategy = self.strategy = self.wrap(plan.strategy)
        return Plan(budget=budget, strategy=strategy)

    def release(self, problem: Problem, budget: Budget, spent: dict[str, float]) -> None:
        # What an allocator keeps per problem (difficulty's `choices`) would grow with
        # every request of a long-lived server; the choice is stored with the request's
        # budget (`budget.policy`).
        kept: Any = getattr(self.inner, "choices", None)
        if isinstance(kept, dict):
            kept.pop(problem.id, None)


def held_to(budget: Budget, limit: Budget) -> Budget:
    """`budget` with every unit at most `limit`'s (a unit `limit` leaves open keeps
    `budget`'s); the policy stays."""
    changes: dict[str, Any] = {}
    for unit, cap in limit.limits().items():
        if cap is None:
            continue
        value = getattr(budget, unit)
        if value is None or value > cap:
            changes[unit] = cap
    return budget.replace(**changes) if changes else budget
