"""`solve_verify`: split a problem's budget between solutions and verifications.

"When To Solve, When To Verify" (Singhi et al., 2025) compares, at equal compute,
self-consistency over more solutions with fewer solutions each checked by a generative
verifier several times: S solutions x V verifications cost about
`S * (solution_tokens + V * verify_tokens)` generated tokens. At small budgets the
solutions are worth more; verifications pay off once there are enough solutions, and
both should grow with the budget, the solutions faster.

The rule here: `C = budget.tokens / solution_tokens` is the budget in solutions.
`V = floor(C ** verification_exponent)` (or `verifications`, when set); below
`min_solutions` solutions that V leaves, it drops by one, down to V = 0. With V = 0 the
problem is solved by `self_consistency` over `floor(C)` solutions; otherwise by
`best_of_n` over `S = floor(budget.tokens / (solution_tokens + V * verify_tokens))`
solutions, each scored by the run's reward with V verifications (`reward=judge
reward.mode=generative`: the verdicts are aggregated). Every problem gets the same split
(its budget is the top-level one); S and V are stored with the problem's budget
(`budget.policy`), so `ttc analyze` can set the runs against self-consistency at equal
tokens or FLOPs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ttc.budget import Budget, SpendPolicy
from ttc.config import AllocatorConfig, bounded
from ttc.errors import ConfigError
from ttc.interfaces import Allocator, Plan, SolveContext, Strategy
from ttc.plugins.allocators.difficulty import build_strategy
from ttc.types import Problem


@dataclass
class SolveVerifyAllocatorConfig(AllocatorConfig):
    name: str = "solve_verify"
    solution_tokens: int = bounded(256, ge=1, help="tokens of one solution (its max_tokens)")
    verify_tokens: int = bounded(256, ge=1, help="tokens of one verification")
    verifications: int | None = bounded(None, ge=0, help="V fixed (None: from the exponent)")
    verification_exponent: float = bounded(
        0.4, ge=0.0, le=1.0, help="V = floor(C ** exponent), C the budget in solutions"
    )
    min_solutions: int = bounded(2, ge=1, help="fewer solutions than this: fewer verifications")
    strategy: dict[str, Any] = field(default_factory=lambda: {"temperature": 0.7})
    """Further parameters of the strategy (`best_of_n` or `self_consistency`)."""


def split(
    budget_tokens: float,
    *,
    solution_tokens: int,
    verify_tokens: int,
    verifications: int | None = None,
    exponent: float = 0.4,
    min_solutions: int = 2,
) -> tuple[int, int]:
    """(S, V) for a token budget: see the module docstring."""
    c = budget_tokens / solution_tokens
    if c < 1:
        return 1, 0
    v = verifications if verifications is not None else math.floor(c**exponent + 1e-9)
    while v > 0:
        s = int(budget_tokens // (solution_tokens + v * verify_tokens))
        if s >= min_solutions:
            return s, v
        v -= 1
    return math.floor(c), 0


class SolveVerifyChoice(SpendPolicy):
    """What the allocator chose, stored with the problem's budget."""

    def __init__(self, solutions: int, verifications: int, strategy: str) -> None:
        self.solutions = solutions
        self.verifications = verifications
        self.strategy = strategy

    def describe(self) -> dict[str, Any]:
        return {
            "kind": "solve_verify",
            "solutions": self.solutions,
            "verifications": self.verifications,
            "strategy": self.strategy,
        }


class SolveVerifyAllocator(Allocator):
    name = "solve_verify"
    config: SolveVerifyAllocatorConfig

    def __init__(self, config: SolveVerifyAllocatorConfig, budget: Budget) -> None:
        super().__init__(config, budget)
        if budget.tokens is None:
            raise ConfigError(
                "allocator=solve_verify splits a token budget, but budget.tokens is not set",
                key="budget.tokens",
                hint="set budget.tokens=<tokens per problem>, e.g. budget.tokens=4096",
            )
        c = config
        self.solutions, self.verifications = split(
            budget.tokens,
            solution_tokens=c.solution_tokens,
            verify_tokens=c.verify_tokens,
            verifications=c.verifications,
            exponent=c.verification_exponent,
            min_solutions=c.min_solutions,
        )
        name = "best_of_n" if self.verifications else "self_consistency"
        spec: dict[str, Any] = {
            **dict(c.strategy),
            "name": name,
            "n": self.solutions,
            "max_tokens": c.solution_tokens,
        }
        if self.verifications:
            spec["verifications"] = self.verifications
        self.strategy: Strategy = build_strategy(spec, "allocator.strategy")
        self.choice = SolveVerifyChoice(self.solutions, self.verifications, name)

    def budget_for(self, problem: Problem) -> Budget:
        return self.budget.replace(policy=self.choice)

    async def prepare(self, problem: Problem, ctx: SolveContext) -> Plan | None:
        if self.verifications and not ctx.has_reward:
            raise ConfigError(
                f"allocator=solve_verify chose {self.verifications} verifications per "
                "solution, but no reward model is set to verify with",
                key="reward",
                hint="reward=judge reward.mode=generative (or allocator.verifications=0)",
            )
        return Plan(strategy=self.strategy)
