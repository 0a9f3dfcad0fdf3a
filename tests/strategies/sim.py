"""The simulated environment of `ttc.simulation`, driven for tests: a plugin module (add
"sim" to TTC_PLUGIN_MODULES to run it through the Runner as `backend=sim task=sim
reward=sim`) and helpers to solve problems in it directly."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ttc
from ttc import testing
from ttc.budget import Budget
from ttc.errors import BackendError
from ttc.interfaces import RewardModel, Strategy
from ttc.scheduler import Scheduler
from ttc.simulation import *  # noqa: F403  (the environment, re-exported for the tests)
from ttc.simulation import (
    ExactReward,
    SimBackend,
    SimBackendConfig,
    SimReward,
    SimRewardConfig,
    SimTask,
    SimTaskConfig,
)
from ttc.types import Problem, Solution

# -- driving strategies directly -----------------------------------------------------
Outcome = testing.Outcome


@dataclass
class Env:
    """Backend, reward and budget for a batch of problems solved together."""

    backend: SimBackendConfig = field(default_factory=SimBackendConfig)
    reward: SimRewardConfig | None = field(default_factory=SimRewardConfig)
    exact: bool = False
    budget: Budget = field(default_factory=Budget)
    aggregate: str = "last"
    seed: int = 0
    record_errors: bool = False
    """Turn a `BackendError` the strategy raises into an unanswered outcome (trace
    `raised`), as the Runner records a failed problem, instead of failing the batch."""


def solve_all(
    strategy: Strategy, problems: Sequence[Problem], env: Env | None = None
) -> list[Outcome]:
    """Solve every problem concurrently through one scheduler, as the Runner does."""
    env = env or Env()
    reward: RewardModel | None = None
    if env.exact:
        reward = ExactReward(SimRewardConfig())
    elif env.reward is not None:
        reward = SimReward(env.reward)

    def record(problem: Problem, ctx: Any, exc: BaseException) -> Solution:
        if not isinstance(exc, BackendError):
            raise exc
        return Solution(answer=None, trace={"raised": str(exc)})

    return testing.solve_all(
        strategy,
        problems,
        backend=SimBackend(env.backend),
        task=SimTask(SimTaskConfig()),
        reward=reward,
        budget=env.budget,
        aggregate=env.aggregate,
        seed=env.seed,
        on_error=record if env.record_errors else None,
    )


def accuracy(outcomes: Sequence[Outcome]) -> float:
    return sum(o.correct for o in outcomes) / len(outcomes)


def mean_spent(outcomes: Sequence[Outcome], unit: str) -> float:
    return sum(getattr(o.spent, unit) for o in outcomes) / len(outcomes)


def binomial_tolerance(p: float, n: int, z: float = 4.0) -> float:
    """z standard errors of a proportion estimated from n independent problems."""
    return z * (p * (1 - p) / n) ** 0.5


# -- plugin hooks --------------------------------------------------------------------
@ttc.hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register(SimBackend, SimBackendConfig)


@ttc.hookimpl
def register_tasks(register: Callable[..., None]) -> None:
    register(SimTask, SimTaskConfig)


@ttc.hookimpl
def register_reward_models(register: Callable[..., None]) -> None:
    register(SimReward, SimRewardConfig)


def run_raw(body: Callable[[Any], Any], problem: Problem, env: Env) -> Any:
    """Run `await body(ctx)` on one problem's context; return what it spent."""
    backend = SimBackend(env.backend)

    async def go() -> Any:
        scheduler = Scheduler(backend, None, max_batch_size=512, max_wait_s=0.0)
        ctx, ledger = testing.wire(
            problem, scheduler=scheduler, task=SimTask(SimTaskConfig()), budget=env.budget
        )
        await body(ctx)
        return ledger.spent

    return asyncio.run(go())
