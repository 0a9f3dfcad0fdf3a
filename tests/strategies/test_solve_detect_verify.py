"""solve_detect_verify: when the model knows its answer is ready before it stops
writing, SDV spends less than solving to the end and verifying every solution, at no
loss of accuracy; the saving is the detector's (it vanishes when readiness cannot be
detected); verification spends only its share of the budget. And the context's
`extend` / `ask` that it is built on."""

from __future__ import annotations

from typing import Any

import sim

from ttc.budget import Budget
from ttc.strategies.best_of_n import BestOfN, BestOfNConfig
from ttc.strategies.solve_detect_verify import SolveDetectVerify, SolveDetectVerifyConfig
from ttc.testing import StrategyConformance

# 3 steps right with 0.7 each, then 6 "Check" steps before the answer (overthinking).
# The model knows when its steps are done (P(yes) 0.95 to "ready?", else 0.05); it
# judges 80% of its answers confidently (0.95 / 0.05), the rest barely; a revision after
# a rejection is right with 0.5 (0.95 when it was right).
EARLY = dict(steps=3, q=0.7, overthink=6, ready=0.95, sure=0.8, fix=0.5, keep=0.95)
REWARD = sim.SimRewardConfig(noise=0.1)


class TestSolveDetectVerify(StrategyConformance):
    strategy = SolveDetectVerify(SolveDetectVerifyConfig(rounds=2))


def _sdv(**cfg: Any) -> SolveDetectVerify:
    return SolveDetectVerify(SolveDetectVerifyConfig(**cfg))


def test_sdv_spends_less_than_verifying_all_at_equal_accuracy_when_completion_shows_early() -> None:
    problems = sim.make_problems(200, seed=91, **EARLY)  # type: ignore[arg-type]
    env = sim.Env(reward=REWARD)
    sdv = sim.solve_all(_sdv(rounds=4), problems, env)
    to_the_end = sim.solve_all(_sdv(rounds=4, detect=False), problems, env)
    verify_all = sim.solve_all(BestOfN(BestOfNConfig(n=4, max_tokens=400)), problems, env)
    # Measured on these 200 problems: accuracy SDV 0.905, without the detector 0.925,
    # best-of-4 verified by the reward 0.81; tokens 147 / 482 / 862 per problem.
    tol = sim.binomial_tolerance(0.9, 200, z=2.0)
    assert sim.accuracy(sdv) >= sim.accuracy(verify_all) - tol
    assert sim.accuracy(sdv) >= sim.accuracy(to_the_end) - tol
    tokens = {k: sim.mean_spent(o, "tokens") for k, o in (("sdv", sdv), ("end", to_the_end))}
    assert tokens["sdv"] <= 0.5 * tokens["end"]
    assert tokens["sdv"] <= 0.25 * sim.mean_spent(verify_all, "tokens")
    assert sim.mean_spent(sdv, "flops") < sim.mean_spent(verify_all, "flops")
    detected = [b for o in sdv for b in o.ctx.branches.values() if b.extra.get("detected")]
    assert len(detected) >= len(problems)  # every first solution was cut at its checks
    assert all("Check" not in b.text.split("Revised solution:")[-1] for b in detected)
    modes = [
        b.extra["verdict"]["mode"]
        for o in sdv
        for b in o.ctx.branches.values()
        if "verdict" in b.extra
    ]
    assert "fast" in modes and "slow" in modes


def test_no_saving_when_readiness_cannot_be_detected() -> None:
    problems = sim.make_problems(100, seed=92, **(EARLY | {"ready": 0.5}))  # type: ignore[arg-type]
    env = sim.Env(reward=REWARD)
    sdv = sim.solve_all(_sdv(rounds=4), problems, env)
    to_the_end = sim.solve_all(_sdv(rounds=4, detect=False), problems, env)
    assert not any(b.extra.get("detected") for o in sdv for b in o.ctx.branches.values())
    # it writes every check step, like solving to the end (and pays for asking)
    assert sim.mean_spent(sdv, "tokens") >= sim.mean_spent(to_the_end, "tokens")


def test_verification_spends_only_its_share_of_each_unit() -> None:
    problems = sim.make_problems(30, seed=93, **EARLY)  # type: ignore[arg-type]
    budget = Budget(tokens=260, reward_calls=4)
    out = sim.solve_all(
        _sdv(rounds=4, verify_share=0.25), problems, sim.Env(reward=REWARD, budget=budget)
    )
    for o in out:
        spent = o.solution.trace["spent"]
        assert spent["verify"]["tokens"] <= 65 and spent["solve"]["tokens"] <= 195
        assert spent["verify"]["tokens"] + spent["solve"]["tokens"] == o.spent.tokens
        # only verification scores; its share of 4 calls is 1
        assert spent["verify"]["reward_calls"] == o.spent.reward_calls <= 1
    # no verify share at all: every solution stands unverified after the first round
    out = sim.solve_all(_sdv(verify_share=0.0), problems, sim.Env(reward=REWARD, budget=budget))
    assert all(o.solution.trace.get("unverified") for o in out)


def test_extend_writes_text_and_ask_reads_the_models_probability() -> None:
    (problem,) = sim.make_problems(1, seed=94, **EARLY)  # type: ignore[arg-type]
    seen: dict[str, Any] = {}

    async def body(ctx: Any) -> None:
        (step,) = await ctx.generate([ctx.root], sim_step())
        seen["written"] = w = ctx.extend(step, "\nIs the final answer ready (yes/no):")
        assert w.parent_id == step.id and w.new_tokens == 0 and w.extra["written"]
        assert w.text == step.text + "\nIs the final answer ready (yes/no):"
        assert len(w.token_ids) == len(w.text)  # the sim's tokens are characters
        seen["early"] = await ctx.ask(step, "\nIs the final answer ready (yes/no):")
        node = step
        for _ in range(2):  # the other two steps
            (node,) = await ctx.generate([node], sim_step())
        seen["late"] = await ctx.ask(node, "\nIs the final answer ready (yes/no):")
        seen["leaves"] = ctx.leaves()

    spent = sim.run_raw(body, problem, sim.Env())
    assert abs(seen["early"]["yes"] - 0.05) < 1e-6 and abs(seen["late"]["yes"] - 0.95) < 1e-6
    assert abs(sum(seen["late"].values()) - 1.0) < 1e-9
    assert spent.samples == 5 and seen["leaves"] == []  # an answer to a question is no solution


def sim_step() -> Any:
    from ttc.types import Sampling

    return Sampling(n=1, max_tokens=64, stop=("\n\n",))
