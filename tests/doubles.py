"""The test doubles of `ttc.testing`, registered as a plugin for ttc's own test suite
(TTC_PLUGIN_MODULES=doubles, set in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import ttc
from ttc.budget import Budget
from ttc.config import AllocatorConfig
from ttc.plugins.allocators.fixed import FixedAllocator
from ttc.testing import (
    BATCH_SIZES,
    ScriptedBackend,
    ScriptedBackendConfig,
    SyntheticReward,
    SyntheticRewardConfig,
    SyntheticTask,
    SyntheticTaskConfig,
)
from ttc.types import GenerateRequest, GenerateResult, Problem

__all__ = ["BATCH_SIZES"]


class RequestRecorder(ScriptedBackend):
    """The scripted double, keeping every request the scheduler hands it (`seen`)."""

    def __init__(self, config: ScriptedBackendConfig) -> None:
        super().__init__(config)
        self.seen: list[GenerateRequest] = []

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        self.seen.extend(requests)
        return super().generate_batch(requests)


@dataclass
class FailingBudgetConfig(AllocatorConfig):
    name: str = "failing_budget"
    marker: str = "FAIL"


class FailingBudgetAllocator(FixedAllocator):
    """Test double: the fixed allocator, whose budget planning raises for a problem whose
    prompt holds `marker` (a planning bug that must stay that problem's)."""

    name = "failing_budget"

    def budget_for(self, problem: Problem) -> Budget:
        if self.config.marker in (problem.prompt or ""):
            raise RuntimeError("scripted failure in budget planning")
        return super().budget_for(problem)


@ttc.hookimpl
def register_allocators(register: Callable[..., None]) -> None:
    register(FailingBudgetAllocator, FailingBudgetConfig)


@ttc.hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register(ScriptedBackend, ScriptedBackendConfig)


@ttc.hookimpl
def register_tasks(register: Callable[..., None]) -> None:
    register(SyntheticTask, SyntheticTaskConfig)


@ttc.hookimpl
def register_reward_models(register: Callable[..., None]) -> None:
    register(SyntheticReward, SyntheticRewardConfig)
