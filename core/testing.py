"""Test doubles and a conformance suite for plugin authors.

Nothing here is registered by ttc itself: a test suite registers the doubles as a plugin
(ttc's own tests do so in tests/doubles.py), or subclasses `StrategyConformance` (or
`BackendConformance` / `RewardConformance`, from `ttc.conformance`).

- `scripted` backend: a character-level fake model. Each call emits the next step of a
  scripted solution ("Step k: ...") and, after `steps` steps, a final answer that is right
  with probability `p_correct`. Deterministic per request seed. It records the size of
  every batch it is handed.
- `synthetic` task: problems whose reference answer is known to the backend double.
- `synthetic` reward: scores a step 0.9 when it is right, 0.1 when it is wrong (+ noise).

None of these are product components: they stand in for a model in tests of the spine.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from ttc.budget import Budget, Ledger, Spent
from ttc.config import BackendConfig, RewardConfig, TaskConfig, bounded
from ttc.conformance import BackendConformance as BackendConformance  # re-exported
from ttc.conformance import RewardConformance as RewardConformance
from ttc.context import ModelRoute, ProblemContext, solve_problem
from ttc.cost import CostModel
from ttc.interfaces import Allocator, Backend, RewardModel, Strategy, Task
from ttc.progress import tokens_generated
from ttc.scheduler import Scheduler
from ttc.types import (
    GenerateRequest,
    GenerateResult,
    Generation,
    ModelArchitecture,
    ModelPass,
    Problem,
    ScoreRequest,
    ScoreResult,
    Solution,
    Usage,
)

BATCH_SIZES: list[int] = []
"""Sizes of every batch any scripted backend in this process was handed."""
_lock = threading.Lock()

PROMPT_END = "Solution:\n"


@dataclass
class ScriptedBackendConfig(BackendConfig):
    name: str = "scripted"
    steps: int = bounded(3, ge=0)
    p_correct: float = bounded(0.5, ge=0.0, le=1.0)
    delay_s: float = bounded(0.0, ge=0.0, help="sleep per batch (to make runs slow)")
    token_delay_s: float = bounded(
        0.0, ge=0.0, help="sleep per token a batch generates (an engine of fixed throughput)"
    )
    fail_marker: str = ""
    """Requests whose prompt contains this string raise (for failure-isolation tests)."""
    fail_in: str = bounded(
        "generate",
        choices=["generate", "render", "encode"],
        help="where a marked problem fails: its generation, rendering or encoding",
    )
    fail_while_exists: str = ""
    """A path: every generation fails while this file exists (a transient outage)."""
    start_delay_s: float = bounded(0.0, ge=0.0, help="sleep in start() (a model load)")
    close_delay_s: float = bounded(0.0, ge=0.0, help="sleep in close() (freeing the model)")


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, str | None]:
    """`text` cut right after the earliest match of any stop string, and that string (as
    engines stop: the first position where one completes)."""
    end, hit = -1, None
    for stop in stops:
        at = text.find(stop) if stop else -1
        if at >= 0 and (end < 0 or at + len(stop) < end):
            end, hit = at + len(stop), stop
    return (text[:end], hit) if hit is not None else (text, None)


class ScriptedBackend(Backend):
    name = "scripted"

    def render(self, problem: Problem) -> str:
        text = (problem.prompt or "") + "\n" + PROMPT_END
        self._maybe_fail("render", text)
        return text

    def encode(self, text: str) -> list[int]:
        self._maybe_fail("encode", text)
        return [ord(c) % 256 for c in text]

    def _maybe_fail(self, stage: str, text: str) -> None:
        marker = self.config.fail_marker
        if marker and self.config.fail_in == stage and marker in text:
            raise RuntimeError(f"scripted failure in {stage}")

    started = False
    """Whether `start` ran (and `close` after it: `closed`), for tests of life cycles."""
    closed = False

    async def start(self) -> None:
        if self.config.start_delay_s:
            await asyncio.sleep(self.config.start_delay_s)
        self.started = True

    async def close(self) -> None:
        if self.config.close_delay_s:
            await asyncio.sleep(self.config.close_delay_s)
        self.closed = True

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids)

    @property
    def architecture(self) -> ModelArchitecture:
        return ModelArchitecture(
            params=1_000_000, layers=4, hidden=128, heads=4, kv_heads=4, vocab=256
        )

    def _script(self, prompt: str, rng: random.Random) -> tuple[str, bool]:
        """The next chunk of the solution after `prompt`, and whether it ends it."""
        head, marked, done = prompt.partition(PROMPT_END)
        if not marked:  # a raw prompt (not rendered by this backend): all of it so far
            done = head
        m = re.search(r"answer=(-?\d+)", head)
        answer = int(m.group(1)) if m else 0
        k = done.count("Step ")
        if k < self.config.steps:
            right = rng.random() < self.config.p_correct ** (1 / max(self.config.steps, 1))
            return f"Step {k + 1}: {'ok' if right else 'hmm'}.\n\n", False
        final = answer if rng.random() < self.config.p_correct else answer + rng.randint(1, 9)
        return f"The answer is \\boxed{{{final}}}.", True

    def _generate(self, req: GenerateRequest) -> GenerateResult:
        prompt = req.prompt
        if self.config.fail_in == "generate":
            self._maybe_fail("generate", prompt)
        outage = self.config.fail_while_exists
        if outage and os.path.exists(outage):
            raise RuntimeError(f"scripted outage ({outage} exists)")
        s = req.sampling
        gens = []
        for i in range(s.n):
            rng = random.Random(f"{s.seed}:{i}:{len(prompt)}")
            text, ended, hit = "", False, None
            while not ended and hit is None:
                chunk, ended = self._script(prompt + text, rng)
                text += chunk
                text, hit = cut_at_stop(text, s.stop)
            reason = "stop" if hit is not None else "eos"
            if len(text) > s.max_tokens:
                text, reason, hit = text[: s.max_tokens], "length", None
            ids = tuple(self.encode(text))
            logprobs = tuple(-0.1 for _ in ids) if s.logprobs else None
            gens.append(
                Generation(
                    token_ids=ids,
                    text=text,
                    finish_reason=reason,  # type: ignore[arg-type]
                    logprobs=logprobs,
                    stop_reason=hit,
                )
            )
        n_prompt = len(req.prompt_token_ids or self.encode(prompt))
        return GenerateResult(
            generations=tuple(gens),
            usage=Usage(
                prompt_tokens=n_prompt,
                cached_prompt_tokens=0,
                completion_tokens=sum(len(g.token_ids) for g in gens),
            ),
        )

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        with _lock:
            BATCH_SIZES.append(len(requests))
        if self.config.delay_s:
            time.sleep(self.config.delay_s)
        results = [self._generate(r) for r in requests]
        tokens = sum(r.usage.completion_tokens for r in results)
        # like a decode loop: tokens are reported (the progress line) as they are made
        slices = 8 if self.config.token_delay_s and tokens >= 8 else 1
        for k in range(slices):
            part = tokens * (k + 1) // slices - tokens * k // slices
            if self.config.token_delay_s:
                time.sleep(self.config.token_delay_s * part)
            if part:
                tokens_generated(part)
        return results


@dataclass
class SyntheticTaskConfig(TaskConfig):
    name: str = "synthetic"
    n_problems: int = bounded(16, ge=1)
    fail_ids: list[str] | None = None
    """Problems whose prompt carries the backend's fail marker."""
    load_delay_s: float = bounded(0.0, ge=0.0, help="sleep in load() (a slow data source)")
    load_gate: str = ""
    """A path: load() waits while this file exists (a data source the test holds back,
    so that a signal surely lands while the task is loading)."""


