"""The context a strategy solves one problem through.

A strategy never sees the backend, the reward model, batching or the store: it awaits
`ctx.generate(branches, sampling)` and `ctx.score(branches)`. The context turns branches
into requests (continuing from the exact token ids of each branch), sends them through the
scheduler, debits the problem's ledger, records every call, and keeps every branch it
created: the search tree that the store persists.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable, Sequence
from statistics import fmean
from typing import Any, cast

from ttc.budget import Ledger
from ttc.cost import CostModel
from ttc.errors import BackendError, BudgetExceeded, ConfigError
from ttc.interfaces import Task
from ttc.scheduler import Scheduler
from ttc.types import (
    Branch,
    CallRecord,
    GenerateRequest,
    Generation,
    ModelPass,
    Problem,
    Sampling,
    ScoreRequest,
    Solution,
)

AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "last": lambda s: s[-1],
    "min": min,
    "prod": math.prod,
    "mean": fmean,
}


def aggregate(scores: Sequence[float], how: str) -> float | None:
    """One score from per-step scores (`last`, `min`, `prod` or `mean`)."""
    if not scores:
        return None
    return float(AGGREGATES[how](scores))


class SolveContext:
    """Everything one problem's strategy may use."""

    def __init__(
        self,
        *,
        problem: Problem,
        prompt: str,
        prompt_ids: Sequence[int],
        scheduler: Scheduler,
        ledger: Ledger,
        task: Task,
        aggregate: str = "last",
        seed: int = 0,
        on_call: Callable[[CallRecord], None] | None = None,
    ) -> None:
        self.problem = problem
        self.prompt = prompt
        self.prompt_ids = tuple(prompt_ids)
        self.scheduler = scheduler
        self.ledger = ledger
        reward = scheduler.reward
        if reward is not None and not ledger.reward_cost.known:
            # the reward model's FLOPs are charged at its own shape (known once started)
            ledger.reward_cost = CostModel(reward.architecture, hw=ledger.cost.hw)
        self.task = task
        self.aggregate_how = aggregate
        self.rng = random.Random(f"{seed}:{problem.id}")
        self._on_call = on_call
        self.calls: list[CallRecord] = []
        self.failed_branches = 0
        self.root = Branch(id=0, parent_id=None, step=0, token_ids=(), step_texts=())
        self.branches: dict[int, Branch] = {0: self.root}

    # -- spending ---------------------------------------------------------------------
    @property
    def budget(self) -> Any:
        return self.ledger.budget

    def remaining(self, unit: str) -> float | None:
        """What is left of an enforced unit (None: not enforced)."""
        return self.ledger.remaining(unit)

    @property
    def has_reward(self) -> bool:
        return self.scheduler.reward is not None

    @property
    def wants_logprobs(self) -> bool:
        reward = self.scheduler.reward
        return reward is not None and reward.needs_logprobs

    def path(self, branch: Branch) -> list[Branch]:
        """The branches from the root's first child down to `branch`."""
        chain = []
        node: Branch | None = branch
        while node is not None and node.parent_id is not None:
            chain.append(node)
            node = self.branches.get(node.parent_id)
        return chain[::-1]

    async def generate(self, branches: Sequence[Branch], sampling: Sampling) -> list[Branch]:
        """Continue every branch `sampling.n` times; return the children, grouped by parent
        in order. Raises `BudgetExceeded` (nothing spent) when the budget cannot cover even
        one token per sequence; `max_tokens` may be lowered to what the budget allows.
        A branch whose request fails is recorded and dropped; when all fail,
        `BackendError` is raised."""
        if not branches:
            return []
        if self.wants_logprobs and not sampling.logprobs:
            sampling = sampling.replace(logprobs=True)
        base = len(self.prompt_ids)
        prompt_lens = [base + len(b.token_ids) for b in branches]
        sequences = len(branches) * sampling.n
        per_sample = self.scheduler.backend.prompt_tokens_per_sample
        try:
            allowed = self.ledger.authorize_generate(
                prompt_lens, sampling.n, sampling.max_tokens, per_sample=per_sample
            )
        except BudgetExceeded as exc:
            self._record("generate", "refused", len(branches), sequences, error=str(exc))
            raise
        if allowed < sampling.max_tokens:
            sampling = sampling.replace(max_tokens=allowed)
        requests = [
            GenerateRequest(
                prompt=self.prompt + b.text,
                prompt_token_ids=self.prompt_ids + b.token_ids,
                sampling=sampling.replace(
                    seed=sampling.seed if sampling.seed is not None else self.rng.getrandbits(31)
                ),
            )
            for b in branches
        ]
        t0 = time.perf_counter()
        outcomes = await self.scheduler.generate(requests)
        latency = time.perf_counter() - t0

        children: list[Branch] = []
        prompt_tokens = cached = completion = ok_sequences = batch = 0
        flops = bytes_moved = 0.0
        errors: list[str] = []
        for parent, plen, out in zip(branches, prompt_lens, outcomes, strict=True):
            if isinstance(out, BaseException):
                errors.append(f"{type(out).__name__}: {out}")
                self.failed_branches += 1
                continue
            result, batch = out.result, max(batch, out.batch_size)
            usage = result.usage
            lens = [len(g.token_ids) for g in result.generations]
            prompt_tokens += usage.prompt_tokens
            cached += usage.cached_prompt_tokens
            completion += usage.completion_tokens or sum(lens)
            ok_sequences += len(result.generations)
            cost = self.ledger.cost
            flops += cost.generation_flops(
                prompt_len=plen,
                computed_prompt=usage.computed_prompt_tokens,
                completion_lens=lens,
                prefills=len(lens) if per_sample else 1,
            )
            bytes_moved += sum(
                cost.decode_bytes(n, context_before=plen, batch=max(out.batch_size, 1))
                for n in lens
            )
            children.extend(self._child(parent, g) for g in result.generations)
        self.ledger.debit_generate(
            sequences=ok_sequences,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=cached,
            completion_tokens=completion,
            flops=flops,
            bytes_moved=bytes_moved,
        )
        self._record(
            "generate",
            "ok" if not errors else "error",
            len(branches),
            sequences,
            batch_size=batch,
            prompt_tokens=prompt_tokens,
            cached_prompt_tokens=cached,
            completion_tokens=completion,
            flops=flops,
            latency_s=latency,
            error="; ".join(errors[:3]) or None,
        )
        if errors and not children:
            raise BackendError(f"every request of the call failed: {errors[0]}")
        if self.ledger.wants_answers:  # an allocator's stop rule reads the answers
            stated = (self.answer(b) for b in children)
            self.ledger.observe_answers([self.normalize(a) for a in stated if a is not None])
        return children

    def _child(self, parent: Branch, g: Generation) -> Branch:
        child = Branch(
            id=len(self.branches),
            parent_id=parent.id,
            step=parent.step + 1,
            token_ids=parent.token_ids + g.token_ids,
            step_texts=(*parent.step_texts, g.text),
            cum_logprob=parent.cum_logprob + (sum(g.logprobs) if g.logprobs else 0.0),
            token_logprobs=g.logprobs or (),
            step_scores=parent.step_scores,
            finished=g.finish_reason != "stop",
            finish_reason=g.finish_reason,
            new_tokens=len(g.token_ids),
        )
        self.branches[child.id] = child
        return child

    async def score(self, branches: Sequence[Branch]) -> list[float]:
        """Score branches with the reward model; store per-step scores on each branch and
        return one aggregated score per branch (see `reward.aggregate`). Steps scored by an
        earlier call are passed as already scored, so incremental reward models score only
        the new ones. The call is authorised against the reward model's worst case
        (`RewardModel.worst_case`) where `reward_tokens`, `flops` or `eflops` is enforced,
        and its passes' FLOPs are charged from the reward model's own shape. A branch whose
        scoring fails keeps `score = None` (it ranks last; its score in the returned list is
        -inf) and the failure is recorded; when every branch fails, `BackendError` is
        raised."""
        reward = self.scheduler.reward
        if reward is None:
            raise ConfigError(
                "this strategy scores branches but no reward model is configured",
                key="reward",
                hint="choose one, e.g. reward=self_certainty (see `ttc plugins`)",
            )
        if not branches:
            return []
        requests = [
            ScoreRequest(
                problem=self.problem,
                prompt=self.prompt,
                steps=b.step_texts,
                scored_steps=min(len(b.step_scores), len(b.step_texts)),
                finished=b.finished,
                step_logprobs=(
                    tuple(n.token_logprobs for n in self.path(b)) if self.wants_logprobs else None
                ),
            )
            for b in branches
        ]
        worst = None
        if self.ledger.bounds_score_work:  # tokenising for the bound is not free: only then
            worst = await asyncio.to_thread(reward.worst_case, requests)
        try:
            self.ledger.authorize_score(worst)
        except BudgetExceeded as exc:
            self._record("score", "refused", len(branches), len(branches), error=str(exc))
            raise
        t0 = time.perf_counter()
        outcomes = await self.scheduler.score(requests)
        latency = time.perf_counter() - t0
        scores: list[float] = []
        tokens = batch = 0
        passes: list[ModelPass] = []
        errors: list[str] = []
        for b, out in zip(branches, outcomes, strict=True):
            if isinstance(out, BaseException):
                errors.append(f"{type(out).__name__}: {out}")
                b.score_error = f"{type(out).__name__}: {out}"
                b.score = None  # ranks last: a failed score is never a reward
                scores.append(-math.inf)
                continue
            batch = max(batch, out.batch_size)
            tokens += out.result.tokens
            passes.extend(out.result.passes)
            b.step_scores = tuple(out.result.step_scores)
            b.score = aggregate(b.step_scores, self.aggregate_how)
            b.score_error = None
            scores.append(-math.inf if b.score is None else b.score)
        flops_before = self.ledger.spent.flops
        self.ledger.debit_score(tokens=tokens, passes=passes)
        self._record(
            "score",
            "ok" if not errors else "error",
            len(branches),
            len(branches),
            batch_size=batch,
            reward_tokens=tokens,
            flops=self.ledger.spent.flops - flops_before,
            latency_s=latency,
            error="; ".join(errors[:3]) or None,
        )
        if len(errors) == len(branches):
            raise BackendError(f"every request of the score call failed: {errors[0]}")
        return scores

    # -- answers ----------------------------------------------------------------------
    def answer(self, branch: Branch) -> str | None:
        """The final answer a branch states (cached on the branch)."""
        if branch.answer is None and branch.step_texts:
            branch.answer = self.task.extract_answer(branch.text)
        return branch.answer

    def normalize(self, answer: str) -> str:
        return self.task.normalize(answer)

    def leaves(self) -> list[Branch]:
        """Finished branches (complete solutions) created so far."""
        return [b for b in self.branches.values() if b.finished]

    # -- records ----------------------------------------------------------------------
    def _record(
        self, kind: Any, status: Any, n_requests: int, n_sequences: int, **fields: Any
    ) -> None:
        call = CallRecord(
            seq=len(self.calls),
            kind=kind,
            status=status,
            n_requests=n_requests,
            n_sequences=n_sequences,
            **fields,
        )
        self.calls.append(call)
        if self._on_call is not None:
            self._on_call(call)


