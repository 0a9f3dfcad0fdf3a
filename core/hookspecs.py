"""Every hook a ttc plugin can implement.

Registration hooks receive a `register` callback and call it once per thing they
provide; all implementations run. Observer hooks see a run as it happens; all
implementations run and their return values are ignored. Plugins implement hooks with
`@ttc.hookimpl` and are found through the entry-point group `ttc`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

hookspec = pluggy.HookspecMarker("ttc")


@hookspec
def register_backends(register: Callable[..., None]) -> None:
    """Register generation backends.

    Call ``register(cls, config_cls)`` once per backend: `cls` subclasses
    `ttc.interfaces.Backend` and has a unique ``name``; `config_cls` is its dataclass
    schema (a subclass of `ttc.config.BackendConfig`), stored as ``backend/base_<name>``.
    All implementations run.
    """


@hookspec
def register_strategies(register: Callable[..., None]) -> None:
    """Register search strategies.

    Call ``register(cls, config_cls)``: `cls` subclasses `ttc.interfaces.Strategy`;
    `config_cls` subclasses `ttc.config.StrategyConfig` and is stored as
    ``strategy/base_<name>``. All implementations run.
    """


@hookspec
def register_reward_models(register: Callable[..., None]) -> None:
    """Register reward models and verifiers.

    Call ``register(cls, config_cls)``: `cls` subclasses `ttc.interfaces.RewardModel`;
    `config_cls` subclasses `ttc.config.RewardConfig`. All implementations run.
    """


@hookspec
def register_allocators(register: Callable[..., None]) -> None:
    """Register budget allocators.

    Call ``register(cls, config_cls)``: `cls` subclasses `ttc.interfaces.Allocator`;
    `config_cls` subclasses `ttc.config.AllocatorConfig`. All implementations run.
    """


@hookspec
def register_tasks(register: Callable[..., None]) -> None:
    """Register tasks (problem sources with their grading rules).

    Call ``register(cls, config_cls)``: `cls` subclasses `ttc.interfaces.Task`;
    `config_cls` subclasses `ttc.config.TaskConfig`. All implementations run.
    """


@hookspec
def register_configs(register: Callable[..., None]) -> None:
    """Register extra Hydra config nodes.

    Call ``register(group, name, node)``; `node` is a dataclass instance or a dict, stored
    in Hydra's ConfigStore so that ``<group>=<name>`` selects it. A plugin that registers
    a strategy ``foo`` usually also registers ``register("strategy", "foo", FooConfig())``
    so that ``strategy=foo`` works without a YAML file. All implementations run.
    """


@hookspec
def on_run_start(run_id: str, config: dict[str, Any], n_problems: int) -> None:
    """A run starts (or resumes) with `n_problems` problems still to solve.

    `config` is the resolved configuration as plain data. All implementations run.
    """


@hookspec
def on_call(run_id: str, problem_id: str, call: Any) -> None:
    """A backend or reward call of one problem finished (or was refused).

    `call` is a `ttc.types.CallRecord`. Called on the event loop: keep it fast.
    All implementations run.
    """


@hookspec
def on_problem_done(run_id: str, result: Any) -> None:
    """A problem finished (solved, out of budget, or failed) and was stored.

    `result` is a `ttc.runner.ProblemResult`. All implementations run.
    """


@hookspec
def on_run_end(run_id: str, status: str, totals: dict[str, Any]) -> None:
    """A run ended with `status` (`finished`, `failed` or `interrupted`) and its totals.

    All implementations run.
    """
