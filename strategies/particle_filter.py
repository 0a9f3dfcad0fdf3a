"""`particle_filter`: sequential Monte Carlo over reasoning steps.

Puri et al., "A Probabilistic Inference Approach to Inference-Time Scaling of LLMs using
Particle-Based Monte Carlo Methods" (2025). Search with a process reward model is cast
as inference: the reward of each new step is treated as the likelihood of "this partial
solution leads to a correct answer". Beam search keeps the top-scoring beams and so
trusts every score completely; a noisy or over-confident reward model then prunes the
right path early. A particle filter keeps the population's diversity instead:

1. `particles` partial solutions each advance by one step (one sample each).
2. Each step's reward r becomes a log-likelihood, `weighting=softmax`: r / T
   (`weight_temperature` T), or `weighting=log_odds`: log(r / (1 - r)); a particle's log
   weight accumulates it since the last resampling.
3. When the effective sample size 1 / sum(w^2) of the normalised weights falls below
   `ess_threshold * particles`, the population is resampled (`multinomial`,
   `systematic` or `residual`): likely particles are copied, unlikely ones die, and the
   weights reset to uniform. `ess_threshold=1` resamples every step.
4. Finished particles stay in the population (they can be copied, not extended); after
   a resampling they keep the likelihood of their own score as their weight, so a
   solution that finished early competes with the moving ones on its merit.

The answer is a weighted vote of the final population (`select=weighted_vote`) or the
best-scoring finished particle (`select=best`). Every resampling is recorded: the
population members get `extra["offspring"]` (copies made; 0 means pruned) and the next
steps grown from copies carry `extra["resampled_from"]` (the ancestor's id).
"""

from __future__ import annotations

import math
import random
from collections import defaultdict, deque
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ttc.aggregation import score_of
from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import (
    StepSearchConfig,
    effective_sample_size,
    log_odds,
    mark_steps,
    normalise_log_weights,
    solution,
    step_sampling,
    votes,
)
from ttc.strategies.resampling import RESAMPLERS
from ttc.types import Branch, Problem, Solution


@dataclass
class ParticleFilterConfig(StepSearchConfig):
    name: str = "particle_filter"
    particles: int = bounded(8, ge=1, help="population size")
    weighting: str = bounded("softmax", choices=["softmax", "log_odds"])
    weight_temperature: float = bounded(
        0.2, gt=0.0, help="softmax weighting: log-likelihood = reward / weight_temperature"
    )
    resampling: str = bounded("systematic", choices=sorted(RESAMPLERS))
    ess_threshold: float = bounded(
        1.0, ge=0.0, le=1.0, help="resample when ESS < this * particles (1: every step)"
    )
    select: str = bounded("weighted_vote", choices=["weighted_vote", "best"])


@dataclass(slots=True)
class Particle:
    branch: Branch
    logw: float = 0.0
    ancestor: int | None = None
    """Id of the branch this particle was copied from at the last resampling."""


