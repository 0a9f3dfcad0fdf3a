"""The flow modality's plugin interfaces: strategies and NFE allocators.

They are siblings of `ttc.interfaces.Strategy` / `Allocator`, not subclasses: a flow
strategy is handed a `FlowContext` (velocity evaluations, rewards, particles), never a
language model's `SolveContext`, so neither set of types is bent to fit the other. Each
implementation has a `name` and a config dataclass subclassing `FlowStrategyConfig` /
`FlowAllocatorConfig`; `ttc.flow.registry` holds them by name.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ttc.flow.budget import FlowBudget
from ttc.flow.context import FlowContext
from ttc.types import Problem


@dataclass
class FlowStrategyConfig:
    name: str = ""
    nfes_per_sample: int = field(default=10, metadata={"ge": 1, "help": "timesteps per trajectory"})


@dataclass
class FlowAllocatorConfig:
    name: str = ""


@dataclass
class FlowSolution:
    """A strategy's answer: the chosen image (model space), its reward and particle."""

    image: np.ndarray | None
    reward: float | None
    particle: int | None
    trace: dict[str, Any] = field(default_factory=dict)


class FlowStrategy(abc.ABC):
    """Spends a problem's NFE budget through `ctx` to find a high-reward sample."""

    name: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def solve(self, ctx: FlowContext) -> FlowSolution:
        """Search, spending only through `ctx`; hand finished samples to `ctx.propose`
        (a refused call then ends the search with the best one proposed)."""


class FlowAllocator(abc.ABC):
    """Decides each problem's `FlowBudget` (and its per-timestep policy)."""

    name: ClassVar[str] = ""

    def __init__(self, config: Any, budget: FlowBudget) -> None:
        self.config = config
        self.budget = budget

    @abc.abstractmethod
    def budget_for(self, problem: Problem, *, timesteps: int) -> FlowBudget:
        """The budget of one problem solved over `timesteps` timesteps."""
