"""`solve_detect_verify`: solve, detect completion early, verify fast or slow, revise.

Zhong et al., "Solve-Detect-Verify: Inference-Time Scaling with Flexible Generative
Verifier" (2025), the SDV pipeline with the FlexiVe verifier. Reasoning models often
know their answer long before they stop writing ("overthinking"); SDV stops them there
and spends the tokens saved on verification and on a revision where it is needed:

1. **Solve.** The solver writes one step at a time (a step ends at `step_delimiter`).
2. **Detect.** At each step boundary a cheap detector asks the model whether its answer
   is ready (`detect_prompt`, read from the next token's probabilities through
   `Sampling.top_logprobs`: one greedy token, its prompt a prefix-cache hit). When
   P(yes) reaches `detect_threshold`, solving stops and the model states its answer
   after `answer_cue` (at most `answer_tokens` tokens). A solution that ends by itself
   (end of sequence), or reaches `max_steps`, is complete too.
3. **Verify** (FlexiVe's flexible budget). The fast mode asks the model whether the
   answer is correct (`verify_prompt`, one token). When its confidence,
   max(P(yes), P(no)), reaches `fast_confidence`, its verdict stands; otherwise the slow
   mode decides: the reward model scores the whole solution and accepts it at a score of
   `accept` or more.
4. **Revise.** An accepted solution is the answer. A rejected one is fed back: the
   solver continues after `feedback_prompt` (the rejected attempt stays in its prompt)
   and writes a revised solution, up to `rounds` solutions in all. When none is
   accepted, the one the verifier rated highest is the answer.

The split between solving and verifying is `verify_share`: every enforced budget unit
but `seconds` (wall time cannot be reserved) is divided, verification spending at most
`verify_share` of it and solving (detection included) the rest, each through its own
sub-budget of the problem's ledger; `trace["spent"]` says what each phase spent. When
verification's share is spent, the current solution is the answer unverified.

Nodes carry what was decided: `extra["ready"]` (the detector's P(yes) after a step),
`extra["detected"]` on an answer the detector cut short, `extra["verdict"]` (mode, P or
score, accepted) on each complete solution.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ttc.budget import INT_UNITS, UNITS, Unit
from ttc.config import bounded
from ttc.errors import BackendError
from ttc.interfaces import LimitedContext, SolveContext, Strategy
from ttc.strategies.common import StepSearchConfig, mark_steps, solution, step_sampling
from ttc.types import Branch, Problem, Sampling, Solution

T = TypeVar("T")
DETECT_PROMPT = "\nIs the final answer ready (yes/no):"
VERIFY_PROMPT = "\nIs the answer above correct (yes/no):"
ANSWER_CUE = "\n\nSo the answer is \\boxed{"
RETRIES = 3
"""Tries of a call whose only request failed (SDV follows one solution at a time, so a
failed request would otherwise end the search)."""
FEEDBACK_PROMPT = "\n\nThe answer above is wrong. Find the mistake.\nRevised solution:\n"


@dataclass
class SolveDetectVerifyConfig(StepSearchConfig):
    name: str = "solve_detect_verify"
    rounds: int = bounded(3, ge=1, help="complete solutions at most (first + revisions)")
    detect: bool = True
    """Ask at every step boundary whether the answer is ready (False: solve to the end)."""
    detect_prompt: str = DETECT_PROMPT
    detect_threshold: float = bounded(0.7, ge=0.0, le=1.0, help="P(ready) that stops solving")
    answer_cue: str = ANSWER_CUE
    """Written after a step the detector found ready; the model completes the answer."""
    answer_tokens: int = bounded(32, ge=1, help="tokens of an answer after the cue")
    verify_prompt: str = VERIFY_PROMPT
    fast_confidence: float = bounded(
        0.8, ge=0.5, le=1.0, help="fast verdict stands at max(P(yes), P(no)) >= this"
    )
    accept: float = bounded(0.5, ge=0.0, le=1.0, help="slow mode: reward score that accepts")
    feedback_prompt: str = FEEDBACK_PROMPT
    """Written after a rejected solution; the solver's revision follows it."""
    verify_share: float = bounded(
        0.3, ge=0.0, le=1.0, help="share of each enforced budget unit for verification"
    )


