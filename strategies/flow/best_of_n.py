"""`best_of_n` (flow): N independent ODE samples, the one with the highest reward."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttc.flow.context import FlowContext
from ttc.flow.interfaces import FlowSolution, FlowStrategy
from ttc.flow.sampler import Schedule, grid, step
from ttc.strategies.flow.common import SampleSetConfig, population


@dataclass
class FlowBestOfNConfig(SampleSetConfig):
    name: str = "best_of_n"


class FlowBestOfN(FlowStrategy):
    name = "best_of_n"
    config: FlowBestOfNConfig

    def solve(self, ctx: FlowContext) -> FlowSolution:
        n, t = population(ctx, self.config), self.config.nfes_per_sample
        schedule = Schedule("linear")
        z = ctx.rng.standard_normal((n, 64))
        ids = ctx.add([None] * n, step=0, s=0.0)
        points = grid(t)
        pred = None
        for k, s in enumerate(points):
            pred = ctx.evaluate(schedule, z, s, step=k)
            if k + 1 < t:
                z = step(schedule, z, pred, s=s, ds=1.0 / t, eps=0.0, noise=None)
                ids = ctx.add(list(ids), step=k + 1, s=points[k + 1])
        assert pred is not None
        rewards = ctx.reward(pred.x1_hat)
        ctx.propose(pred.x1_hat, rewards, list(ids))
        best = int(np.argmax(rewards))
        return FlowSolution(pred.x1_hat[best], float(rewards[best]), None, trace={"n": n})
