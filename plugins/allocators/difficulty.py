"""`difficulty`: probe each problem cheaply, then solve it with the strategy, parameters
and budget of its difficulty bin.

Before the strategy starts, the allocator draws `probe_samples` samples of at most
`probe_max_tokens` tokens from the policy (through the problem's own context, so the
probe is counted in the problem's spending and calls) and measures difficulty:

- `agreement` (default): `1 - share of the most common answer` among the probe samples
  (a sample stating no answer counts as an answer of its own): 0 when all agree.
- `entropy`: the mean negative logprob of the probe's tokens (nats per token), an
  estimate of the policy's entropy on the problem.
- `score`: the mean reward of the probe samples (needs a reward model; one score call).
  Note its direction: a high mean reward usually means an easy problem.

The bins come from `policy` (a policy file, see `ttc.plugins.allocators.policy`: per bin
a strategy with parameters and a budget) or else from `table` (per bin a budget: `scale`
times the top-level budget, `tokens` / `samples` overriding). The first bin whose
`up_to` holds the difficulty applies. The probe runs under the largest bin's budget;
the chosen budget then replaces it, raised where needed to what the probe already spent
(no stored budget is below its problem's spending). The probe samples are whole samples
of the policy: they are leaves of the search tree (`extra["probe"] = True`), the
sampling strategies count them among their n samples, and an answer falls back to
their vote when the strategy ends before it has one. The chosen bin (and strategy) is
stored with the problem's budget (`budget.policy`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ttc.budget import Budget, SpendPolicy
from ttc.config import AllocatorConfig, bounded, instantiate_config
from ttc.errors import BackendError, BudgetExceeded, ConfigError
from ttc.interfaces import Allocator, Plan, SolveContext, Strategy
from ttc.plugins.allocators.policy import MEASURES, Policy, PolicyBin, load_policy
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
    measure: str = bounded("agreement", choices=list(MEASURES))
    probe_samples: int = bounded(4, ge=1, help="samples of the probe")
    probe_max_tokens: int = bounded(256, ge=1, help="tokens per probe sample")
    probe_temperature: float = bounded(0.8, ge=0.0)
    table: list[DifficultyBin] = field(default_factory=_default_table)
    """Bins in increasing `up_to` order; the first that holds the difficulty applies."""
    policy: str | None = None
    """A policy file (YAML/JSON, written by `ttc analyze policy`): its measure, probe
    settings and bins (strategy, parameters, budget per bin) replace the fields above."""


@dataclass(frozen=True)
class Bin:
    """A bin as the allocator applies it."""

    name: str
    up_to: float
    budget: Budget
    strategy: Strategy | None
    spec: dict[str, Any]


class DifficultyChoice(SpendPolicy):
    """Records the probe's measurement and the chosen bin (no spending rule)."""

    name = "difficulty"

    def __init__(
        self,
        *,
        difficulty: float | None,
        bin: str,
        measure: str,
        strategy: dict[str, Any] | None = None,
    ) -> None:
        self.difficulty = difficulty
        self.bin = bin
        self.measure = measure
        self.strategy = strategy

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "measure": self.measure,
            "difficulty": self.difficulty,
            "bin": self.bin,
        }
        if self.strategy:
            out["strategy"] = self.strategy
        return out


def build_strategy(spec: dict[str, Any], where: str) -> Strategy:
    """A strategy from `{name: ..., <parameter>: ...}`, validated by its schema."""
    from ttc.registry import get_registry

    reg = get_registry().get("strategy", str(spec["name"]))
    config = instantiate_config(reg.config_cls, spec, where)
    strategy: Strategy = reg.cls(config)
    return strategy


