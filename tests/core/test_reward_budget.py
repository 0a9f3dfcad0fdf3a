"""Score calls are budgeted like generate calls: refused against their worst case, their
FLOPs charged from the reward model's own shape, and a call whose every request fails
raises instead of scoring zeros. Backends whose samples count the prompt once each
(vLLM's engine) are authorised at that count."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from ttc.budget import Budget, Ledger
from ttc.context import ProblemContext
from ttc.cost import CostModel
from ttc.errors import BackendError, BudgetExceeded, ConfigError
from ttc.interfaces import RewardModel
from ttc.scheduler import Scheduler
from ttc.testing import (
    ScriptedBackend,
    ScriptedBackendConfig,
    SyntheticReward,
    SyntheticRewardConfig,
    SyntheticTask,
    SyntheticTaskConfig,
    synthetic_problem,
)
from ttc.types import (
    Branch,
    GenerateRequest,
    GenerateResult,
    ModelArchitecture,
    ModelPass,
    Sampling,
    ScoreRequest,
    ScoreResult,
    Usage,
)

REWARD_ARCH = ModelArchitecture(
    params=3_000_000, layers=6, hidden=256, heads=8, kv_heads=2, vocab=512, intermediate=512
)
"""A reward model shaped unlike the policy (the scripted backend's 4 x 128 model)."""


class FailingRewardDouble(RewardModel):
    """A reward model whose every call fails (a crashed reward server)."""

    name = "failing_double"

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        raise RuntimeError("reward model unavailable")

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass] | None:
        return []


class PrefixRewardDouble(RewardModel):
    """A reward model that reads `question + steps` one token per character with a
    prefix cache of what it read before: a branch that grew by a step costs only its new
    text, so what it spends is below its worst case (everything computed)."""

    name = "prefix_double"

    def __init__(self) -> None:
        super().__init__(None)
        self.seen: list[str] = []

    @property
    def architecture(self) -> ModelArchitecture:
        return REWARD_ARCH

    def _text(self, r: ScoreRequest) -> str:
        return (r.problem.prompt or "") + "".join(r.steps)

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        return [ModelPass(prompt=len(self._text(r))) for r in requests]

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for r in requests:
            text = self._text(r)
            hit = max((_common(text, s) for s in self.seen), default=0)
            self.seen.append(text)
            p = ModelPass(prompt=len(text), cached=min(hit, len(text) - 1))
            scores = tuple(0.1 if "hmm" in s else 0.9 for s in r.steps)
            out.append(ScoreResult(step_scores=scores, tokens=p.tokens, passes=(p,)))
        return out


class PerSampleBackendDouble(ScriptedBackend):
    """The scripted model behind an engine that batches by itself and runs every sample as
    its own sequence (as vLLM's does): `prompt_tokens` counts the prompt once per sample,
    and a sample's prompt is cached only as far as an earlier *finished* request's prompt
    matched it (samples submitted together do not share)."""

    name = "per_sample_double"
    batches_itself = True
    prompt_tokens_per_sample = True

    def __init__(self, config: ScriptedBackendConfig) -> None:
        super().__init__(config)
        self.done: list[tuple[int, ...]] = []

    async def agenerate(self, request: GenerateRequest) -> GenerateResult:
        ids = tuple(request.prompt_token_ids or self.encode(request.prompt))
        hit = max((_common(ids, d) for d in self.done), default=0)
        hit = min(hit, len(ids) - 1)
        await asyncio.sleep(0)
        result = self._generate(request)
        self.done.append(ids)
        n = request.sampling.n
        return GenerateResult(
            generations=result.generations,
            usage=Usage(
                prompt_tokens=len(ids) * n,
                cached_prompt_tokens=hit * n,
                completion_tokens=result.usage.completion_tokens,
            ),
        )