@dataclass
class Smc:
    """One particle-filter run; `ParticleGibbs` runs several conditioned on a reference."""

    config: Any
    ctx: SolveContext
    rng: random.Random
    reference: list[Branch] = field(default_factory=list)
    """Conditional SMC: particle 0 follows these branches (root's child first) instead of
    sampling, and survives every resampling."""
    population: list[Particle] = field(default_factory=list)
    history: list[dict[str, float]] = field(default_factory=list)
    stop: str = "max_steps"

    def loglik(self, b: Branch) -> float:
        if b.step_texts and not b.scored:
            return -math.inf  # its newest step failed scoring: weight 0, never the parent's
        r = b.step_scores[-1] if b.step_scores else 0.5
        if self.config.weighting == "log_odds":
            return log_odds(r)
        return r / self.config.weight_temperature

    async def steps(self) -> AsyncIterator[int]:
        """Run the filter, yielding after every step (the population is then weighted
        and resampled); `stop` says how it ended."""
        c, ctx = self.config, self.ctx
        sampling = step_sampling(
            n=1,
            temperature=c.temperature,
            top_p=c.top_p,
            step_delimiter=c.step_delimiter,
            step_tokens=c.step_tokens,
        )
        self.population = [Particle(ctx.root) for _ in range(c.particles)]
        for t in range(c.max_steps):
            cond = bool(self.reference)
            moving = [
                i
                for i, p in enumerate(self.population)
                if not p.branch.finished and not (cond and i == 0)
            ]
            if cond and t < len(self.reference):
                self.population[0].branch = self.reference[t]
                self.population[0].logw += self.loglik(self.reference[t])
            if not moving:
                if cond:  # the reference alone is left: let it run to its end
                    for ref in self.reference[t + 1 :]:
                        self.population[0].branch = ref
                        self.population[0].logw += self.loglik(ref)
                self.stop = "finished"
                return
            children = await ctx.generate([self.population[i].branch for i in moving], sampling)
            mark_steps(children)
            alive = self._advance(moving, children)
            await ctx.score([self.population[i].branch for i in alive])
            for i in alive:
                self.population[i].logw += self.loglik(self.population[i].branch)
            self._maybe_resample(t)
            yield t

    def _advance(self, moving: list[int], children: list[Branch]) -> list[int]:
        """Put each child in its particle's slot. Children come grouped by parent in the
        order asked; copies of one parent are interchangeable, so a failed request among
        them just leaves the last copy without a child, and that particle is dropped."""
        slots: dict[int, deque[int]] = defaultdict(deque)
        for i in moving:
            slots[self.population[i].branch.id].append(i)
        alive: list[int] = []
        for ch in children:
            i = slots[ch.parent_id or 0].popleft()
            p = self.population[i]
            if p.ancestor is not None:
                ch.extra["resampled_from"] = p.ancestor
                p.ancestor = None
            p.branch = ch
            alive.append(i)
        dead = {i for left in slots.values() for i in left}
        if dead:
            keep = [i for i in range(len(self.population)) if i not in dead]
            index = {old: new for new, old in enumerate(keep)}
            self.population = [self.population[i] for i in keep]
            alive = [index[i] for i in alive]
        return alive

    def weights(self) -> list[float]:
        return normalise_log_weights([p.logw for p in self.population])

    def _maybe_resample(self, t: int) -> None:
        n = len(self.population)
        w = self.weights()
        ess = effective_sample_size(w)
        resample = n > 1 and ess < self.config.ess_threshold * n - 1e-9
        self.history.append({"step": t + 1, "ess": ess, "resampled": float(resample)})
        if not resample:
            return
        cond = bool(self.reference)
        draws = RESAMPLERS[self.config.resampling](w, n - cond, self.rng)
        # The reference particle is kept in slot 0 (conditional SMC); the rest are drawn
        # from the whole population, the reference included.
        ancestors = ([0] if cond else []) + draws
        # Copies share one branch: count offspring and weight per branch.
        offspring: dict[int, int] = defaultdict(int)
        mass: dict[int, float] = defaultdict(float)
        for a in ancestors:
            offspring[self.population[a].branch.id] += 1
        for p, wi in zip(self.population, w, strict=True):
            mass[p.branch.id] += wi
        for p in self.population:
            p.branch.extra["offspring"] = offspring[p.branch.id]
            p.branch.extra["weight"] = mass[p.branch.id]
        # Weights reset to uniform for the particles that move on: their next step's
        # likelihood weighs them. A finished particle does not move again, so it keeps the
        # likelihood of its own current score (Puri et al.); at weight 0 it would be
        # outweighed by every moving particle and resampled away.
        self.population = [
            Particle(
                self.population[a].branch,
                self.loglik(self.population[a].branch)
                if self.population[a].branch.finished
                else 0.0,
                None if (cond and j == 0) else self.population[a].branch.id,
            )
            for j, a in enumerate(ancestors)
        ]


def choose(
    ctx: SolveContext, particles: list[Particle], weights: list[float], select: str, **trace: Any
) -> Solution:
    """The answer of a final population: weighted vote or best finished particle."""
    done = [(p.branch, w) for p, w in zip(particles, weights, strict=True) if p.branch.finished]
    pool = done or [(p.branch, w) for p, w in zip(particles, weights, strict=True)]
    pool = [(b, w) for b, w in pool if b.step_texts]
    if not pool:
        return solution(ctx, None, **trace)
    if select == "weighted_vote":
        found = votes(ctx, [b for b, _ in pool], [w for _, w in pool])
        if found:
            mass = sum(t.weight for t in found) or 1.0
            return solution(
                ctx,
                found[0].best,
                answer=found[0].answer,
                support=found[0].members,  # the particles whose answer won carry it
                votes={t.answer: t.weight / mass for t in found},
                **trace,
            )
    best = max((b for b, _ in pool), key=score_of)
    return solution(ctx, best, **trace)


class ParticleFilter(Strategy):
    name = "particle_filter"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        smc = Smc(self.config, ctx, random.Random(ctx.rng.getrandbits(32)))
        async for _ in smc.steps():
            yield self._choose(ctx, smc)
        yield self._choose(ctx, smc, ended_by=smc.stop)

    def _choose(self, ctx: SolveContext, smc: Smc, **trace: Any) -> Solution:
        return choose(
            ctx,
            smc.population,
            smc.weights(),
            self.config.select,
            resamplings=sum(int(h["resampled"]) for h in smc.history),
            ess=[round(h["ess"], 3) for h in smc.history],
            **trace,
        )
