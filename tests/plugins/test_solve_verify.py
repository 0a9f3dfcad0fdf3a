"""Solutions vs verifications: the judge's generative mode with V verifications per
solution (their verdicts aggregated) and the `solve_verify` allocator that splits a
budget into S solutions x V verifications."""

from __future__ import annotations

import asyncio
import math
import random
from typing import Any

import pytest

from ttc import testing
from ttc.budget import Budget
from ttc.errors import ConfigError
from ttc.interfaces import Backend
from ttc.plugins.allocators.solve_verify import (
    SolveVerifyAllocator,
    SolveVerifyAllocatorConfig,
    split,
)
from ttc.plugins.rewards.judge import Judge, JudgeConfig
from ttc.scheduler import Scheduler
from ttc.strategies.best_of_n import BestOfN
from ttc.strategies.self_consistency import SelfConsistency
from ttc.types import GenerateResult, Generation, Problem, ScoreRequest, Usage

P_RIGHT_SAYS_RIGHT = 0.8  # a verification of a right solution says "looks right"
P_WRONG_SAYS_RIGHT = 0.3  # ... of a wrong one
VERDICT_YES = {"looks right.": 0.9, "looks wrong.": 0.2}  # P(Yes) after each verification


class VerifierBackendDouble(Backend):
    """The policy as a noisy generative verifier: a verification says "looks right." with
    a probability that depends on whether the solution is right (seeded per sample; a
    greedy one is one fixed draw per solution, a systematic opinion), and
    the verdict after it reads P(Yes) from that verification. Records every call."""

    name = "verifier_double"

    def __init__(self) -> None:
        super().__init__(None)
        self.calls: list[tuple[int, int, float]] = []  # (requests, n, temperature)
        self.written: list[str] = []  # every verification text, in order

    def render(self, problem: Problem) -> str:
        return "U: " + problem.messages[-1]["content"] + "\nA:"

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 250 for c in text]

    def decode(self, token_ids: Any) -> str:
        return "".join(chr(t) for t in token_ids)

    def generate_batch(self, requests: Any) -> list[GenerateResult]:
        first = requests[0].sampling
        self.calls.append((len(requests), first.n, first.temperature))
        out = []
        for r in requests:
            s = r.sampling
            if s.max_tokens == 1:  # the verdict question
                last = r.prompt.rsplit("\nA:", 1)[-1]
                p = next((v for k, v in VERDICT_YES.items() if k in last), 0.5)
                top = ((ord("Y"), math.log(p)), (ord("N"), math.log(1 - p)))
                top = tuple(sorted(top, key=lambda t: -t[1]))
                gens: tuple[Generation, ...] = (
                    Generation(
                        token_ids=(top[0][0],),
                        text=chr(top[0][0]),
                        finish_reason="length",
                        logprobs=(top[0][1],),
                        top_logprobs=(top,),
                    ),
                )
            else:
                right = "wrong" not in r.prompt
                p = P_RIGHT_SAYS_RIGHT if right else P_WRONG_SAYS_RIGHT
                # greedy: one fixed opinion per solution (as noisy as one sample)
                seeds = (
                    [f"greedy:{r.prompt}"]
                    if s.temperature == 0
                    else [f"{s.seed}:{r.prompt}:{j}" for j in range(s.n)]
                )
                gens = tuple(
                    _text("looks right." if random.Random(k).random() < p else "looks wrong.")
                    for k in seeds
                )
                self.written += [g.text for g in gens]
            usage = Usage(
                prompt_tokens=len(r.prompt_token_ids),
                completion_tokens=sum(len(g.token_ids) for g in gens),
            )
            out.append(GenerateResult(generations=gens, usage=usage))
        return out


def _text(text: str) -> Generation:
    return Generation(token_ids=tuple(ord(c) for c in text), text=text, finish_reason="eos")


def finished(pid: str, solution: str, *, verifications: int | None = None) -> ScoreRequest:
    return ScoreRequest(
        problem=Problem(id=pid, prompt=f"Problem {pid}: what is 2 + 2?"),
        prompt="",
        steps=(solution,),
        finished=True,
        verifications=verifications,
    )


