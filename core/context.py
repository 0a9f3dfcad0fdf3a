"""The context a strategy solves one problem through, and the one place a search ends.

A strategy never sees the backend, the reward model, batching, the ledger or the store:
it awaits `ctx.generate(branches, sampling)` and `ctx.score(branches)` (the
`ttc.interfaces.SolveContext` protocol). `ProblemContext` implements it: it turns
branches into requests (continuing from the exact token ids of each branch), has the
problem's ledger authorise (and reserve) each call, sends it through the scheduler,
has the ledger charge what it spent, records every call, and keeps every branch it
created: the search tree that the store persists.

`run_strategy` runs a strategy on a context and is where every search ends (see there).
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from ttc.aggregation import aggregate, tally
from ttc.budget import Budget, Ledger, Served, Unit
from ttc.cancel import Abort
from ttc.cost import CostModel
from ttc.errors import BackendError, BudgetExceeded, ConfigError
from ttc.interfaces import Allocator, Backend, Strategy, Task
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
    token_confidence,
    top_k_entropy,
)

POLICY = "policy"
"""The model name of the run's own backend in `ctx.generate(..., model=...)`."""


@dataclass(frozen=True)
class ModelRoute:
    """A second model a strategy generates with (`Strategy.models`): its backend, the
    scheduler that batches its calls across problems, and its cost model (its FLOPs are
    charged at its own shape)."""

    backend: Backend
    scheduler: Scheduler
    cost: CostModel


@dataclass
class _Tree:
    """What a context and its sub-budget contexts share: the branches and the calls."""

    nodes: dict[int, Branch]
    calls: list[CallRecord] = field(default_factory=list)
    failed_branches: int = 0