class SyntheticTask(Task):
    name = "synthetic"

    def load(self) -> list[Problem]:
        if self.config.load_delay_s:
            time.sleep(self.config.load_delay_s)
        while self.config.load_gate and os.path.exists(self.config.load_gate):
            time.sleep(0.02)
        rng = random.Random(self.config.seed)
        problems = []
        for i in range(self.config.n_problems):
            answer = rng.randint(10, 99)
            pid = f"p{i:03d}"
            fail = " FAIL" if self.config.fail_ids and pid in self.config.fail_ids else ""
            problems.append(
                Problem(id=pid, prompt=f"Problem {i} answer={answer}{fail}", reference=str(answer))
            )
        return problems[: self.config.limit] if self.config.limit else problems

    def extract_answer(self, text: str) -> str | None:
        m = re.findall(r"\\boxed\{([^}]*)\}", text)
        return m[-1] if m else None

    def is_correct(self, answer: str | None, problem: Problem) -> bool | None:
        return answer is not None and answer.strip() == problem.reference


@dataclass
class SyntheticRewardConfig(RewardConfig):
    name: str = "synthetic"
    noise: float = bounded(0.0, ge=0.0)
    tokens_per_step: int = bounded(5, ge=0)


REWARD_DOUBLE_ARCH = ModelArchitecture(
    params=500_000, layers=2, hidden=64, heads=2, kv_heads=2, vocab=256
)
"""The shape the reward doubles charge their FLOPs at (unlike the scripted policy's)."""


