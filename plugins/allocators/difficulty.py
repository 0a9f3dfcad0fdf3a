"""`difficulty`: probe each problem cheaply, then give it the budget of its difficulty bin.

Before the strategy starts, the allocator draws `probe_samples` samples of at most
`probe_max_tokens` tokens from the policy (through the problem's own context, so the
probe is counted in the problem's spending and calls) and measures difficulty:

- `agreement` (default): `1 - share of the most common answer` among the probe samples
  (a sample stating no answer counts as an answer of its own): 0 when all agree.
- `entropy`: the mean negative logprob of the probe's tokens (nats per token), an
  estimate of the policy's entropy on the problem.

The first row of `table` whose `up_to` is at least the difficulty picks the problem's
budget: `scale` times the top-level budget, with `tokens` / `samples` overriding when
set. The probe runs under the largest row's budget; the chosen budget then replaces it
(what the probe spent counts against it). Probe branches are kept in the search tree with
`extra["probe"] = True` and are not leaves (they do not vote in the run's metrics). The
chosen bin is stored with the problem's budget (`budget.policy`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ttc.budget import Budget, SpendPolicy
from ttc.config import AllocatorConfig, bounded
from ttc.context import SolveContext
from ttc.errors import BackendError, BudgetExceeded, ConfigError
from ttc.interfaces import Allocator
from ttc.types import Problem, Sampling


@dataclass
class DifficultyBin:
    name: str = "bin"
    up_to: float = math.inf
    """Problems with difficulty <= this (and above the previous rows) fall in this bin."""
    scale: float = 1.0
    """The bin's budget: the top-level budget times this."""
    tokens: int | None = None
    """Overrides the scaled token limit when set."""
    samples: int | None = None
    """Overrides the scaled sample limit when set."""


def _default_table() -> list[DifficultyBin]:
    return [
        DifficultyBin(name="easy", up_to=0.25, scale=0.25),
        DifficultyBin(name="medium", up_to=0.6, scale=1.0),
        DifficultyBin(name="hard", up_to=math.inf, scale=2.0),
    ]


@dataclass
class DifficultyAllocatorConfig(AllocatorConfig):
    name: str = "difficulty"
    measure: str = bounded("agreement", choices=["agreement", "entropy"])
    probe_samples: int = bounded(4, ge=1, help="samples of the probe")
    probe_max_tokens: int = bounded(256, ge=1, help="tokens per probe sample")
    probe_temperature: float = bounded(0.8, ge=0.0)
    table: list[DifficultyBin] = field(default_factory=_default_table)
    """Bins in increasing `up_to` order; the first that holds the difficulty applies."""


class DifficultyChoice(SpendPolicy):
    """Records the probe's measurement and the chosen bin (no spending rule)."""

    name = "difficulty"

    def __init__(self, *, difficulty: float | None, bin: str, measure: str) -> None:
        self.difficulty = difficulty
        self.bin = bin
        self.measure = measure

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "measure": self.measure,
            "difficulty": self.difficulty,
            "bin": self.bin,
        }


class DifficultyAllocator(Allocator):
    name = "difficulty"
    config: DifficultyAllocatorConfig

    def __init__(self, config: DifficultyAllocatorConfig, budget: Budget) -> None:
        super().__init__(config, budget)
        if not config.table:
            raise ConfigError("allocator.table is empty; give at least one bin", key="table")
        bounds = [row.up_to for row in config.table]
        if bounds != sorted(bounds):
            raise ConfigError(
                f"allocator.table bins must be in increasing up_to order, got {bounds}",
                key="allocator.table",
            )
        self.choices: dict[str, DifficultyChoice] = {}

    def budget_of(self, row: DifficultyBin) -> Budget:
        out = self.budget.scaled(row.scale)
        if row.tokens is not None:
            out = out.replace(tokens=row.tokens)
        if row.samples is not None:
            out = out.replace(samples=row.samples)
        return out

    def bin_for(self, difficulty: float) -> DifficultyBin:
        for row in self.config.table:
            if difficulty <= row.up_to:
                return row
        return self.config.table[-1]

    def budget_for(self, problem: Problem) -> Budget:
        # The probe runs under the most generous bin; `prepare` narrows it.
        largest = max(self.config.table, key=lambda r: (r.scale, r.tokens or 0))
        return self.budget_of(largest)

    async def prepare(self, problem: Problem, ctx: SolveContext) -> None:
        c = self.config
        sampling = Sampling(
            n=c.probe_samples,
            temperature=c.probe_temperature,
            max_tokens=c.probe_max_tokens,
            logprobs=c.measure == "entropy",
        )
        try:
            probes = await ctx.generate([ctx.root], sampling)
        except (BudgetExceeded, BackendError):
            probes = []
        for b in probes:
            b.extra["probe"] = True
            b.finished = False  # not a leaf: the strategy did not draw it
        difficulty = measure(ctx, probes, c.measure)
        row = self.bin_for(math.inf if difficulty is None else difficulty)
        choice = DifficultyChoice(difficulty=difficulty, bin=row.name, measure=c.measure)
        self.choices[problem.id] = choice
        ctx.ledger.budget = self.budget_of(row).replace(policy=choice)


def measure(ctx: SolveContext, probes: list[Any], how: str) -> float | None:
    """The difficulty the probe samples show (None: no sample to judge from)."""
    if not probes:
        return None
    if how == "entropy":
        lps = [lp for b in probes for lp in b.token_logprobs]
        return -sum(lps) / len(lps) if lps else None
    keys = []
    for i, b in enumerate(probes):
        answer = ctx.answer(b)
        keys.append(ctx.normalize(answer) if answer is not None else f"<none {i}>")
    top = Counter(keys).most_common(1)[0][1]
    return 1.0 - top / len(keys)
