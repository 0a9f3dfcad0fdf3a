"""The abstract interfaces plugins implement: backends, strategies, reward models,
allocators and tasks; and `SolveContext`, the one thing a strategy is given.

Every implementation is registered under a `name` together with a config dataclass (its
Hydra schema); the runner builds it as `cls(config)` (plus the collaborators named in the
constructor's documentation below).
"""

from __future__ import annotations

import abc
import random
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

from ttc.types import (
    Branch,
    GenerateRequest,
    GenerateResult,
    ModelArchitecture,
    ModelPass,
    Problem,
    Sampling,
    ScoreRequest,
    ScoreResult,
    Solution,
)

if TYPE_CHECKING:
    from types import TracebackType

    from ttc.budget import Budget, Unit
    from ttc.cancel import Abort
    from ttc.errors import BackendError
    from ttc.scheduler import Scheduler


@runtime_checkable
class SolveContext(Protocol):
    """What a strategy may use to solve one problem (the strategy contract).

    A strategy spends only through `generate` and `score`. Each call is authorised
    against the problem's budget before it runs (its worst case is reserved, so calls
    gathered concurrently cannot overspend together); a call the budget cannot cover
    raises `ttc.errors.BudgetExceeded`, and a call whose every request failed raises
    `ttc.errors.BackendError`. A strategy does not catch either: the search then ends in
    `ttc.context.run_strategy` with the last answer the strategy yielded (see
    `Strategy.solve`). The scheduler, the ledger and the store are not reachable from
    here.
    """

    problem: Problem
    root: Branch
    """The empty branch every search starts from (the prompt)."""
    rng: random.Random
    """The problem's own random stream (seeded by the run's seed and the problem id)."""

    async def generate(
        self,
        branches: Sequence[Branch],
        sampling: Sampling,
        *,
        model: str | None = None,
        abort: Abort | None = None,
    ) -> list[Branch]:
        """Continue each branch `sampling.n` times; the children, grouped by parent in
        order (a child is `finished` unless a stop string ended it). `max_tokens` may be
        lowered to what the budget allows. A request that fails is dropped (recorded).
        `model`: one of `models` (None: the run's policy); a second model continues the
        branch's text and is charged at its own shape (see `Strategy.models`).
        `abort` (`ttc.cancel.Abort`) stops sequences mid-way: they come back with
        `finish_reason="cancelled"` and only their generated tokens are charged.
        A branch listed k times (copies, as a particle filter resamples them) is one
        request of `k * sampling.n` sequences: one prefill; its children still come back
        in the places asked, `sampling.n` per copy."""
        ...

    @property
    def models(self) -> tuple[str, ...]:
        """The models `generate` can run on: `policy` and those the strategy declared."""
        ...

    def extend(self, branch: Branch, text: str) -> Branch:
        """A child of `branch` holding `text` the strategy writes (an instruction, a
        question, the start of an answer); nothing is generated or spent now: its tokens
        are prompt of the calls that continue it."""
        ...

    async def ask(
        self,
        branch: Branch,
        question: str,
        options: Sequence[str] = ("yes", "no"),
        *,
        top: int = 20,
    ) -> dict[str, float]:
        """The model's own next-token probability of each option after `branch` and
        `question`, normalised over the options: one greedy one-token call read through
        `Sampling.top_logprobs` (the `top` most likely tokens), charged like any call."""
        ...

    async def score(
        self, branches: Sequence[Branch], *, verifications: int | None = None
    ) -> list[float]:
        """Score branches with the reward model: sets `step_scores` and `score` on each
        (`score` None, -inf in the list, where scoring failed) and returns the scores.
        `verifications`: how many verifications a generative verifier writes per branch
        (None: the reward's own setting)."""
        ...

    def answer(self, branch: Branch) -> str | None:
        """The final answer a branch states (the task extracts it), or None."""
        ...

    def normalize(self, answer: str) -> str:
        """The task's canonical form of an answer, for voting."""
        ...

    def path(self, branch: Branch) -> list[Branch]:
        """The branches from the root's first child down to `branch`."""
        ...

    def leaves(self) -> list[Branch]:
        """Every finished branch created so far (an allocator's probe samples included)."""
        ...

    def remaining(self, unit: Unit | str) -> float | None:
        """What is left of an enforced budget unit after the calls in flight (None: that
        unit is not limited)."""
        ...

    def should_stop(self) -> bool:
        """Whether the allocator would refuse the next call (e.g. the answers agree)."""
        ...

    @property
    def has_reward(self) -> bool:
        """Whether a reward model is configured (`score` raises `ConfigError` if not)."""
        ...

    def limit(self, **limits: float) -> LimitedContext:
        """A context for part of the search with its own limits (budget units, e.g.
        `tokens=2000, reward_calls=8`), inside the problem's budget and sharing its tree.
        `async with ctx.limit(tokens=2000) as sub:` ends the block, not the search, when
        these limits refuse a call."""
        ...


