"""What a flow strategy is given: `FlowContext` (the sibling of `ttc.interfaces.SolveContext`
for flow models), and the particles it records.

A flow strategy spends only through `ctx.evaluate` (one NFE per row, authorised by the
problem's `FlowLedger` before the network runs) and scores through `ctx.reward`. Every
state it keeps is a `Particle`: a node of the search tree with its timestep, schedule time
and reward, which the store keeps as a row of `nodes` (see `ttc.flow.runner`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from ttc.flow.budget import FlowLedger
from ttc.flow.sampler import Predictions, Schedule, predict, to_linear
from ttc.types import CallRecord, Problem


class VelocityModel(Protocol):
    """A velocity network: `velocity(x, t, target)` for rows `x` at linear time `t`
    (`target` None: unconditional) and its cost per row."""

    flops_per_nfe: float

    def velocity(self, x: np.ndarray, t: float, target: int | None) -> np.ndarray: ...


class Reward(Protocol):
    name: str

    def __call__(self, x: np.ndarray, target: int) -> np.ndarray: ...


@dataclass(slots=True)
class Particle:
    """One state of the search: a node of the tree."""

    id: int
    parent_id: int | None
    step: int
    """The timestep index (0 .. T-1) the state sits at; T for a finished sample."""
    s: float
    """Schedule time of the state (1.0: a finished sample)."""
    reward: float | None = None
    """The reward of the state's predicted clean sample (of the sample itself at s = 1)."""
    finished: bool = False
    selected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class FlowContext:
    """One problem's velocity calls, rewards, random stream and particle tree."""

    def __init__(
        self,
        problem: Problem,
        *,
        model: VelocityModel,
        reward: Reward,
        ledger: FlowLedger,
        seed: int,
        conditional: bool = False,
    ) -> None:
        self.problem = problem
        self.target: int = int(problem.metadata["target"])
        self.conditional = conditional
        """Whether the network is told the target class (else it samples any digit and
        only the reward steers)."""
        self.rng = np.random.default_rng(seed)
        self.ledger = ledger
        self.particles: list[Particle] = []
        self.calls: list[CallRecord] = []
        self.best: tuple[np.ndarray, float, int] | None = None
        """The best finished sample proposed so far: (image, reward, particle id)."""
        self._model = model
        self._reward = reward

    # -- spending -----------------------------------------------------------------------
    def nfes_left(self, step: int | None = None) -> int | None:
        """NFEs left (at `step`, within the allocator's per-step allowance); None: no limit."""
        return self.ledger.nfes_left(step)

    def evaluate(self, schedule: Schedule, z: np.ndarray, s: float, *, step: int) -> Predictions:
        """Evaluate the network at states `z` (schedule time `s`): `len(z)` NFEs, charged
        to timestep `step`. Raises `BudgetExceeded` (before running) when they do not fit."""
        n = len(z)
        self.ledger.authorize(n, step=step)
        x, t = to_linear(schedule, z, s)
        start = time.perf_counter()
        v = self._model.velocity(x, t, self.target if self.conditional else None)
        latency = time.perf_counter() - start
        flops = self.ledger.charge(n, step=step)
        self._record("generate", n, flops=flops, latency=latency)
        return predict(schedule, z, s, v)

    def reward(self, x: np.ndarray) -> np.ndarray:
        """The reward of each image (model space) for the problem's target class."""
        start = time.perf_counter()
        r = self._reward(x, self.target)
        self.ledger.spent.reward_calls += 1
        self.ledger.spent.reward_evals += len(x)
        self._record("score", len(x), latency=time.perf_counter() - start)
        return r

    def _record(self, kind: Any, n: int, *, flops: float = 0.0, latency: float = 0.0) -> None:
        self.calls.append(
            CallRecord(
                seq=len(self.calls),
                kind=kind,
                status="ok",
                n_requests=1,
                n_sequences=n,
                batch_size=n,
                flops=flops,
                latency_s=latency,
            )
        )

    # -- the tree -----------------------------------------------------------------------
    def add(
        self,
        parents: list[int | None],
        *,
        step: int,
        s: float,
        rewards: np.ndarray | None = None,
        **extra: Any,
    ) -> list[int]:
        """Record one particle per parent at `step`; their ids."""
        ids = []
        for i, parent in enumerate(parents):
            pid = len(self.particles)
            r = None if rewards is None else float(rewards[i])
            self.particles.append(Particle(pid, parent, step, s, r, extra=dict(extra)))
            ids.append(pid)
        return ids

    def propose(self, images: np.ndarray, rewards: np.ndarray, parents: list[int]) -> None:
        """Record finished samples (children of `parents`) and keep the best as the answer."""
        steps = max((self.particles[p].step for p in parents), default=-1) + 1
        for img, r, parent in zip(images, rewards, parents, strict=True):
            pid = len(self.particles)
            self.particles.append(
                Particle(
                    pid,
                    parent,
                    steps,
                    1.0,
                    float(r),
                    finished=True,
                    extra={"image": [round(float(v), 3) for v in img]},
                )
            )
            if self.best is None or float(r) > self.best[1]:
                self.best = (np.asarray(img), float(r), pid)