def scores(judge: Judge, requests: list[ScoreRequest]) -> list[Any]:
    async def go() -> list[Any]:
        scheduler = Scheduler(judge.backend, judge, max_wait_s=0.0)
        return [o.result for o in await scheduler.score(requests)]  # type: ignore[union-attr]

    return asyncio.run(go())


def judge(**kw: Any) -> Judge:
    cfg = JudgeConfig(mode="generative", yes_words=["Y"], no_words=["N"], **kw)
    return Judge(cfg, backend=VerifierBackendDouble())


def test_v_verifications_are_samples_of_one_request_and_their_verdicts_are_averaged() -> None:
    j = judge(verifications=4, verify_max_tokens=16, verify_tokens=1000)
    (res,) = scores(j, [finished("p", "Step 1: right.")])
    backend = j.backend
    assert isinstance(backend, VerifierBackendDouble)
    # one request of 4 samples at the verification temperature, then 4 verdict questions
    assert backend.calls == [(1, 4, 0.7), (4, 1, 0.0)]
    (verify, *verdicts) = res.passes
    assert len(verdicts) == 4
    written = verify.decode
    assert written == j.verify_spent["p"] and written >= 4 * len("looks right.")
    # the score is the mean of the verdicts read after each verification
    assert len(backend.written) == 4
    expected = sum(VERDICT_YES[t] for t in backend.written) / 4
    assert res.step_scores[-1] == pytest.approx(expected)
    assert 0.2 < expected < 0.9 or len(set(backend.written)) == 1


def test_vote_counts_the_verdicts_that_say_yes() -> None:
    mean = judge(verifications=6, verify_tokens=10_000)
    vote = judge(verifications=6, verify_tokens=10_000, verdicts="vote")
    (m,) = scores(mean, [finished("p", "Step 1: right.")])
    (v,) = scores(vote, [finished("p", "Step 1: right.")])
    # same seeds, same verifications: k of 6 say yes (P 0.9), the rest no (P 0.2)
    k = round((m.step_scores[-1] - 0.2) / 0.7 * 6)
    assert m.step_scores[-1] == pytest.approx((0.9 * k + 0.2 * (6 - k)) / 6)
    assert v.step_scores[-1] == pytest.approx(k / 6)


def test_a_request_may_ask_for_its_own_number_of_verifications() -> None:
    j = judge(verifications=1, verify_tokens=10_000)
    scores(j, [finished("p", "Step 1: right.", verifications=3)])
    backend = j.backend
    assert isinstance(backend, VerifierBackendDouble)
    assert backend.calls[0] == (1, 3, 0.7)
    j = judge(verifications=1, verify_tokens=10_000)
    scores(j, [finished("q", "Step 1: right.")])
    assert j.backend.calls[0] == (1, 1, 0.0)  # type: ignore[attr-defined]  # V = 1: greedy


def test_worst_case_covers_all_v_verifications_and_the_verify_budget_holds_them_all() -> None:
    j = judge(verifications=4, verify_max_tokens=16, verify_tokens=1000)
    reqs = [finished("p", "Step 1: right."), finished("p", "Step 1: wrong.")]
    worst = j.worst_case(reqs)
    assert len(worst) == 2 * (4 + 4)
    res = scores(j, reqs)
    assert 0 < sum(r.tokens for r in res) <= sum(p.tokens for p in worst)
    # 4 verifications of 16 tokens do not fit in 40: the solution question instead
    small = judge(verifications=4, verify_max_tokens=16, verify_tokens=40)
    scores(small, [finished("p", "Step 1: right.")])
    assert small.backend.calls == [(1, 1, 0.0)]  # type: ignore[attr-defined]
    assert small.verify_spent["p"] == 0