class StepReadingReward(RewardModel):
    """Base of the reward doubles: reading the steps a request has not had scored costs
    `config.tokens_per_step` tokens each, in one pass of a small model
    (`REWARD_DOUBLE_ARCH`); that is also the call's worst case."""

    @property
    def architecture(self) -> ModelArchitecture:
        return REWARD_DOUBLE_ARCH

    def step_pass(self, request: ScoreRequest) -> ModelPass:
        new = len(request.steps) - request.scored_steps
        return ModelPass(prompt=new * int(self.config.tokens_per_step))

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass]:
        return [self.step_pass(r) for r in requests]

    def result(self, request: ScoreRequest, scores: Sequence[float]) -> ScoreResult:
        p = self.step_pass(request)
        return ScoreResult(
            step_scores=tuple(scores), tokens=p.tokens, passes=(p,) if p.tokens else ()
        )


class SyntheticReward(StepReadingReward):
    name = "synthetic"

    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        out = []
        for r in requests:
            rng = random.Random("|".join(r.steps))
            ref = r.problem.reference
            scores = []
            for s in r.steps:
                if "\\boxed" in s:  # a final step: right iff it states the reference
                    good = ref is not None and f"{{{ref}}}" in s
                else:
                    good = "hmm" not in s
                value = (0.9 if good else 0.1) + rng.gauss(0, self.config.noise)
                scores.append(min(max(value, 0.0), 1.0))
            out.append(self.result(r, scores))
        return out


def synthetic_problem(index: int = 0, *, answer: int = 42) -> Problem:
    """A problem the scripted backend and synthetic reward understand."""
    return Problem(
        id=f"p{index:03d}", prompt=f"Problem {index} answer={answer}", reference=str(answer)
    )


@dataclass
class Outcome:
    """One problem solved through `solve_all`: the answer, its context and its ledger."""

    problem: Problem
    solution: Solution
    ctx: ProblemContext
    ledger: Ledger

    @property
    def spent(self) -> Spent:
        return self.ledger.spent

    @property
    def correct(self) -> bool:
        a = self.solution.answer
        return a is not None and a.strip() == (self.problem.reference or "").strip()


def wire(
    problem: Problem,
    *,
    scheduler: Scheduler,
    task: Task,
    budget: Budget | None = None,
    aggregate: str = "last",
    seed: int = 0,
    clock: Callable[[], float] | None = None,
    models: Mapping[str, ModelRoute] | None = None,
) -> tuple[ProblemContext, Ledger]:
    """What the runner builds for one problem: its prompt (rendered and encoded by the
    scheduler's backend), its ledger (with the backend's cost model; `clock` for the
    `seconds` unit, default the backend's `clock` if it has one, else wall time) and its
    context (with the strategy's further `models`, see `routes`)."""
    backend = scheduler.backend
    prompt = backend.render(problem)
    clock = clock or getattr(backend, "clock", None)
    ledger = Ledger(budget or Budget(), CostModel(backend.architecture), clock=clock)
    ctx = ProblemContext(
        problem=problem,
        prompt=prompt,
        prompt_ids=backend.encode(prompt),
        scheduler=scheduler,
        ledger=ledger,
        task=task,
        aggregate=aggregate,
        seed=seed,
        models=models,
    )
    return ctx, ledger


def routes(models: Mapping[str, Backend], *, max_batch_size: int = 512) -> dict[str, ModelRoute]:
    """A route (own scheduler, own cost model) per further model, as the runner builds
    them for `Strategy.models`."""
    return {
        name: ModelRoute(
            backend=b,
            scheduler=Scheduler(b, None, max_batch_size=max_batch_size, max_wait_s=0.0),
            cost=CostModel(b.architecture),
        )
        for name, b in models.items()
    }