async def run_strategy(strategy: Any, problem: Problem, ctx: SolveContext) -> Solution:
    """Solve `problem` with `strategy`: the one place a search ends.

    A strategy's `solve` is an async generator that yields its current answer whenever
    it has a better one (an anytime search), or a coroutine that returns one. A refused
    call (`BudgetExceeded`, an allocator's early stop included) or a call whose every
    request failed (`BackendError`) ends the search here: the last answer yielded is the
    answer, and `trace["ended_by"]` names the reason (`budget`, `early_stop` or
    `backend_error`). When the strategy yielded nothing, the answer is the vote of the
    finished branches drawn so far (an allocator's probe samples included), if any. A
    backend failure before anything was drawn is re-raised: the problem is then recorded
    as an error with the backend's message, not as a silent "no answer".
    """
    import inspect

    best: Solution | None = None
    ended_by: str | None = None
    try:
        out = strategy.solve(problem, ctx)
        if inspect.isasyncgen(out):
            async for current in out:
                best = cast(Solution, current)
        else:
            best = cast(Solution, await out)
    except BudgetExceeded as exc:
        ended_by = "early_stop" if getattr(exc, "early", False) else "budget"
    except BackendError:
        if not any(b.step_texts for b in ctx.branches.values()):
            raise
        ended_by = "backend_error"
    if best is None or (best.answer is None and ended_by is not None):
        best = _fallback(ctx) or best or Solution(answer=None)
    if ended_by is not None:
        best.trace["ended_by"] = ended_by
    for b in best.support:
        b.selected = True
    if best.branch is not None:
        best.branch.selected = True
    return best


def _fallback(ctx: SolveContext) -> Solution | None:
    """The most frequent answer among the finished branches (None: no branch states
    one); its best-scoring branch carries it."""
    from collections import defaultdict

    groups: dict[str, list[Branch]] = defaultdict(list)
    for b in ctx.leaves():
        a = ctx.answer(b)
        if a is not None:
            groups[ctx.normalize(a)].append(b)
    if not groups:
        return None
    members = max(groups.values(), key=len)  # first seen wins ties (dicts keep order)
    branch = max(members, key=lambda b: b.score if b.score is not None else -math.inf)
    return Solution(answer=ctx.answer(branch), branch=branch, trace={"fallback": "vote"})