class DifficultyAllocator(Allocator):
    name = "difficulty"
    config: DifficultyAllocatorConfig

    def __init__(self, config: DifficultyAllocatorConfig, budget: Budget) -> None:
        super().__init__(config, budget)
        self.measure = config.measure
        self.probe = {
            "samples": config.probe_samples,
            "max_tokens": config.probe_max_tokens,
            "temperature": config.probe_temperature,
        }
        if config.policy:
            policy = load_policy(config.policy)
            self.measure = policy.measure
            self.probe.update(policy.probe)
            self.bins = [self._policy_bin(b, i) for i, b in enumerate(policy.bins)]
            self.policy: Policy | None = policy
        else:
            if not config.table:
                raise ConfigError("allocator.table is empty; give at least one bin", key="table")
            bounds = [row.up_to for row in config.table]
            if bounds != sorted(bounds):
                raise ConfigError(
                    f"allocator.table bins must be in increasing up_to order, got {bounds}",
                    key="allocator.table",
                )
            self.bins = [Bin(r.name, r.up_to, self.budget_of(r), None, {}) for r in config.table]
            self.policy = None
        self.choices: dict[str, DifficultyChoice] = {}

    def _policy_bin(self, b: PolicyBin, index: int) -> Bin:
        limits: dict[str, Any] = {}
        for unit, value in b.budget.items():
            ref = getattr(self.budget, unit)
            limits[unit] = value if isinstance(ref, float) or unit in FLOAT_UNITS else int(value)
        strategy = build_strategy(b.strategy, f"allocator.policy bins[{index}].strategy")
        return Bin(b.name, b.up_to, self.budget.replace(**limits), strategy, dict(b.strategy))

    def budget_of(self, row: DifficultyBin) -> Budget:
        out = self.budget.scaled(row.scale)
        if row.tokens is not None:
            out = out.replace(tokens=row.tokens)
        if row.samples is not None:
            out = out.replace(samples=row.samples)
        return out

    def bin_for(self, difficulty: float) -> Bin:
        for b in self.bins:
            if difficulty <= b.up_to:
                return b
        return self.bins[-1]

    def budget_for(self, problem: Problem) -> Budget:
        # The probe runs under the most generous bin; `prepare` narrows it.
        return _largest([b.budget for b in self.bins])

    async def prepare(self, problem: Problem, ctx: SolveContext) -> Plan:
        sampling = Sampling(
            n=int(self.probe["samples"]),
            temperature=float(self.probe["temperature"]),
            max_tokens=int(self.probe["max_tokens"]),
            logprobs=self.measure == "entropy",
        )
        try:
            probes = await ctx.generate([ctx.root], sampling)
        except (BudgetExceeded, BackendError):
            probes = []
        for b in probes:
            b.extra["probe"] = True
            b.finished = True  # a whole sample of the policy: a leaf that votes
        difficulty = await measure(ctx, probes, self.measure)
        row = self.bin_for(math.inf if difficulty is None else difficulty)
        choice = DifficultyChoice(
            difficulty=difficulty, bin=row.name, measure=self.measure, strategy=row.spec or None
        )
        self.choices[problem.id] = choice
        return Plan(budget=row.budget.replace(policy=choice), strategy=row.strategy)


FLOAT_UNITS = ("flops", "eflops", "seconds")


def _largest(budgets: list[Budget]) -> Budget:
    """Per unit the largest limit of `budgets` (None, unlimited, wins)."""
    out: dict[str, Any] = {}
    for unit in budgets[0].limits():
        values = [b.limits()[unit] for b in budgets]
        out[unit] = None if None in values else max(v for v in values if v is not None)
    return Budget(**out)


async def measure(ctx: SolveContext, probes: list[Any], how: str) -> float | None:
    """The difficulty the probe samples show (None: no sample to judge from)."""
    if not probes:
        return None
    if how == "entropy":
        lps = [lp for b in probes for lp in b.token_logprobs]
        return -sum(lps) / len(lps) if lps else None
    if how == "score":
        if not ctx.has_reward:
            raise ConfigError(
                "allocator measure 'score' reads the reward of the probe samples, but reward=none",
                key="allocator.measure",
                hint="choose a reward model, or measure=agreement",
            )
        try:
            await ctx.score(probes)
        except (BudgetExceeded, BackendError):
            return None
        scores = [b.score for b in probes if b.score is not None]
        return sum(scores) / len(scores) if scores else None
    keys = []
    for i, b in enumerate(probes):
        answer = ctx.answer(b)
        keys.append(ctx.normalize(answer) if answer is not None else f"<none {i}>")
    top = Counter(keys).most_common(1)[0][1]
    return 1.0 - top / len(keys)