def test_more_verifications_rank_a_right_solution_above_a_wrong_one_more_often() -> None:
    """The verifier's claim: averaging V noisy verdicts separates right from wrong."""

    def ranked_right(v: int) -> float:
        j = judge(verifications=v, verify_tokens=100_000)
        wins = 0
        pairs = 80
        for i in range(pairs):
            right, wrong = scores(
                j, [finished(f"r{i}", "Step 1: right."), finished(f"w{i}", "Step 1: wrong.")]
            )
            a, b = right.step_scores[-1], wrong.step_scores[-1]
            wins += 1.0 if a > b else 0.5 if a == b else 0.0
        return wins / pairs

    one, eight = ranked_right(1), ranked_right(8)
    # V = 1: right above wrong when the verdicts differ the right way (~0.62-0.75)
    assert eight > one + 0.1 and eight > 0.85, (one, eight)


# -- the split ---------------------------------------------------------------------------


def test_split_spends_the_budget_and_grows_solutions_faster_than_verifications() -> None:
    last = (0, 0)
    for budget in (256, 512, 2048, 8192, 32768, 131072):
        s, v = split(budget, solution_tokens=256, verify_tokens=256)
        assert s * (256 + v * 256) <= budget
        assert s >= last[0] and v >= last[1]
        last = (s, v)
    small = split(300, solution_tokens=256, verify_tokens=256)
    assert small == (1, 0)  # one solution's worth: no verification
    s_lo, v_lo = split(2048, solution_tokens=256, verify_tokens=256)
    s_hi, v_hi = split(131072, solution_tokens=256, verify_tokens=256)
    assert s_hi / s_lo > v_hi / max(v_lo, 1)
    assert split(4096, solution_tokens=256, verify_tokens=128, verifications=3) == (
        4096 // (256 + 3 * 128),
        3,
    )


class RecordingReward(testing.SyntheticReward):  # type: ignore[misc]
    """The synthetic reward, recording how many verifications each request asked for."""

    asked: list[int | None] = []

    def score_batch(self, requests: Any) -> Any:
        type(self).asked.extend(r.verifications for r in requests)
        return super().score_batch(requests)


def test_the_allocator_solves_with_s_solutions_each_verified_v_times() -> None:
    budget = Budget(tokens=4000)
    cfg = SolveVerifyAllocatorConfig(solution_tokens=100, verify_tokens=100)
    allocator = SolveVerifyAllocator(cfg, budget)
    s, v = split(4000, solution_tokens=100, verify_tokens=100)
    assert (allocator.solutions, allocator.verifications) == (s, v) and v >= 2
    assert isinstance(allocator.strategy, BestOfN)
    assert allocator.strategy.config.n == s and allocator.strategy.config.verifications == v
    RecordingReward.asked = []
    problems = [testing.synthetic_problem(i) for i in range(3)]
    out = testing.solve_all(
        SelfConsistency(_sc_config()),  # replaced by the allocator's plan
        problems,
        backend=testing.ScriptedBackend(testing.ScriptedBackendConfig()),
        task=testing.SyntheticTask(testing.SyntheticTaskConfig()),
        reward=RecordingReward(testing.SyntheticRewardConfig()),
        allocator=allocator,
    )
    assert RecordingReward.asked and set(RecordingReward.asked) == {v}
    for o in out:
        assert len(o.ctx.leaves()) == s
        assert o.ledger.budget.as_dict()["policy"] == {
            "kind": "solve_verify",
            "solutions": s,
            "verifications": v,
            "strategy": "best_of_n",
        }


def _sc_config() -> Any:
    from ttc.strategies.self_consistency import SelfConsistencyConfig

    return SelfConsistencyConfig(n=2)


def test_a_small_budget_is_self_consistency_and_a_verifier_is_required() -> None:
    small = SolveVerifyAllocator(
        SolveVerifyAllocatorConfig(solution_tokens=256), Budget(tokens=700)
    )
    assert isinstance(small.strategy, SelfConsistency) and small.strategy.config.n == 2
    with pytest.raises(ConfigError, match=r"budget\.tokens"):
        SolveVerifyAllocator(SolveVerifyAllocatorConfig(), Budget(samples=8))
