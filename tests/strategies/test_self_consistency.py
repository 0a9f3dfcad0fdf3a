"""self_consistency converges to the plurality answer, right or wrong."""

from __future__ import annotations

import sim

from ttc.strategies.self_consistency import SelfConsistency, SelfConsistencyConfig

# One-shot answers (steps=0): right with q = 0.45; wrong ones are +1, +2, +3 with weights
# 0.5, 0.3, 0.2 of the rest, so P = 0.45, 0.275, 0.165, 0.11: the reference is the plurality.
PLURAL = dict(steps=0, q=0.45, wrong="1:0.5,2:0.3,3:0.2")


def _sc(n: int, **kw: object) -> SelfConsistency:
    return SelfConsistency(SelfConsistencyConfig(n=n, **kw))  # type: ignore[arg-type]


def test_agreement_with_the_plurality_grows_with_n_towards_one() -> None:
    problems = sim.make_problems(300, seed=21, **PLURAL)  # type: ignore[arg-type]
    acc = {
        n: sim.accuracy(sim.solve_all(_sc(n), problems, sim.Env(reward=None)))
        for n in (1, 8, 32, 128)
    }
    # n=1 is one sample: 0.45 within 4 standard errors of 300 problems.
    assert abs(acc[1] - 0.45) <= sim.binomial_tolerance(0.45, 300)
    assert acc[1] < acc[8] < acc[32] <= acc[128]
    # Normal approximation of the vote margin: P(plurality wins at 128) ~ 0.99; allow 0.95.
    assert acc[128] >= 0.95


def test_it_follows_a_wrong_plurality() -> None:
    # Right with 0.25; "+1" with 0.45: the vote must converge to the wrong answer.
    problems = sim.make_problems(200, steps=0, q=0.25, wrong="1:0.6,2:0.4", seed=22)
    out = sim.solve_all(_sc(128), problems, sim.Env(reward=None))
    plural = sum(o.solution.answer == str(int(o.problem.reference or 0) + 1) for o in out)
    assert plural / len(out) >= 0.95
    o = out[0]
    voters = [b for b in o.ctx.branches.values() if b.selected]
    assert voters and all(o.ctx.answer(b) == o.solution.answer for b in voters)
    assert o.solution.trace["votes"][o.solution.answer] == len(voters)


def test_weighted_vote_needs_a_reward_and_uses_it() -> None:
    assert _sc(4).uses_reward is False
    assert _sc(4, weighted=True).uses_reward is True
    # The wrong answer "+1" is the plurality (0.45 vs 0.25), but an exact-ish reward
    # weighs the right answer's votes 0.9 against 0.1: the weighted vote picks the right
    # one unless it was never sampled, i.e. it reaches best-of-N's 1 - 0.75^16 = 0.99.
    problems = sim.make_problems(200, steps=0, q=0.25, wrong="1:0.6,2:0.4", seed=23)
    plain = sim.solve_all(_sc(16), problems, sim.Env(reward=None))
    weighted = sim.solve_all(_sc(16, weighted=True), problems, sim.Env())
    assert sim.accuracy(plain) <= 0.3
    assert sim.accuracy(weighted) >= 0.95
    assert all(o.spent.reward_calls == 1 for o in weighted)