class LimitedContext(SolveContext, Protocol):
    """A `SolveContext` with its own sub-budget; an async context manager that swallows
    the refusals of its own limits."""

    async def __aenter__(self) -> LimitedContext: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool: ...


class Backend(abc.ABC):
    """Generates continuations for batches of requests.

    A backend either batches by itself (`batches_itself = True`, e.g. vLLM's async engine
    or an HTTP server): the scheduler forwards each request to `agenerate` as it comes; or
    it is handed batches: the scheduler gathers the requests of all running problems and
    calls `generate_batch` (in a worker thread) with up to `max_batch_size` of them.
    """

    name: ClassVar[str] = ""
    batches_itself: ClassVar[bool] = False
    prompt_tokens_per_sample: ClassVar[bool] = False
    """How `Usage.prompt_tokens` counts a request of `n` samples: once (False: the samples
    share one prefill, e.g. `hf`, an OpenAI-compatible server) or once per sample (True:
    every sample is its own engine sequence, e.g. `vllm`; prefix-cache hits then appear
    in `cached_prompt_tokens`). The ledger's worst case follows it."""

    def __init__(self, config: Any) -> None:
        self.config = config

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model / connect. Called once before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources. Called once at the end of the run."""

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[GenerateResult]:
        """Generate for every request; one result per request, in order."""
        raise NotImplementedError(f"backend '{self.name}' implements neither generate_batch")

    async def agenerate(self, request: GenerateRequest) -> GenerateResult:
        """Generate for one request (engines that batch continuously)."""
        import asyncio

        (result,) = await asyncio.to_thread(self.generate_batch, [request])
        return result

    @abc.abstractmethod
    def render(self, problem: Problem) -> str:
        """The prompt text for a problem (chat template applied where the model has one)."""

    @abc.abstractmethod
    def encode(self, text: str) -> list[int]:
        """Token ids of a prompt text (special tokens such as BOS included as the model needs)."""

    def decode(self, token_ids: Sequence[int]) -> str:
        raise NotImplementedError

    @property
    def architecture(self) -> ModelArchitecture | None:
        """The model's shape for the cost model, or None when unknown (e.g. a hosted API)."""
        return None

    @property
    def model_name(self) -> str:
        return str(getattr(self.config, "model", self.name))

    def unavailable(self) -> BackendError | None:
        """The error that makes every further request futile (a server that refuses all
        connections), or None. The runner then starts no more problems and stops the run
        with this error; the problems already solved, and those that failed with it, stay
        stored (a resume retries the latter)."""
        return None