class ProblemContext:
    """Everything one problem's strategy may use (implements `SolveContext`)."""

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
        models: Mapping[str, ModelRoute] | None = None,
    ) -> None:
        self.problem = problem
        self.rng = random.Random(f"{seed}:{problem.id}")
        self.root = Branch(id=0, parent_id=None, step=0, token_ids=(), step_texts=())
        self._prompt = prompt
        self._prompt_ids = tuple(prompt_ids)
        self._scheduler = scheduler
        self._ledger = ledger
        self._task = task
        self._aggregate = aggregate
        self._on_call = on_call
        self._tree = _Tree(nodes={0: self.root})
        self._models = dict(models or {})
        self._model_prompts: dict[str, str] = {}
        reward = scheduler.reward
        if reward is not None and not ledger.reward_cost.known:
            # the reward model's FLOPs are charged at its own shape (known once started)
            ledger.reward_cost = CostModel(reward.architecture, hw=ledger.cost.hw)

    # -- the tree (for the runner, the store and tests; not part of the protocol) -----
    @property
    def branches(self) -> Mapping[int, Branch]:
        """Every branch created so far, by id (the root is 0)."""
        return self._tree.nodes

    @property
    def calls(self) -> list[CallRecord]:
        return self._tree.calls

    @property
    def failed_branches(self) -> int:
        return self._tree.failed_branches

    # -- spending ---------------------------------------------------------------------
    def remaining(self, unit: Unit | str) -> float | None:
        """What is left of an enforced unit (None: not enforced)."""
        return self._ledger.remaining(unit)

    def should_stop(self) -> bool:
        """Whether the allocator's policy would refuse the next call (e.g. the answers
        drawn already agree); the refusal comes either way."""
        return self._ledger.should_stop()

    def limit(self, **limits: float) -> ProblemContext:
        """A context for part of the search, limited by `limits` (budget units, e.g.
        `tokens=2000, reward_calls=8`) besides the problem's budget; it shares the tree.
        Used as `async with ctx.limit(tokens=2000) as sub: ...`, a refusal by these
        limits ends the block, not the search."""
        try:
            units: dict[str, Any] = {Unit.parse(k).value: v for k, v in limits.items()}
            budget = Budget(**units)
        except ValueError as exc:
            raise ConfigError(str(exc), key="ctx.limit") from None
        child = copy.copy(self)
        child._ledger = self._ledger.sub(budget)
        return child

    async def __aenter__(self) -> ProblemContext:
        return self

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> bool:
        # A refusal by this sub-budget's own limits ends the block; anything else goes on.
        return isinstance(exc, BudgetExceeded) and getattr(exc, "ledger", None) is self._ledger

    @property
    def has_reward(self) -> bool:
        return self._scheduler.reward is not None

    @property
    def _wants_logprobs(self) -> bool:
        reward = self._scheduler.reward
        return reward is not None and reward.needs_logprobs

    def path(self, branch: Branch) -> list[Branch]:
        """The branches from the root's first child down to `branch`."""
        chain = []
        node: Branch | None = branch
        while node is not None and node.parent_id is not None:
            chain.append(node)
            node = self._tree.nodes.get(node.parent_id)
        return chain[::-1]

    @property
    def models(self) -> tuple[str, ...]:
        """The models `generate` may run on: the policy and the strategy's own."""
        return (POLICY, *self._models)

    def _route(self, model: str) -> ModelRoute:
        if model not in self._models:
            raise ConfigError(
                f"no model '{model}' to generate with; this run has: {', '.join(self.models)}",
                key="strategy",
                hint="a strategy that generates with a second model declares it in "
                "Strategy.models (e.g. strategy.large_backend for cascade)",
            )
        return self._models[model]

    async def _requests_on(
        self, model: str, route: ModelRoute, branches: Sequence[Branch]
    ) -> list[tuple[str, tuple[int, ...]]]:
        """The prompts of `branches` for another model: its own rendering of the problem,
        then the branch's text, tokenised by its own tokenizer."""

        def build() -> list[tuple[str, tuple[int, ...]]]:
            if model not in self._model_prompts:
                self._model_prompts[model] = route.backend.render(self.problem)
            head = self._model_prompts[model]
            return [(head + b.text, tuple(route.backend.encode(head + b.text))) for b in branches]

        if getattr(route.backend, "blocking_codec", False):
            return await asyncio.to_thread(build)
        return build()

    def _piece_ids(self, text: str) -> tuple[int, ...]:
        """`text` in the policy's token ids, without the BOS its encoding may add."""
        backend = self._scheduler.backend
        ids = list(backend.encode(text))
        bos = list(backend.encode(""))
        return tuple(ids[len(bos) :] if bos and ids[: len(bos)] == bos else ids)

    async def generate(
        self,
        branches: Sequence[Branch],
        sampling: Sampling,
        *,
        model: str | None = None,
        abort: Abort | None = None,
    ) -> list[Branch]:
        """Continue every branch `sampling.n` times; return the children, grouped by parent
        in order. Raises `BudgetExceeded` (nothing spent) when the budget cannot cover even
        one token per sequence; `max_tokens` may be lowered to what the budget allows.
        A branch whose request fails is recorded and dropped; when all fail,
        `BackendError` is raised.

        `model` names the model to run on (`models`): None or `policy` is the run's
        backend; another name is a model the strategy declared, which continues the
        branch's text after its own rendering of the problem (its tokens are re-encoded
        in the policy's vocabulary for the tree) and is charged at its own shape. With
        `model` given, each child records `extra["model"]`, `extra["model_tokens"]` (what
        that model generated) and `extra["flops"]` (its share of the call's FLOPs).

        With `abort` (`ttc.cancel.Abort`), sequences it stops end early as
        `finish_reason="cancelled"` children (not finished, not to be continued); only
        the tokens they generated are charged."""
        calls = await self._generate(branches, sampling, model=model, abort=abort)
        return [child for child, _ in calls]

    def extend(self, branch: Branch, text: str) -> Branch:
        """A child of `branch` holding `text` that the strategy writes (an instruction, a
        question, the start of an answer): tokenised by the backend, nothing generated
        and nothing spent now; its tokens are prompt of the calls that continue it
        (a prefix cache covers what came before). Marked `extra["written"]`."""
        backend = self._scheduler.backend
        ids = list(backend.encode(text))
        lead = list(backend.encode(""))  # what encode adds to any text (e.g. BOS)
        if lead and ids[: len(lead)] == lead:
            ids = ids[len(lead) :]
        child = Branch(
            id=len(self._tree.nodes),
            parent_id=branch.id,
            step=branch.step + 1,
            token_ids=branch.token_ids + tuple(ids),
            step_texts=(*branch.step_texts, text),
            cum_logprob=branch.cum_logprob,
            step_scores=branch.step_scores,
            extra={"written": True},
        )
        self._tree.nodes[child.id] = child
        return child

    async def ask(
        self,
        branch: Branch,
        question: str,
        options: Sequence[str] = ("yes", "no"),
        *,
        top: int = 20,
    ) -> dict[str, float]:
        """The model's own probability of each option as its next token after `branch`'s
        text and `question` (written with `extend`): one greedy one-token generate call
        with the `top` most likely next tokens (`Sampling.top_logprobs`), charged like any
        call. A next token counts for the first option its text (stripped, lower-cased)
        begins or is a beginning of; the probabilities are normalised over the options
        (uniform when none of them is among the `top`). The answer node is not a
        solution (`finished` False) and records them in `extra["asked"]`."""
        asked = self.extend(branch, question)
        sampling = Sampling(n=1, temperature=0.0, max_tokens=1, logprobs=True, top_logprobs=top)
        (reply, g), *_ = await self._generate([asked], sampling, model=None)
        decode = self._scheduler.backend.decode
        mass = dict.fromkeys(options, 0.0)
        alternatives = g.top_logprobs[0] if g.top_logprobs else ()
        if not alternatives and g.token_ids and g.logprobs:
            alternatives = ((g.token_ids[0], g.logprobs[0]),)
        for token, logprob in alternatives:
            word = decode([token]).strip().lower()
            hit = next(
                (o for o in options if word and (o.startswith(word) or word.startswith(o))), None
            )
            if hit is not None:
                mass[hit] += math.exp(logprob)
        total = sum(mass.values())
        probs = {o: (m / total if total > 0 else 1.0 / len(options)) for o, m in mass.items()}
        reply.finished = False
        reply.extra["asked"] = {o: round(p, 4) for o, p in probs.items()}
        return probs

    async def _generate(
        self,
        branches: Sequence[Branch],
        sampling: Sampling,
        *,
        model: str | None,
        abort: Abort | None = None,
    ) -> list[tuple[Branch, Generation]]:
        if not branches:
            return []
        route = None if model in (None, POLICY) else self._route(str(model))
        scheduler = route.scheduler if route is not None else self._scheduler
        if self._wants_logprobs and not sampling.logprobs:
            sampling = sampling.replace(logprobs=True)
        reward = self._scheduler.reward
        top = reward.top_logprobs if reward is not None else 0
        if top > sampling.top_logprobs:  # the reward reads each token's top-k entropy
            sampling = sampling.replace(logprobs=True, top_logprobs=top)
        if route is None:
            prompts = [(self._prompt + b.text, self._prompt_ids + b.token_ids) for b in branches]
        else:
            prompts = await self._requests_on(str(model), route, branches)
        prompt_lens = [len(ids) for _, ids in prompts]
        sequences = len(branches) * sampling.n
        # Copies of one branch (a particle filter's resampled particles) go as one request
        # of n = copies x sampling.n: one prefill and one request instead of one per copy,
        # each sequence still its own sample. The grant covers the unmerged shape, which
        # is never less than the merged one.
        groups: dict[int, list[int]] = {}
        for i, b in enumerate(branches):
            groups.setdefault(b.id, []).append(i)
        positions = list(groups.values())
        per_sample = scheduler.backend.prompt_tokens_per_sample
        cost = route.cost if route is not None else None
        try:
            grant = self._ledger.authorize_generate(
                prompt_lens, sampling.n, sampling.max_tokens, per_sample=per_sample, cost=cost
            )
        except BudgetExceeded as exc:
            self._record("generate", "refused", len(positions), sequences, error=str(exc))
            raise
        if grant.max_tokens < sampling.max_tokens:
            sampling = sampling.replace(max_tokens=grant.max_tokens)
        requests = [
            GenerateRequest(
                prompt=prompts[at[0]][0],
                prompt_token_ids=prompts[at[0]][1],
                sampling=sampling.replace(
                    n=sampling.n * len(at),
                    seed=sampling.seed if sampling.seed is not None else self.rng.getrandbits(31),
                ),
                abort=abort,
            )
            for at in positions
        ]
        t0 = time.perf_counter()
        try:
            outcomes = await scheduler.generate(requests)
        except BaseException:
            self._ledger.release(grant)
            raise
        latency = time.perf_counter() - t0

        placed: dict[int, list[tuple[Branch, Generation]]] = {}
        served: list[Served] = []
        produced: list[list[Branch]] = []
        batch = 0
        errors: list[str] = []
        for at, out in zip(positions, outcomes, strict=True):
            parent, plen = branches[at[0]], prompt_lens[at[0]]
            if isinstance(out, BaseException):
                errors.append(f"{type(out).__name__}: {out}")
                self._tree.failed_branches += len(at)
                continue
            result, batch = out.result, max(batch, out.batch_size)
            usage = result.usage
            # a sequence aborted before its first token was never sampled: no child, no
            # sample charged (its prompt, if the backend prefilled it, still is)
            kept = [bool(g.token_ids) or g.finish_reason != "cancelled" for g in result.generations]
            lens = [len(g.token_ids) for g, k in zip(result.generations, kept, strict=True) if k]
            if not lens and not usage.prompt_tokens and not usage.completion_tokens:
                continue
            served.append(
                Served(
                    prompt_len=plen,
                    completion_lens=lens,
                    prompt_tokens=usage.prompt_tokens,
                    cached_prompt_tokens=usage.cached_prompt_tokens,
                    completion_tokens=usage.completion_tokens or sum(lens),
                    batch_size=out.batch_size,
                )
            )
            mine: list[Branch] = []
            for j, position in enumerate(at):  # copy j gets the j-th n of the samples
                share = slice(j * sampling.n, (j + 1) * sampling.n)
                ours = zip(result.generations[share], kept[share], strict=True)
                gens = [g for g, k in ours if k]
                pairs = [(self._child(parent, g, recode=route is not None), g) for g in gens]
                placed[position] = pairs
                mine += [child for child, _ in pairs]
            produced.append(mine)
        children = [pair for i in range(len(branches)) for pair in placed.get(i, ())]
        charge = self._ledger.charge_generate(grant, served, cost=cost)
        if model is not None:
            for mine, flops in zip(produced, charge.request_flops, strict=True):
                for child in mine:
                    child.extra["model"] = str(model)
                    child.extra["model_tokens"] = child.new_tokens
                    child.extra["flops"] = flops / max(len(mine), 1)
        self._record(
            "generate",
            "ok" if not errors else "error",
            len(positions),
            sequences,
            batch_size=batch,
            prompt_tokens=charge.prompt_tokens,
            cached_prompt_tokens=charge.cached_prompt_tokens,
            completion_tokens=charge.completion_tokens,
            flops=charge.flops,
            latency_s=latency,
            error="; ".join(errors[:3]) or None,
        )
        if errors and not children:
            raise BackendError(f"every request of the call failed: {errors[0]}")
        if self._ledger.wants_answers:  # an allocator's stop rule reads the answers
            stated = (self.answer(b) for b, _ in children)
            self._ledger.observe_answers([self.normalize(a) for a in stated if a is not None])
        return children

    def _child(self, parent: Branch, g: Generation, *, recode: bool = False) -> Branch:
        """A new node for generation `g` of `parent`; `recode`: `g` came from another
        model, whose token ids are re-encoded from its text in the policy's vocabulary."""
        new_ids = self._piece_ids(g.text) if recode else g.token_ids
        child = Branch(
            id=len(self._tree.nodes),
            parent_id=parent.id,
            step=parent.step + 1,
            token_ids=parent.token_ids + new_ids,
            step_texts=(*parent.step_texts, g.text),
            cum_logprob=parent.cum_logprob + (sum(g.logprobs) if g.logprobs else 0.0),
            token_logprobs=g.logprobs or (),
            token_entropies=tuple(top_k_entropy(alt) for alt in g.top_logprobs or ()),
            token_confidences=tuple(token_confidence(alt) for alt in g.top_logprobs or ()),
            # the steps before carry their scores (so scoring is incremental); the new
            # step has none, so the child's `score` is None until it is scored
            step_scores=parent.step_scores,
            finished=g.finish_reason not in ("stop", "cancelled"),
            finish_reason=g.finish_reason,
            new_tokens=len(g.token_ids),
        )
        self._tree.nodes[child.id] = child
        return child

    async def score(
        self, branches: Sequence[Branch], *, verifications: int | None = None
    ) -> list[float]:
        """Score branches with the reward model; store per-step scores and the aggregated
        score (`reward.aggregate`) on each branch, and return the aggregated scores. Steps
        scored by an earlier call are passed as already scored, so incremental reward
        models score only the new ones. The call is authorised (and reserved) at the
        reward model's worst case (`RewardModel.worst_case`) where `reward_tokens`,
        `flops` or `eflops` is enforced, and its passes' FLOPs are charged from the reward
        model's own shape. A branch whose scoring fails keeps `score = None` (it ranks
        last; its entry in the returned list is -inf) and the failure is recorded in
        `score_error`; when every branch fails, `BackendError` is raised. `verifications`:
        how many verifications a generative verifier writes per branch (`judge` in
        `generative` mode; None: its own setting)."""
        reward = self._scheduler.reward
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
                prompt=self._prompt,
                steps=b.step_texts,
                scored_steps=min(len(b.step_scores), len(b.step_texts)),
                finished=b.finished,
                step_logprobs=(
                    tuple(n.token_logprobs for n in self.path(b)) if self._wants_logprobs else None
                ),
                step_entropies=(
                    tuple(n.token_entropies for n in self.path(b)) if reward.top_logprobs else None
                ),
                verifications=verifications,
            )
            for b in branches
        ]
        worst = None
        if self._ledger.bounds_score_work:  # tokenising for the bound is not free: only then
            worst = await asyncio.to_thread(reward.worst_case, requests)
        try:
            grant = self._ledger.authorize_score(worst)
        except BudgetExceeded as exc:
            self._record("score", "refused", len(branches), len(branches), error=str(exc))
            raise
        t0 = time.perf_counter()
        try:
            outcomes = await self._scheduler.score(requests)
        except BaseException:
            self._ledger.release(grant)
            raise
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
            b.score = aggregate(b.step_scores, self._aggregate)
            b.score_error = None
            scores.append(-math.inf if b.score is None else b.score)
        flops = self._ledger.charge_score(grant, tokens=tokens, passes=passes)
        self._record(
            "score",
            "ok" if not errors else "error",
            len(branches),
            len(branches),
            batch_size=batch,
            reward_tokens=tokens,
            flops=flops,
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
            branch.answer = self._task.extract_answer(branch.text)
        return branch.answer

    def normalize(self, answer: str) -> str:
        """The task's canonical form of an answer (equal forms vote together)."""
        return self._task.normalize(answer)

    def leaves(self) -> list[Branch]:
        """Finished branches (complete solutions) created so far."""
        return [b for b in self._tree.nodes.values() if b.finished]

    # -- records ----------------------------------------------------------------------
    def _record(
        self, kind: Any, status: Any, n_requests: int, n_sequences: int, **fields: Any
    ) -> None:
        call = CallRecord(
            seq=len(self._tree.calls),
            kind=kind,
            status=status,
            n_requests=n_requests,
            n_sequences=n_sequences,
            **fields,
        )
        self._tree.calls.append(call)
        if self._on_call is not None:
            self._on_call(call)


async def run_strategy(strategy: Strategy, problem: Problem, ctx: ProblemContext) -> Solution:
    """Solve `problem` with `strategy`: the one place a search ends.

    A strategy's `solve` is an async generator that yields its current answer whenever
    it has a better one (an anytime search), or a coroutine that returns one. A refused
    call (`BudgetExceeded`, an allocator's early stop included) or a call whose every
    request failed (`BackendError`) ends the search here: the last answer yielded is the
    answer, and `trace["ended_by"]` names the reason (`budget`, `early_stop` or
    `backend_error`). When the strategy yielded no answer by then, the answer is the
    vote of the finished branches drawn so far (an allocator's probe samples included),
    if any (`trace["fallback"] = "vote"`). A backend failure before anything was drawn
    is re-raised: the problem is then recorded as an error with the backend's message,
    not as a silent "no answer". The answer's branch and `support` are marked selected.
    """
    best: Solution | None = None
    ended_by: str | None = None
    try:
        out = strategy.solve(problem, ctx)
        if inspect.isasyncgen(out):
            async for current in out:
                best = cast(Solution, current)
        else:
            best = cast(Solution, await cast(Any, out))
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


async def solve_problem(
    strategy: Strategy,
    problem: Problem,
    ctx: ProblemContext,
    ledger: Ledger,
    *,
    allocator: Allocator | None = None,
) -> Solution:
    """What the runner does with a problem's context: the allocator prepares it (a probe,
    and a `Plan`: the problem's budget, never below what was spent, and its strategy),
    then `run_strategy` searches. `ledger` is the one the context was built with."""
    if allocator is not None:
        plan = await allocator.prepare(problem, ctx)
        if plan is not None:
            if plan.budget is not None:
                ledger.rebudget(plan.budget)
            strategy = plan.strategy or strategy
    return await run_strategy(strategy, problem, ctx)


def _fallback(ctx: ProblemContext) -> Solution | None:
    """The most frequent answer among the finished branches (None: no branch states
    one); its best-scoring branch carries it."""
    votes = tally(ctx.leaves(), answer=ctx.answer, normalize=ctx.normalize)
    if not votes:
        return None
    top = votes[0]
    return Solution(answer=top.answer, branch=top.best, trace={"fallback": "vote"})
