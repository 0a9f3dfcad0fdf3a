"""Search integrity: finished particles keep their weight, a failed score is never
rewarded, stepwise chains get their own allowance."""

from __future__ import annotations

import asyncio

import sim

from ttc.budget import Budget
from ttc.interfaces import Strategy
from ttc.strategies.a_star import AStar, AStarConfig
from ttc.strategies.beam_search import BeamSearch, BeamSearchConfig
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
from ttc.strategies.particle_filter import ParticleFilter, ParticleFilterConfig
from ttc.strategies.particle_gibbs import ParticleGibbs, ParticleGibbsConfig
from ttc.strategies.rebase import Rebase, RebaseConfig
from ttc.types import Branch, Sampling

# Right solutions take 2 steps; a wrong turn takes a detour of 4 more steps before its
# (wrong) answer, so right particles finish while wrong ones are still moving.
SHORT_RIGHT = dict(steps=2, q=0.6, detour=4, wrong="1:1")
# A weak process reward: wrong steps score 0.6 against 0.9 for right ones.
WEAK = sim.SimRewardConfig(right=0.9, wrong=0.6)


def _finished_right(o: sim.Outcome, branches: list[Branch]) -> list[Branch]:
    return [b for b in branches if b.finished and o.ctx.answer(b) == o.problem.reference]


def test_finished_particles_keep_their_weight_and_survive_to_the_end() -> None:
    problems = sim.make_problems(60, seed=81, **SHORT_RIGHT)  # type: ignore[arg-type]
    cfg = ParticleFilterConfig(particles=8, max_steps=10)
    out = sim.solve_all(ParticleFilter(cfg), problems, sim.Env(reward=WEAK))
    reached = survived = 0
    for o in out:
        nodes = list(o.ctx.branches.values())
        if not _finished_right(o, nodes):
            continue
        reached += 1
        # the final population is what `selected` marks (the winning answer's particles)
        final = [b for b in nodes if b.selected]
        survived += bool(_finished_right(o, final))
    assert reached >= 50
    # A right finished particle scores 0.9 against 0.1 for a moving wrong one: it must
    # not be resampled away because it stopped moving (it was, at weight exp(0)).
    assert survived >= 0.95 * reached
    assert sim.accuracy(out) >= 0.9


def test_particle_gibbs_keeps_finished_particles_too() -> None:
    problems = sim.make_problems(40, seed=82, **SHORT_RIGHT)  # type: ignore[arg-type]
    cfg = ParticleGibbsConfig(particles=6, iterations=2, max_steps=10)
    out = sim.solve_all(ParticleGibbs(cfg), problems, sim.Env(reward=WEAK))
    assert sim.accuracy(out) >= 0.9


# Scoring fails for every branch whose newest step is a wrong one.
FAILING = sim.SimRewardConfig(fail_on=": err")


def _chosen_path_is_scored(o: sim.Outcome) -> bool:
    b = o.solution.branch  # None: every first step failed scoring, nothing to answer
    return b is None or all(n.scored for n in o.ctx.path(b))


def test_a_branch_whose_newest_step_failed_scoring_ranks_last() -> None:
    problems = sim.make_problems(40, seed=83, steps=3, q=0.6)
    strategies: list[Strategy] = [
        AStar(AStarConfig(expansions=3, heuristic="last", horizon=4)),
        ParticleFilter(ParticleFilterConfig(particles=6)),
        BeamSearch(BeamSearchConfig(beam_width=2, expansions=3)),
        Rebase(RebaseConfig(width=6)),
    ]
    for strategy in strategies:
        out = sim.solve_all(strategy, problems, sim.Env(reward=FAILING))
        # Only right steps get a score; a search that let an unscored step inherit its
        # parent's score would prefer wrong steps (A*: the parent's g beats any sibling's).
        assert all(_chosen_path_is_scored(o) for o in out), strategy.name
        assert sim.accuracy(out) >= 0.9, strategy.name
        for o in out:
            for b in o.ctx.branches.values():
                if b.step_texts and ": err" in b.step_texts[-1]:
                    assert b.score is None, strategy.name


def test_stepwise_best_of_n_gives_each_chain_its_own_allowance() -> None:
    # 2 to 6 steps of ~20 tokens plus a ~28-token answer: long chains reach max_tokens,
    # short ones finish; none may be cut because another chain is nearly full.
    problems = sim.make_problems(20, seed=84, steps=2, q=0.9, spread=4)
    cfg = BestOfNConfig(n=6, step_delimiter="\n\n", max_tokens=120, max_steps=7)
    out = sim.solve_all(BestOfN(cfg), problems, sim.Env())
    for o in out:
        heads = [b for b in o.ctx.branches.values() if b.finished]
        assert len(heads) == 6
        for b in heads:
            # a chain ends at its answer or at its own max_tokens, never earlier
            ended = b.finish_reason == "eos" or len(b.token_ids) >= 120
            assert ended, (b.finish_reason, len(b.token_ids), b.text[-40:])
            # and every node but its last is a whole step (no cut at another's allowance)
            path = o.ctx.path(b)
            assert all(n.step_texts[-1].endswith("\n\n") for n in path[:-1])


def test_concurrent_generate_calls_of_one_problem_cannot_overspend_together() -> None:
    # 50-step solutions: every sample runs to max_tokens.
    (problem,) = sim.make_problems(1, seed=85, steps=50, q=0.9)

    async def strategy(ctx: object) -> None:
        sampling = Sampling(n=1, max_tokens=100)
        await asyncio.gather(
            *(ctx.generate([ctx.root], sampling) for _ in range(3)),  # type: ignore[attr-defined]
            return_exceptions=True,
        )

    spent = sim.run_raw(strategy, problem, sim.Env(budget=Budget(tokens=100)))
    assert spent.tokens <= 100