class SolveDetectVerify(Strategy):
    name = "solve_detect_verify"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        solver, verifier, limits = self._split(ctx)
        rated: list[tuple[float, Branch]] = []
        last: list[Solution] = []
        try:
            async for current in self._rounds(ctx, solver, verifier, limits, rated):
                last[:] = [current]
                yield current
        finally:  # the phases' spending, the calls after the last answer included
            if last and limits:
                last[0].trace["spent"] = self._spent(solver, verifier, limits)

    async def _rounds(
        self,
        ctx: SolveContext,
        solver: SolveContext,
        verifier: LimitedContext | None,
        limits: dict[str, float],
        rated: list[tuple[float, Branch]],
    ) -> AsyncIterator[Solution]:
        c = self.config
        start = ctx.root
        for rnd in range(c.rounds):
            done = start
            async for done in self._solve(solver, start):
                if not rated:  # nothing verified yet: the partial solution is the answer
                    yield solution(ctx, done, rounds=rnd, partial=True)
            done.extra["round"] = rnd
            verdict: dict[str, Any] | None = None
            if verifier is None:  # nothing to split: a refusal ends the search
                verdict = await self._verify(ctx, done)
            else:
                async with verifier as v:  # a refusal by verification's share ends this block
                    verdict = await self._verify(v, done)
            if verdict is None:  # verification's share is spent: the answer stands unverified
                done.extra["verdict"] = {"mode": "unverified"}
                rated.append((0.5, done))
                yield self._best(ctx, rated, rounds=rnd + 1, unverified=True)
                return
            done.extra["verdict"] = verdict
            rated.append((verdict["p"], done))
            yield self._best(ctx, rated, rounds=rnd + 1, accepted=verdict["accepted"])
            if verdict["accepted"]:
                return
            start = solver.extend(done, c.feedback_prompt)

    def _split(
        self, ctx: SolveContext
    ) -> tuple[SolveContext, LimitedContext | None, dict[str, float]]:
        """Sub-budgets for solving and verifying: each enforced unit but `seconds` split by
        `verify_share` (whole numbers for counted units)."""
        share = self.config.verify_share
        solve: dict[str, float] = {}
        verify: dict[str, float] = {}
        for unit in UNITS:
            left = ctx.remaining(unit)
            if left is None or unit == Unit.SECONDS:
                continue
            part = left * share
            if unit in INT_UNITS:
                part = float(int(part))
            verify[unit.value] = part
            solve[unit.value] = left - part
        if not verify:
            return ctx, None, {}
        limits = {f"solve.{k}": v for k, v in solve.items()} | {
            f"verify.{k}": v for k, v in verify.items()
        }
        return ctx.limit(**solve), ctx.limit(**verify), limits

    @staticmethod
    def _spent(
        solver: SolveContext, verifier: LimitedContext | None, limits: dict[str, float]
    ) -> dict[str, dict[str, float]]:
        out: dict[str, dict[str, float]] = {"solve": {}, "verify": {}}
        for key, limit in limits.items():
            phase, unit = key.split(".", 1)
            left = (solver if phase == "solve" or verifier is None else verifier).remaining(unit)
            out[phase][unit] = limit - (left or 0.0)
        return out

    async def _solve(self, ctx: SolveContext, start: Branch) -> AsyncIterator[Branch]:
        """One complete solution from `start`, step by step (each step yielded; the last
        is complete), stopped early where the detector finds the answer ready."""
        c = self.config
        step = step_sampling(
            n=1,
            temperature=c.temperature,
            top_p=c.top_p,
            step_delimiter=c.step_delimiter,
            step_tokens=c.step_tokens,
        )
        node = start
        for _ in range(c.max_steps):
            (node,) = await _again(ctx.generate, [node], step)
            mark_steps([node])
            yield node
            if node.finished:
                return
            if c.detect:
                ready = (await _again(ctx.ask, node, c.detect_prompt))["yes"]
                node.extra["ready"] = round(ready, 4)
                if ready >= c.detect_threshold:
                    answer = await self._answer(ctx, node)
                    answer.extra["detected"] = True
                    yield answer
                    return
        yield await self._answer(ctx, node)  # out of steps: state the answer now

    async def _answer(self, ctx: SolveContext, node: Branch) -> Branch:
        c = self.config
        cue = ctx.extend(node, c.answer_cue)
        sampling = Sampling(n=1, temperature=c.temperature, max_tokens=c.answer_tokens)
        (answer,) = await _again(ctx.generate, [cue], sampling)
        answer.finished = True
        return answer

    async def _verify(self, ctx: SolveContext, done: Branch) -> dict[str, Any]:
        """FlexiVe's flexible verification: the fast verdict where it is confident, else
        the slow one (the reward model over the whole solution)."""
        c = self.config
        p = (await _again(ctx.ask, done, c.verify_prompt))["yes"]
        if max(p, 1.0 - p) >= c.fast_confidence:
            return {"mode": "fast", "p": round(p, 4), "accepted": p >= 0.5}
        (score,) = await ctx.score([done])
        score = max(score, 0.0)  # a failed scoring (-inf) rejects
        return {
            "mode": "slow",
            "p": round(score, 4),
            "fast_p": round(p, 4),
            "accepted": score >= c.accept,
        }

    @staticmethod
    def _best(ctx: SolveContext, rated: list[tuple[float, Branch]], **trace: Any) -> Solution:
        """The solution the verifier rated highest (the latest on ties)."""
        _, best = max(reversed(rated), key=lambda pair: pair[0])
        return solution(ctx, best, **trace)


async def _again(call: Callable[..., Awaitable[T]], *args: Any) -> T:
    """`await call(*args)`, tried again (with fresh seeds) when its only request failed."""
    for attempt in range(RETRIES):
        try:
            return await call(*args)
        except BackendError:
            if attempt == RETRIES - 1:
                raise
    raise AssertionError("unreachable")
