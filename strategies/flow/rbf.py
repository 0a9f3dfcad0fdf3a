"""`rbf`: rollover budget forcing over the (VP-)SDE.

One trajectory moves through the timesteps. At each timestep it draws candidate next
states (each costs one NFE: the velocity at the candidate, which gives its predicted
clean sample and its reward) until one beats the current state's reward, then moves
there; the rest of the timestep's allowance rolls over to the later timesteps (the
`rollover` flow allocator's per-timestep limit). When no candidate beats it within the
allowance, the best candidate is taken. The last timestep spends all that is left (its
candidates' predictions are the final samples) and keeps the best. Needs `allocator=rollover`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ttc.errors import ConfigError
from ttc.flow.allocators import NFERollover
from ttc.flow.context import FlowContext
from ttc.flow.interfaces import FlowSolution, FlowStrategy, FlowStrategyConfig
from ttc.flow.sampler import Predictions, Schedule, ScheduleName, grid, step
from ttc.strategies.flow.common import take


@dataclass
class RBFConfig(FlowStrategyConfig):
    name: str = "rbf"
    schedule: str = field(default="vp", metadata={"choices": ["linear", "vp"]})
    eps: float = field(default=0.5, metadata={"ge": 0, "help": "diffusion scale of the SDE"})
    batch: int = field(default=1, metadata={"ge": 1, "help": "candidates per velocity call"})


class RolloverBudgetForcing(FlowStrategy):
    name = "rbf"
    config: RBFConfig

    def solve(self, ctx: FlowContext) -> FlowSolution:
        cfg = self.config
        t = cfg.nfes_per_sample
        if not isinstance(ctx.ledger.budget.policy, NFERollover):
            raise ConfigError(
                "strategy rbf spends per-timestep NFE allowances, but the allocator sets none",
                key="allocator",
                hint="use allocator=rollover",
            )
        total = ctx.nfes_left()
        if total is not None and total < t:
            raise ConfigError(
                f"budget.nfes={total} is less than one NFE per timestep ({t})",
                key="budget.nfes",
                hint=f"raise budget.nfes to at least {t}",
            )
        name: ScheduleName = "vp" if cfg.schedule == "vp" else "linear"
        schedule = Schedule(name)
        points = grid(t)
        z = ctx.rng.standard_normal((1, 64))
        (pid,) = ctx.add([None], step=0, s=0.0)
        pred: Predictions = ctx.evaluate(schedule, z, 0.0, step=0)
        current = float(ctx.reward(pred.x1_hat)[0])
        ctx.particles[pid].reward = current
        tried: list[int] = []
        for k in range(1, t):
            best: tuple[np.ndarray, Predictions, int, float] | None = None
            n_tried = 0
            left = ctx.nfes_left(step=k)
            while left is None or left > 0:
                m = cfg.batch if left is None else min(cfg.batch, left)
                noise = ctx.rng.standard_normal((m, 64))
                cand = step(schedule, np.repeat(z, m, axis=0), take(pred, [0] * m),
                            s=points[k - 1], ds=1.0 / t, eps=cfg.eps, noise=noise)  # fmt: skip
                cpred = ctx.evaluate(schedule, cand, points[k], step=k)
                r = ctx.reward(cpred.x1_hat)
                cids = ctx.add([pid] * m, step=k, s=points[k], rewards=r)
                n_tried += m
                j = int(np.argmax(r))
                if best is None or float(r[j]) > best[3]:
                    best = (cand[j : j + 1], take(cpred, [j]), cids[j], float(r[j]))
                if best[3] > current and k + 1 < t:
                    break  # a better particle: move on, the rest rolls over
                left = ctx.nfes_left(step=k)
            if best is None:  # no allowance at all (cannot happen with rollover and nfes >= t)
                raise ConfigError(f"timestep {k} got no NFEs", key="budget.nfes")
            z, pred, pid, current = best
            tried.append(n_tried)
        final = ctx.reward(pred.x1_hat)
        ctx.propose(pred.x1_hat, final, [pid])
        return FlowSolution(pred.x1_hat[0], float(final[0]), None, trace={"candidates": tried})
