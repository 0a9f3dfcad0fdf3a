"""The test doubles of `ttc.testing`, registered as a plugin for ttc's own test suite
(TTC_PLUGIN_MODULES=doubles, set in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable

import ttc
from ttc.testing import (
    BATCH_SIZES,
    ScriptedBackend,
    ScriptedBackendConfig,
    SyntheticReward,
    SyntheticRewardConfig,
    SyntheticTask,
    SyntheticTaskConfig,
)

__all__ = ["BATCH_SIZES"]


@ttc.hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register(ScriptedBackend, ScriptedBackendConfig)


@ttc.hookimpl
def register_tasks(register: Callable[..., None]) -> None:
    register(SyntheticTask, SyntheticTaskConfig)


@ttc.hookimpl
def register_reward_models(register: Callable[..., None]) -> None:
    register(SyntheticReward, SyntheticRewardConfig)
