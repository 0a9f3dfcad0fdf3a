"""The abstract interfaces plugins implement: backends, strategies, reward models,
allocators and tasks.

Every implementation is registered under a `name` together with a config dataclass (its
Hydra schema); the runner builds it as `cls(config)` (plus the collaborators named in the
constructor's documentation below).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ttc.types import (
    GenerateRequest,
    GenerateResult,
    ModelArchitecture,
    ModelPass,
    Problem,
    ScoreRequest,
    ScoreResult,
    Solution,
)

if TYPE_CHECKING:
    from ttc.budget import Budget
    from ttc.context import SolveContext


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


class Strategy(abc.ABC):
    """A search strategy: a coroutine that solves one problem through its context."""

    name: ClassVar[str] = ""
    uses_reward: ClassVar[bool] = True

    def __init__(self, config: Any) -> None:
        self.config = config

    @abc.abstractmethod
    async def solve(self, problem: Problem, ctx: SolveContext) -> Solution:
        """Search for an answer; spend only through `ctx`; catch `BudgetExceeded` and
        return the best answer found so far."""


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