class RewardModel(abc.ABC):
    """Scores branches: one score in [0, 1] per step (higher is better).

    `score_batch` receives the requests of every running problem together; it runs in a
    worker thread.
    """

    name: ClassVar[str] = ""
    is_oracle: ClassVar[bool] = False
    needs_backend: ClassVar[bool] = False
    """True when the constructor takes `(config, backend=...)` (e.g. an LLM judge)."""
    needs_logprobs: ClassVar[bool] = False
    """True when scores are read from the policy's token logprobs: generations are then
    requested with `logprobs=True`."""
    top_logprobs: int = 0
    """How many top alternatives per generated token the reward reads (their entropies
    reach it as `ScoreRequest.step_entropies`); generations are then requested with
    `Sampling.top_logprobs` of at least this."""
    policy: Scheduler | None = None
    """The run's path to the policy model, set by the scheduler for rewards that
    `needs_backend` (e.g. an LLM judge asks the policy through it, on every backend)."""

    def __init__(self, config: Any) -> None:
        self.config = config

    @property
    def architecture(self) -> ModelArchitecture | None:
        """The shape of the model that scores (its FLOPs are charged to the problem's
        `flops`/`eflops`); None when it runs no model or its shape is unknown."""
        return None

    def worst_case(self, requests: Sequence[ScoreRequest]) -> list[ModelPass] | None:
        """The most scoring `requests` may compute, as model passes with nothing cached
        (the ledger authorises the call against it, before the call, like a generate
        call's worst case); `[]` for rewards that run no model. None: it cannot tell, and
        a run limiting `reward_tokens`, `flops` or `eflops` fails at its start."""
        return None

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Load the model. Called once before the first request."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources."""

    @abc.abstractmethod
    def score_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """One result per request, in order."""

    async def ascore_batch(self, requests: Sequence[ScoreRequest]) -> list[ScoreResult]:
        """What the scheduler awaits: `score_batch` in a worker thread. A reward that
        asks the policy model (through `self.policy`) overrides this instead."""
        import asyncio

        return await asyncio.to_thread(self.score_batch, requests)


class Strategy(abc.ABC):
    """A search strategy: a coroutine that solves one problem through its context."""

    name: ClassVar[str] = ""
    uses_reward: ClassVar[bool] = True

    def __init__(self, config: Any) -> None:
        self.config = config

    def models(self) -> dict[str, dict[str, Any]]:
        """Further models this strategy generates with, by the name it passes to
        `ctx.generate(..., model=name)`: each a mapping of overrides of the run's `backend`
        config (`{"model": "gemma3-270m"}`; `name` picks another backend kind). The runner
        builds, starts and batches each like the run's backend. Default: none."""
        return {}

    @abc.abstractmethod
    def solve(
        self, problem: Problem, ctx: SolveContext
    ) -> AsyncIterator[Solution] | Awaitable[Solution]:
        """Search for an answer, spending only through `ctx`.

        Write it as an async generator that yields the current answer whenever there is
        a better one (`async def solve(...): ... yield solution`): when the budget
        refuses a call, the last answer yielded is the problem's answer, so the search
        needs no `try`/`except` of its own. A plain coroutine returning one `Solution`
        works too (a refusal then leaves it only the runner's fallback vote)."""


@dataclass(frozen=True)
class Plan:
    """What `Allocator.prepare` decided for one problem: the budget it may spend (never
    below what it spent already: the runner raises a smaller limit to the spending) and
    the strategy that solves it (None: the run's strategy)."""

    budget: Budget | None = None
    strategy: Strategy | None = None


class Allocator(abc.ABC):
    """Splits the run's budget across problems."""

    name: ClassVar[str] = ""

    def __init__(self, config: Any, budget: Budget) -> None:
        self.config = config
        self.budget = budget

    @abc.abstractmethod
    def budget_for(self, problem: Problem) -> Budget:
        """The budget one problem may spend."""

    def release(self, problem: Problem, budget: Budget, spent: dict[str, float]) -> None:  # noqa: B027
        """Called when a problem finishes, with what it spent (for pooled allocators)."""

    def plan(self, problems: Sequence[Problem]) -> None:  # noqa: B027
        """Called once before solving, with every problem the run will solve (e.g. to size
        a pool as the per-problem budget times their number)."""

    async def prepare(self, problem: Problem, ctx: SolveContext) -> Plan | None:
        """Called after `budget_for`, before the strategy starts, with the problem's
        context: an allocator may spend a probe through it and return a `Plan` (e.g. the
        budget and strategy of the problem's estimated difficulty); None keeps both."""
        return None


class Task(abc.ABC):
    """A source of problems and the rules to grade answers."""

    name: ClassVar[str] = ""

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    def load(self) -> list[Problem]:
        """All problems of the task (after the config's limit, seed and shuffling)."""

    @abc.abstractmethod
    def extract_answer(self, text: str) -> str | None:
        """The final answer stated in a solution text, or None."""

    @abc.abstractmethod
    def is_correct(self, answer: str | None, problem: Problem) -> bool | None:
        """Whether an answer matches the problem's reference (None when unknown)."""

    def normalize(self, answer: str) -> str:
        """A canonical form for voting (equal strings count as the same answer)."""
        return answer.strip()
