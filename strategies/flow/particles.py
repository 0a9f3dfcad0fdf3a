"""`particle_sde` / `particle_vp_sde`: particle sampling over the marginal-preserving SDE.

K trajectories run together; at every intermediate timestep each particle's predicted
clean sample is scored and the population is resampled (weights `exp(r / temperature)`,
an unbiased scheme of `ttc.strategies.resampling`), then every particle takes its own
stochastic step, which re-diversifies the copies. `particle_vp_sde` runs the same on the
variance-preserving conversion of the linear interpolant.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import numpy as np

from ttc.flow.context import FlowContext
from ttc.flow.interfaces import FlowSolution, FlowStrategy
from ttc.flow.sampler import Predictions, Schedule, ScheduleName, grid, step
from ttc.strategies.flow.common import SampleSetConfig, population, softmax_weights, take
from ttc.strategies.resampling import RESAMPLERS


@dataclass
class ParticleSDEConfig(SampleSetConfig):
    name: str = "particle_sde"
    schedule: str = field(default="linear", metadata={"choices": ["linear", "vp"]})
    eps: float = field(default=0.5, metadata={"ge": 0, "help": "diffusion scale of the SDE"})
    temperature: float = field(default=0.1, metadata={"gt": 0, "help": "of resampling weights"})
    resampler: str = field(
        default="systematic", metadata={"choices": ["multinomial", "systematic", "residual"]}
    )


@dataclass
class ParticleVPSDEConfig(ParticleSDEConfig):
    name: str = "particle_vp_sde"
    schedule: str = field(default="vp", metadata={"choices": ["linear", "vp"]})


def resample(
    rewards: np.ndarray, *, temperature: float, scheme: str, rng: random.Random
) -> list[int]:
    """Ancestor indices of the new population (particle i is copied n * w_i times in
    expectation, w = softmax(rewards / temperature))."""
    weights = softmax_weights(rewards, temperature)
    return RESAMPLERS[scheme](weights.tolist(), len(rewards), rng)


class ParticleSDE(FlowStrategy):
    name = "particle_sde"
    config: ParticleSDEConfig

    def solve(self, ctx: FlowContext) -> FlowSolution:
        cfg = self.config
        n, t = population(ctx, cfg), cfg.nfes_per_sample
        name: ScheduleName = "vp" if cfg.schedule == "vp" else "linear"
        schedule = Schedule(name)
        pyrng = random.Random(int(ctx.rng.integers(2**31)))
        z = ctx.rng.standard_normal((n, 64))
        ids = ctx.add([None] * n, step=0, s=0.0)
        points = grid(t)
        resamples = 0
        pred: Predictions | None = None
        for k, s in enumerate(points):
            pred = ctx.evaluate(schedule, z, s, step=k)
            if k + 1 == t:
                break
            if k >= 1 and n > 1:  # at s = 0 every prediction is the data mean: no signal
                r = ctx.reward(pred.x1_hat)
                for pid, rv in zip(ids, r, strict=True):
                    ctx.particles[pid].reward = float(rv)
                anc = resample(r, temperature=cfg.temperature, scheme=cfg.resampler, rng=pyrng)
                z, pred, ids = z[anc], take(pred, anc), [ids[a] for a in anc]
                resamples += 1
            noise = ctx.rng.standard_normal(z.shape)
            z = step(schedule, z, pred, s=s, ds=1.0 / t, eps=cfg.eps, noise=noise)
            ids = ctx.add(list(ids), step=k + 1, s=points[k + 1])
        assert pred is not None
        rewards = ctx.reward(pred.x1_hat)
        ctx.propose(pred.x1_hat, rewards, list(ids))
        best = int(np.argmax(rewards))
        return FlowSolution(
            pred.x1_hat[best], float(rewards[best]), None, trace={"n": n, "resamples": resamples}
        )


class ParticleVPSDE(ParticleSDE):
    name = "particle_vp_sde"
    config: ParticleVPSDEConfig