def _common(a: Sequence[Any], b: Sequence[Any]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


class LedgerContext(ProblemContext):
    """The problem context with its ledger and prompt ids at hand (for these ledger
    tests; strategies see neither)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ledger: Ledger = kwargs["ledger"]
        self.prompt_ids = tuple(kwargs["prompt_ids"])


def context(
    budget: Budget,
    *,
    reward: RewardModel | None = None,
    backend: ScriptedBackend | None = None,
) -> LedgerContext:
    backend = backend or ScriptedBackend(ScriptedBackendConfig(steps=3, p_correct=0.5))
    problem = synthetic_problem()
    prompt = backend.render(problem)
    return LedgerContext(
        problem=problem,
        prompt=prompt,
        prompt_ids=backend.encode(prompt),
        scheduler=Scheduler(backend, reward, max_wait_s=0.0),
        ledger=Ledger(budget, CostModel(backend.architecture)),
        task=SyntheticTask(SyntheticTaskConfig()),
    )


async def grow(ctx: LedgerContext, steps: int, *, n: int = 2) -> list[Branch]:
    branches = [ctx.root]
    for _ in range(steps):
        branches = await ctx.generate(
            branches[:1], Sampling(n=n, max_tokens=64, stop=("\n\n",), seed=3)
        )
    return branches


# -- a score call that fails --------------------------------------------------------------


def test_a_score_call_whose_every_request_fails_raises_backend_error() -> None:
    async def go() -> None:
        ctx = context(Budget(), reward=FailingRewardDouble(None))
        branches = await grow(ctx, 1)
        with pytest.raises(BackendError, match="reward model unavailable"):
            await ctx.score(branches)
        (call,) = [c for c in ctx.calls if c.kind == "score"]
        assert call.status == "error"
        assert all(b.score is None for b in branches)  # no silent zeros

    asyncio.run(go())


# -- reward tokens at the worst case ------------------------------------------------------


def test_reward_tokens_refuse_a_call_whose_worst_case_exceeds_the_limit() -> None:
    async def go() -> None:
        reward = SyntheticReward(SyntheticRewardConfig(tokens_per_step=500))
        ctx = context(Budget(reward_tokens=10), reward=reward)
        branches = await grow(ctx, 1)
        with pytest.raises(BudgetExceeded) as info:
            await ctx.score(branches)
        assert info.value.unit == "reward_tokens"
        assert ctx.ledger.spent.reward_tokens == 0
        assert [c.status for c in ctx.calls if c.kind == "score"] == ["refused"]

    asyncio.run(go())


@pytest.mark.parametrize("limit", [40, 120, 260, 700])
def test_reward_tokens_never_exceed_the_limit_with_a_prefix_cached_reward(limit: int) -> None:
    async def go() -> None:
        reward = PrefixRewardDouble()
        ctx = context(Budget(reward_tokens=limit), reward=reward)
        branches = [ctx.root]
        refused = False
        for _ in range(4):
            branches = await ctx.generate(
                branches[:1], Sampling(n=2, max_tokens=64, stop=("\n\n",), seed=5)
            )
            try:
                await ctx.score(branches)
            except BudgetExceeded:
                refused = True
                break
        assert ctx.ledger.spent.reward_tokens <= limit
        scored = [c for c in ctx.calls if c.kind == "score" and c.status == "ok"]
        # the prefix cache makes real calls cheaper than their worst case
        assert sum(c.reward_tokens for c in scored) == ctx.ledger.spent.reward_tokens
        assert refused or limit > 40  # 40 tokens cannot read the prompt and a step

    asyncio.run(go())


# -- reward FLOPs -------------------------------------------------------------------------


def test_reward_flops_are_charged_from_the_reward_models_own_shape() -> None:
    async def go() -> None:
        reward = PrefixRewardDouble()
        ctx = context(Budget(), reward=reward)
        branches = await grow(ctx, 2)
        before = ctx.ledger.spent.flops
        await ctx.score(branches)
        own = CostModel(REWARD_ARCH)
        texts = [(ctx.problem.prompt or "") + b.text for b in branches]
        # the first branch reads its text whole (beyond what earlier calls read: nothing),
        # the second shares a prefix with the first
        first = ModelPass(prompt=len(texts[0]))
        second = ModelPass(
            prompt=len(texts[1]),
            cached=min(_common(texts[0], texts[1]), len(texts[1]) - 1),
        )
        expected = own.pass_flops(first) + own.pass_flops(second)
        assert ctx.ledger.spent.flops - before == pytest.approx(expected)
        policy = CostModel(ScriptedBackend(ScriptedBackendConfig()).architecture)
        assert own.pass_flops(first) != pytest.approx(policy.pass_flops(first))
        eflops = own.eflops(expected, own.pass_bytes(first) + own.pass_bytes(second))
        assert ctx.ledger.spent.eflops > eflops * 0.999  # plus the generate calls' eFLOPs

    asyncio.run(go())


@pytest.mark.parametrize("unit", ["flops", "eflops"])
def test_a_flops_limit_refuses_a_score_call_whose_worst_case_exceeds_it(unit: str) -> None:
    async def go() -> None:
        reward = PrefixRewardDouble()
        probe = context(Budget(), reward=PrefixRewardDouble())
        spent_by_generate = getattr((await _generate_only(probe)).ledger.spent, unit)
        # room for the generate call, not for reading the branches with the reward model
        ctx = context(Budget(**{unit: spent_by_generate * 1.01}), reward=reward)
        branches = await grow(ctx, 1)
        with pytest.raises(BudgetExceeded) as info:
            await ctx.score(branches)
        assert info.value.unit == unit
        assert getattr(ctx.ledger.spent, unit) <= spent_by_generate * 1.01

    asyncio.run(go())


async def _generate_only(ctx: LedgerContext) -> LedgerContext:
    await grow(ctx, 1)
    return ctx


def test_a_reward_that_cannot_bound_its_work_cannot_run_under_a_reward_tokens_limit() -> None:
    class UnboundedRewardDouble(SyntheticReward):
        def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass] | None:
            return None

    async def go() -> None:
        ctx = context(Budget(reward_tokens=1000), reward=UnboundedRewardDouble(None))
        branches = await grow(ctx, 1)
        with pytest.raises(ConfigError, match="reward_tokens"):
            await ctx.score(branches)
        assert ctx.ledger.spent.reward_tokens == 0

    asyncio.run(go())


# -- per-sample prompt counting (vLLM) ----------------------------------------------------


@pytest.mark.parametrize("n", [2, 4])
def test_prefill_tokens_stay_within_the_limit_when_samples_count_the_prompt(n: int) -> None:
    async def go() -> None:
        backend = PerSampleBackendDouble(ScriptedBackendConfig(steps=3))
        prompt_len = len(backend.encode(backend.render(synthetic_problem())))
        limit = prompt_len * n - 1  # one prompt per sample does not fit
        ctx = context(Budget(prefill_tokens=limit), backend=backend)
        with pytest.raises(BudgetExceeded) as info:
            await ctx.generate([ctx.root], Sampling(n=n, max_tokens=32, seed=1))
        assert info.value.unit == "prefill_tokens"
        assert ctx.ledger.spent.prefill_tokens <= limit

    asyncio.run(go())


def test_flops_on_a_per_sample_backend_count_every_samples_prefill() -> None:
    async def go() -> None:
        backend = PerSampleBackendDouble(ScriptedBackendConfig(steps=3))
        ctx = context(Budget(), backend=backend)
        (a, b, c) = await ctx.generate(
            [ctx.root], Sampling(n=3, max_tokens=8, seed=1, stop=("\n\n",))
        )
        cost = ctx.ledger.cost
        p = len(ctx.prompt_ids)
        expected = 3 * cost.prefill_flops(p) + sum(
            cost.decode_flops(len(x.token_ids), context_before=p) for x in (a, b, c)
        )
        assert ctx.ledger.spent.prefill_tokens == 3 * p
        assert ctx.ledger.spent.flops == pytest.approx(expected)

    asyncio.run(go())


@pytest.mark.parametrize("unit", ["flops", "eflops"])
def test_a_flops_limit_holds_on_a_per_sample_backend(unit: str) -> None:
    async def go() -> None:
        backend = PerSampleBackendDouble(ScriptedBackendConfig(steps=3))
        cost = CostModel(backend.architecture)
        p = len(backend.encode(backend.render(synthetic_problem())))
        one = cost.prefill_flops(p) + cost.decode_flops(1, context_before=p)
        if unit == "eflops":
            one = cost.eflops(one, cost.prefill_bytes(p) + cost.decode_bytes(1, context_before=p))
        limit = 2.5 * one  # two samples' prefills fit, four do not
        ctx = context(Budget(**{unit: limit}), backend=backend)
        with pytest.raises(BudgetExceeded):
            await ctx.generate([ctx.root], Sampling(n=4, max_tokens=16, seed=1))
        (two, _) = await ctx.generate([ctx.root], Sampling(n=2, max_tokens=16, seed=1))
        assert two.new_tokens >= 1
        assert getattr(ctx.ledger.spent, unit) <= limit

    asyncio.run(go())


def test_generation_flops_never_use_a_negative_cached_context() -> None:
    cost = CostModel(ScriptedBackend(ScriptedBackendConfig()).architecture)
    # 3 samples, each its own engine sequence, none cached: 3 full prefills of 100 tokens
    flops = cost.generation_flops(
        prompt_len=100, computed_prompt=300, completion_lens=[0, 0, 0], prefills=3
    )
    assert flops == pytest.approx(3 * cost.prefill_flops(100))
    # half cached, spread over the sequences: each prefills 50 tokens on top of 50
    flops = cost.generation_flops(
        prompt_len=100, computed_prompt=150, completion_lens=[], prefills=3
    )
    assert flops == pytest.approx(3 * cost.prefill_flops(50, context_before=50))
