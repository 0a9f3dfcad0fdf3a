"""A plugin for the round-trip tests (test doubles): the `sim` backend and reward of
tests/strategies/sim.py with a task whose problems have a real difficulty spread.

`spread` task: each problem's per-sample success probability is drawn from `centres`
(seeded, per problem); wrong answers scatter over eight offsets, so a hard problem's
samples disagree. `split` keeps the even (`fit`) or odd (`test`) problems.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import ttc
from ttc.config import bounded
from ttc.types import Problem

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "strategies"))
# the sim doubles live beside the strategy tests
from sim import (
    SimBackend,
    SimBackendConfig,
    SimReward,
    SimRewardConfig,
    SimTask,
    SimTaskConfig,
    sim_prompt,
)

WRONG = ",".join(f"{o}:1" for o in range(1, 9))


@dataclass
class SpreadTaskConfig(SimTaskConfig):
    name: str = "spread"
    centres: list[float] = field(default_factory=lambda: [0.9, 0.9, 0.9, 0.15])
    split: str = bounded("all", choices=["all", "fit", "test"])


class SpreadTask(SimTask):
    name = "spread"

    def load(self) -> list[Problem]:
        c = self.config
        rng = random.Random(c.seed)
        out = []
        for i in range(c.n_problems):
            q = min(max(rng.choice(list(c.centres)) + rng.gauss(0, 0.03), 0.0), 1.0)
            answer = rng.randint(10, 99)
            pid = f"d{i:04d}"
            prompt = sim_prompt(pid, answer=answer, steps=0, q=round(q, 4), wrong=WRONG, tail=0.0)
            if c.split == "all" or (c.split == "fit") == (i % 2 == 0):
                out.append(Problem(id=pid, prompt=prompt, reference=str(answer)))
        return out


@ttc.hookimpl
def register_backends(register: Callable[..., None]) -> None:
    register(SimBackend, SimBackendConfig)


@ttc.hookimpl
def register_tasks(register: Callable[..., None]) -> None:
    register(SpreadTask, SpreadTaskConfig)


@ttc.hookimpl
def register_reward_models(register: Callable[..., None]) -> None:
    register(SimReward, SimRewardConfig)
