"""Core value types that flow between strategies, the scheduler, backends and the store.

They are small, typed and mostly frozen: a strategy builds a tree of `Branch` objects by
awaiting `SolveContext.generate`, the scheduler turns those into `GenerateRequest` batches
for a backend, and the store persists the tree and every `CallRecord`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from ttc.cancel import Abort

FinishReason = Literal["stop", "eos", "length", "error", "cancelled"]
"""Why a generation ended: a stop string matched (`stop`), the model emitted its end token
(`eos`), `max_tokens` ran out (`length`), the branch failed (`error`), or it was stopped
mid-way (`cancelled`: an `ttc.cancel.Abort`; neither finished nor continued)."""


@dataclass(frozen=True, slots=True)
class Problem:
    """One task instance.

    `messages` is a chat (role/content dicts) rendered with the model's chat template; a
    base model without a template gets `prompt` (or the messages joined) instead.
    """

    id: str
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    reference: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    raw: bool = False
    """`prompt` is the model's input as it stands: no chat template, no system prompt
    (what a prompt of OpenAI's `/v1/completions` is)."""


@dataclass(frozen=True, slots=True)
class Sampling:
    """Decoding parameters of one generate call.

    `stop` strings end a generation when they appear in the new text; the matched string is
    kept at the end of the text (so branch text concatenates faithfully).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int = 256
    stop: tuple[str, ...] = ()
    logprobs: bool = False
    top_logprobs: int = 0
    """With `logprobs`, also the `top_logprobs` most likely tokens of every position
    (`Generation.top_logprobs`; the model's raw distribution, as `logprobs`)."""
    seed: int | None = None

    def replace(self, **changes: Any) -> Sampling:
        from dataclasses import replace

        return replace(self, **changes)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one call cost, as the backend reports it."""

    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0

    @property
    def computed_prompt_tokens(self) -> int:
        """Prompt tokens that were actually prefilled (net of prefix-cache hits)."""
        return self.prompt_tokens - self.cached_prompt_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            cached_prompt_tokens=self.cached_prompt_tokens + other.cached_prompt_tokens,
            completion_tokens=self.completion_tokens + other.completion_tokens,
            latency_s=max(self.latency_s, other.latency_s),
        )


@dataclass(frozen=True, slots=True)
class Generation:
    """One sampled continuation."""

    token_ids: tuple[int, ...]
    text: str
    finish_reason: FinishReason
    logprobs: tuple[float, ...] | None = None
    stop_reason: str | None = None
    """The stop string that matched, when `finish_reason == "stop"`."""
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] | None = None
    """Per generated token, the `Sampling.top_logprobs` most likely `(token id, logprob)`
    pairs, most likely first (None unless asked for)."""


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    """One prompt to continue `sampling.n` times.

    `prompt_token_ids` is authoritative when set (search branches continue from the exact
    tokens the model produced); `prompt` is the same prefix as text, for backends that
    only take text.
    """

    prompt: str
    prompt_token_ids: tuple[int, ...] | None
    sampling: Sampling
    abort: Abort | None = field(default=None, compare=False)
    """Stops the request's sequences mid-way (`ttc.cancel`); None: they run to their end."""


@dataclass(frozen=True, slots=True)
class GenerateResult:
    """The `n` generations for one request and what producing them cost."""

    generations: tuple[Generation, ...]
    usage: Usage


@dataclass(frozen=True, slots=True)
class ScoreRequest:
    """Score the steps of one branch.

    `steps` are the branch's step texts in order; `scored_steps` of them already carry
    scores from an earlier call, so an incremental reward model may score only the rest
    (it still returns one score per step).
    """

    problem: Problem
    prompt: str
    steps: tuple[str, ...]
    scored_steps: int = 0
    finished: bool = False
    step_entropies: tuple[tuple[float, ...], ...] | None = None
    """Per step, each token's entropy (nats) over the top-k alternatives the backend
    returned, when the reward asked for them (`RewardModel.top_logprobs`)."""
    step_logprobs: tuple[tuple[float, ...], ...] | None = None
    """Token logprobs of each step, when the generations carried them (for rewards that
    read the policy's own confidence)."""
    verifications: int | None = None
    """How many verifications a generative verifier writes for this branch (None: its
    own setting; rewards that do not verify ignore it)."""


@dataclass(frozen=True, slots=True)
class ModelPass:
    """One sequence a model runs (or, in a worst case, may run): `prompt` tokens of which
    `cached` come from a prefix cache (their KV is not computed), then `decode` tokens
    generated one by one. Reward models describe their work in these, so the ledger can
    authorise a score call against its worst case and charge its FLOPs from the reward
    model's own shape (see `CostModel.pass_flops`)."""

    prompt: int
    cached: int = 0
    decode: int = 0

    @property
    def tokens(self) -> int:
        """Tokens the model computes: the uncached prompt plus the decoded ones."""
        return self.prompt - self.cached + self.decode


@dataclass(frozen=True, slots=True)
class ScoreResult:
    """One score per step in `[0, 1]` (higher is better) and the reward-model tokens used.

    `passes` are the sequences the reward model ran for this request (empty for rewards
    that run no model); when given, `tokens` is the sum of their `tokens`."""

    step_scores: tuple[float, ...]
    tokens: int = 0
    passes: tuple[ModelPass, ...] = ()


@dataclass(slots=True)
class Branch:
    """A node of the search tree: a partial or finished solution.

    Branches are created by `SolveContext.generate`; strategies read them and may set
    `selected` and `extra`. `step_texts` are the texts of the steps from the root, the
    last one being what the newest generation produced.
    """

    id: int
    parent_id: int | None
    step: int
    token_ids: tuple[int, ...]
    step_texts: tuple[str, ...]
    cum_logprob: float = 0.0
    token_logprobs: tuple[float, ...] = ()
    token_entropies: tuple[float, ...] = ()
    """Entropy (nats) of each new token's top-k distribution, when generations carried
    top-k logprobs (see `top_k_entropy`)."""
    token_confidences: tuple[float, ...] = ()
    """Confidence of each new token from its top-k alternatives (`token_confidence`),
    when generations carried top-k logprobs."""
    step_scores: tuple[float, ...] = ()
    finished: bool = False
    finish_reason: FinishReason | None = None
    new_tokens: int = 0
    answer: str | None = None
    """The final answer the branch states (set by `ctx.answer`, cached)."""
    score: float | None = None
    """The aggregated score of the branch's steps (`reward.aggregate`), set by
    `ctx.score`; None until its newest step is scored (a child does not inherit its
    parent's score, and a failed scoring leaves it None: such a branch ranks last)."""
    score_error: str | None = None
    """Why the last scoring of this branch failed, if it did."""
    selected: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    """Strategy-specific annotations (JSON-ready: the store keeps them)."""

    @property
    def text(self) -> str:
        return "".join(self.step_texts)

    @property
    def scored(self) -> bool:
        """True when every step, the newest included, carries a score."""
        return len(self.step_scores) == len(self.step_texts) > 0


@dataclass(slots=True)
class Solution:
    """What a strategy returns: the chosen answer and the branch it came from."""

    answer: str | None
    branch: Branch | None = None
    trace: dict[str, Any] = field(default_factory=dict)
    support: tuple[Branch, ...] = ()
    """Further branches that carry the answer (e.g. every sample voting for it); they
    are marked `selected` with `branch` when the search ends."""


@dataclass(frozen=True, slots=True)
class CallRecord:
    """One backend or reward call of one problem, as the store keeps it."""

    seq: int
    kind: Literal["generate", "score"]
    status: Literal["ok", "refused", "error"]
    n_requests: int
    n_sequences: int
    batch_size: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    reward_tokens: int = 0
    flops: float = 0.0
    latency_s: float = 0.0
    error: str | None = None


@dataclass(frozen=True, slots=True)
class ModelArchitecture:
    """Shape of a decoder-only transformer, for the cost model."""

    params: int
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: int | None = None
    intermediate: int | None = None
    bytes_per_param: float = 4.0

    @property
    def dim_per_head(self) -> int:
        return self.head_dim or self.hidden // self.heads


@dataclass(slots=True)
class ProblemResult:
    """One finished problem: what the store writes in one transaction."""

    index: int
    problem: Problem
    status: Literal["ok", "error"]
    answer: str | None
    correct: bool | None
    pass_at_1: float | None
    majority_correct: bool | None
    oracle_correct: bool | None
    spent: dict[str, float]
    budget: dict[str, float | None]
    branches: list[Branch]
    calls: list[CallRecord]
    n_leaves: int = 0
    trace: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def top_k_entropy(alternatives: tuple[tuple[int, float], ...]) -> float:
    """Entropy (nats) of one position from its top-k `(token, logprob)` alternatives, the
    mass outside them counted as one more outcome: exact when the k cover the
    distribution, otherwise a lower bound of the full entropy."""
    import math

    probs = [math.exp(lp) for _, lp in alternatives]
    rest = max(1.0 - sum(probs), 0.0)
    return -sum(p * math.log(p) for p in (*probs, rest) if p > 0.0)


def token_confidence(alternatives: tuple[tuple[int, float], ...]) -> float:
    """DeepConf's token confidence: minus the mean logprob of a position's top-k
    `(token, logprob)` alternatives (high where the model is sure; 0 without any)."""
    if not alternatives:
        return 0.0
    return -sum(lp for _, lp in alternatives) / len(alternatives)
