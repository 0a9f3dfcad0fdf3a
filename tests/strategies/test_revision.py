"""revision: a chain of revisions improves with its length when the model's revisions
are better than chance (and does not when they are fresh attempts); the chains are
chains in the tree and their shared prefixes hit the prefix cache."""

from __future__ import annotations

import sim

from ttc.budget import Budget
from ttc.strategies.revision import Revision, RevisionConfig
from ttc.testing import StrategyConformance

# 3 steps right with 0.7 each: one attempt is right with 0.343. A revision of a wrong
# answer is right with 0.5, of a right one with 0.95 (the chain converges to ~0.9).
BETTER = dict(steps=3, q=0.7, fix=0.5, keep=0.95)


class TestRevision(StrategyConformance):
    strategy = Revision(RevisionConfig(attempts=4, chain_length=2))


class TestRevisionVerifier(StrategyConformance):
    strategy = Revision(RevisionConfig(attempts=4, chain_length=2, select="verifier"))


def _one_chain(length: int, problems: list, **env: object) -> list[sim.Outcome]:
    cfg = RevisionConfig(attempts=length, chain_length=length, select="last", max_tokens=200)
    return sim.solve_all(Revision(cfg), problems, sim.Env(**env))  # type: ignore[arg-type]


def test_a_chain_improves_with_its_length_when_revision_beats_chance() -> None:
    problems = sim.make_problems(200, seed=61, **BETTER)  # type: ignore[arg-type]
    acc = {k: sim.accuracy(_one_chain(k, problems)) for k in (1, 2, 4)}
    # Expected 0.343, 0.654, 0.86 (a_{k+1} = 0.95 a_k + 0.5 (1 - a_k)); measured 0.345,
    # 0.665, 0.835 on these 200 problems (fresh attempts instead: 0.345 and 0.32).
    tol = sim.binomial_tolerance(0.5, 200, z=2.0)
    assert acc[2] >= acc[1] + 0.2 and acc[4] >= acc[2] + 0.1, acc
    assert abs(acc[4] - 0.86) <= tol, acc


def test_no_gain_when_a_revision_is_a_fresh_attempt() -> None:
    problems = sim.make_problems(200, seed=61, steps=3, q=0.7)
    acc = {k: sim.accuracy(_one_chain(k, problems)) for k in (1, 4)}
    # the last of k independent attempts is right with 0.343 whatever k
    assert abs(acc[4] - acc[1]) <= sim.binomial_tolerance(0.343, 200, z=3.0), acc
    assert abs(acc[4] - 0.343) <= sim.binomial_tolerance(0.343, 200, z=3.0), acc


def test_revisions_beat_parallel_samples_at_equal_attempts_and_share_prefixes() -> None:
    problems = sim.make_problems(100, seed=62, **BETTER)  # type: ignore[arg-type]
    outs = {}
    for length in (1, 4):
        cfg = RevisionConfig(attempts=8, chain_length=length, select="majority", max_tokens=200)
        outs[length] = sim.solve_all(Revision(cfg), problems, sim.Env())
    assert sim.accuracy(outs[4]) >= sim.accuracy(outs[1]) + 0.2
    for o in outs[4]:
        attempts = [b for b in o.ctx.branches.values() if "revision" in b.extra]
        assert len(attempts) == 8 and {b.extra["chain"] for b in attempts} == {0, 1}
        for b in attempts:  # attempt, instruction, attempt, ...: a chain in the tree
            path = [n for n in o.ctx.path(b) if not n.extra.get("written")]
            assert [n.extra["revision"] for n in path] == list(range(b.extra["revision"] + 1))
            assert len({n.extra["chain"] for n in path}) == 1
    # every round's prompt extends the last one: most of it comes from the prefix cache
    cached = sim.mean_spent(outs[4], "cached_prompt_tokens")
    assert cached > 2 * sim.mean_spent(outs[4], "prefill_tokens")


def test_the_verifier_picks_across_chains() -> None:
    problems = sim.make_problems(100, seed=63, steps=3, q=0.7, fix=0.3, keep=0.9)
    cfg = dict(attempts=4, chain_length=2, max_tokens=200)
    last = sim.solve_all(Revision(RevisionConfig(**cfg)), problems, sim.Env())  # type: ignore[arg-type]
    verified = sim.solve_all(
        Revision(RevisionConfig(select="verifier", **cfg)),  # type: ignore[arg-type]
        problems,
        sim.Env(reward=sim.SimRewardConfig(noise=0.1), budget=Budget(reward_calls=2)),
    )
    assert sim.accuracy(verified) >= sim.accuracy(last) + 0.1
    for o in verified:
        assert all(b.score is not None for b in o.ctx.branches.values() if "revision" in b.extra)
