"""`particle_gibbs`: iterated conditional particle filtering.

Puri et al. (2025), after Andrieu, Doucet and Holenstein, "Particle Markov chain Monte
Carlo methods" (2010). The first iteration is a plain particle filter. Each later
iteration runs a conditional particle filter: one particle retraces a reference solution
(drawn from the previous iteration's final weights) step by step instead of sampling,
and it survives every resampling, while the other `particles - 1` particles are sampled
fresh and may be copies of it. So a good solution found once is never lost, and each
iteration explores around it. The answer is chosen over the final populations of all
iterations together (weighted vote, each iteration's weights summing to one, or best).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import normalise_log_weights
from ttc.strategies.particle_filter import Particle, ParticleFilterConfig, Smc, choose
from ttc.types import Branch, Problem, Solution


@dataclass
class ParticleGibbsConfig(ParticleFilterConfig):
    name: str = "particle_gibbs"
    iterations: int = bounded(3, ge=1, help="particle-filter runs (the first unconditioned)")


class ParticleGibbs(Strategy):
    name = "particle_gibbs"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        rng = random.Random(ctx.rng.getrandbits(32))
        pool: list[Particle] = []
        weights: list[float] = []
        reference: list[Branch] = []
        stops: list[str] = []

        def answer(current: list[Particle], **trace: object) -> Solution:
            # Each iteration's weights sum to one; the answer is chosen over all of them.
            w = weights + (normalise_log_weights([p.logw for p in current]) if current else [])
            total = sum(w)
            norm = [x / total for x in w] if total else w
            return choose(ctx, pool + current, norm, c.select, iterations=len(stops), **trace)

        for it in range(c.iterations):
            smc = Smc(c, ctx, rng, reference=reference)
            async for _ in smc.steps():
                yield answer(smc.population)
            particles = smc.population
            stops.append(smc.stop)
            w = normalise_log_weights([p.logw for p in particles])
            finished = [i for i, p in enumerate(particles) if p.branch.finished]
            if particles and particles[0].branch is not ctx.root:
                pool += particles
                weights += w
            if not finished:
                break  # nothing to condition the next iteration on
            # The next reference is drawn in proportion to the final weights (among the
            # finished particles), as the Gibbs step of particle MCMC prescribes.
            pick = rng.choices(finished, weights=[w[i] + 1e-12 for i in finished])[0]
            reference = ctx.path(particles[pick].branch)
            particles[pick].branch.extra.setdefault("reference_of", []).append(it + 1)
        yield answer([], ended_by=stops[-1] if stops else "max_steps")