def solve_all(
    strategy: Strategy,
    problems: Sequence[Problem],
    *,
    backend: Backend,
    task: Task,
    reward: RewardModel | None = None,
    budget: Budget | None = None,
    allocator: Allocator | None = None,
    aggregate: str = "last",
    seed: int = 0,
    max_batch_size: int = 512,
    on_error: Callable[[Problem, ProblemContext, BaseException], Solution] | None = None,
    models: Mapping[str, Backend] | None = None,
) -> list[Outcome]:
    """Solve every problem concurrently through one scheduler, as the Runner does (the
    allocator's budget and plan included), without a store. `on_error` turns an
    exception a problem raised into its solution (the runner records it as an error);
    without it the exception propagates. `models`: the backends of the strategy's
    further models (`Strategy.models`); by default each is a twin of `backend` (same
    class and config)."""
    if models is None:
        models = {name: type(backend)(backend.config) for name in strategy.models()}
    extra = dict(models)

    async def one(scheduler: Scheduler, problem: Problem, paths: dict[str, ModelRoute]) -> Outcome:
        b = allocator.budget_for(problem) if allocator is not None else budget
        ctx, ledger = wire(
            problem,
            scheduler=scheduler,
            task=task,
            budget=b,
            aggregate=aggregate,
            seed=seed,
            models=paths,
        )
        try:
            sol = await solve_problem(strategy, problem, ctx, ledger, allocator=allocator)
        except Exception as exc:
            if on_error is None:
                raise
            sol = on_error(problem, ctx, exc)
        return Outcome(problem, sol, ctx, ledger)

    async def go() -> list[Outcome]:
        scheduler = Scheduler(backend, reward, max_batch_size=max_batch_size, max_wait_s=0.0)
        paths = routes(extra, max_batch_size=max_batch_size)
        if allocator is not None:
            allocator.plan(list(problems))
        return list(await asyncio.gather(*(one(scheduler, p, paths) for p in problems)))

    return asyncio.run(go())


class StrategyConformance:
    """A conformance suite for strategies: subclass it in a test module as `TestX` and set
    `strategy` to an instance of yours; pytest runs the inherited tests.

    Override `backend_config` / `reward_config` to change the scripted environment.
    """

    strategy: Strategy
    backend_config = ScriptedBackendConfig(steps=2, p_correct=0.7)
    reward_config = SyntheticRewardConfig(noise=0.05)

    def solve(
        self, problem: Problem | None = None, *, budget: Budget | None = None
    ) -> tuple[Solution, ProblemContext]:
        reward = SyntheticReward(self.reward_config) if self.strategy.uses_reward else None
        (out,) = solve_all(
            self.strategy,
            [problem or synthetic_problem()],
            backend=ScriptedBackend(self.backend_config),
            task=SyntheticTask(SyntheticTaskConfig()),
            reward=reward,
            budget=budget,
        )
        self.ledger = out.ledger
        return out.solution, out.ctx

    def test_returns_an_answer_stated_by_one_of_its_branches(self) -> None:
        solution, ctx = self.solve()
        assert isinstance(solution, Solution)
        assert solution.answer is not None
        stated = {ctx.answer(b) for b in ctx.branches.values() if b.step_texts}
        assert solution.answer in stated
        if solution.branch is not None:
            assert solution.branch.id in ctx.branches

    def test_stays_within_a_token_budget(self) -> None:
        for limit in (8, 30, 90):
            self.solve(budget=Budget(tokens=limit))
            assert self.ledger.spent.tokens <= limit

    def test_stays_within_a_sample_budget(self) -> None:
        for limit in (1, 3):
            self.solve(budget=Budget(samples=limit))
            assert self.ledger.spent.samples <= limit

    def test_a_refused_first_call_ends_the_search_without_raising(self) -> None:
        solution, ctx = self.solve(budget=Budget(flops=1.0))
        assert isinstance(solution, Solution)
        assert any(c.status == "refused" for c in ctx.calls)
        assert self.ledger.spent.tokens == 0

    def test_every_branch_descends_from_the_root(self) -> None:
        _, ctx = self.solve()
        for b in ctx.branches.values():
            if b.parent_id is not None:
                assert b.parent_id in ctx.branches
                assert b.step == ctx.branches[b.parent_id].step + 1


SIMULATION = (
    "SimBackend",
    "SimBackendConfig",
    "SelfBatchingSimBackend",
    "SimClock",
    "SimReward",
    "SimRewardConfig",
    "ExactReward",
    "SimTask",
    "SimTaskConfig",
    "make_problems",
    "expected_accuracy",
)
"""The simulated environment of `ttc.simulation` (varying depth, noisy process reward,
prefix caching, a batched and a self-batching backend), re-exported here."""


def __getattr__(name: str) -> object:
    # Lazily: ttc.simulation builds on this module's doubles.
    if name in SIMULATION:
        from ttc import simulation

        return getattr(simulation, name)
    raise AttributeError(f"module 'ttc.testing' has no attribute {name!r}")
