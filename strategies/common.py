"""Helpers every search strategy shares: ending a search gracefully, voting over answers,
ranking by score, and marking the branches a strategy keeps.

A strategy ends its search when the context refuses a call (`BudgetExceeded`) or when
every request of a call failed (`BackendError`); both are caught with `STOPS` and the
best answer found so far is returned.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ttc.config import StrategyConfig, bounded
from ttc.context import SolveContext, aggregate
from ttc.errors import BackendError, BudgetExceeded
from ttc.types import Branch, Sampling, Solution

STOPS: tuple[type[Exception], ...] = (BudgetExceeded, BackendError)
"""Exceptions that end a search (not the run): the budget refused a call, or every request
of a call failed (the context already recorded the failed branches)."""


@dataclass
class SampleConfig(StrategyConfig):
    """Fields every whole-sample strategy shares (best-of-N, voting)."""

    temperature: float = bounded(0.8, ge=0.0)
    top_p: float = bounded(1.0, gt=0.0, le=1.0)
    top_k: int = bounded(0, ge=0)
    min_p: float = bounded(0.0, ge=0.0, le=1.0)
    max_tokens: int = bounded(512, ge=1, help="tokens per sample")


@dataclass
class StepSearchConfig(StrategyConfig):
    """Fields every step-level search shares (beam search, DVTS, particle filtering)."""

    max_steps: int = bounded(16, ge=1, help="steps (rounds) at most")
    step_delimiter: str = "\n\n"
    """A step ends where this string appears; empty: steps of `step_tokens` tokens."""
    step_tokens: int = bounded(128, ge=1, help="tokens per step at most")
    temperature: float = bounded(0.8, ge=0.0, help="sampling temperature of the policy")
    top_p: float = bounded(1.0, gt=0.0, le=1.0)


def ended_by(ctx: SolveContext, exc: BaseException) -> str:
    """The `trace["ended_by"]` value for an exception in `STOPS`.

    A backend failure before the search has any branch to answer from is re-raised: the
    problem is then recorded as an error with the backend's message, not as a silent
    "no answer"."""
    if isinstance(exc, BackendError) and len(ctx.branches) <= 1:
        raise exc
    return "budget" if isinstance(exc, BudgetExceeded) else "backend_error"


def score_of(b: Branch, how: str | None = None) -> float:
    """A branch's aggregated score: the context's (`reward.aggregate`) by default, or its
    step scores aggregated `how`; unscored branches rank last."""
    if how is not None and b.step_scores:
        value = aggregate(b.step_scores, how)
        return float("-inf") if value is None else value
    return b.score if b.score is not None else float("-inf")


def mark_steps(children: Iterable[Branch]) -> None:
    """Step-level search: a step cut at `max_tokens` (finish reason `length`) is a step,
    not the end of the solution; only the end-of-sequence token (or an error) ends it.

    The context marks every non-`stop` finish as finished, which is right for whole
    samples but would end a token-count step search after its first step.
    """
    for b in children:
        if b.finish_reason == "length":
            b.finished = False


async def draw_samples(ctx: SolveContext, sampling: Sampling) -> list[Branch]:
    """`sampling.n` whole samples from the root. Finished samples already drawn from the
    root (an allocator's probe) count among them: only the rest are generated."""
    have = [b for b in ctx.leaves() if b.parent_id == ctx.root.id]
    need = sampling.n - len(have)
    if need <= 0:
        return have[: sampling.n]
    return have + await ctx.generate([ctx.root], sampling.replace(n=need))


def finish_all(samples: Iterable[Branch]) -> None:
    """Whole-solution sampling: a sample is a leaf whatever ended it."""
    for b in samples:
        b.finished = True


@dataclass(frozen=True, slots=True)
class Tally:
    """Votes for one normalised answer."""

    key: str
    answer: str
    count: int
    weight: float
    best: Branch
    """The highest-scoring branch that states this answer (first one on ties)."""


def tally(
    ctx: SolveContext,
    branches: Sequence[Branch],
    weights: Sequence[float] | None = None,
    *,
    how: str | None = None,
) -> list[Tally]:
    """Group branches by normalised answer; most votes (or weight) first.

    Branches without an answer do not vote. Ties are broken by the best score among the
    answer's branches, then by first appearance, so the order is deterministic.
    """
    counts: dict[str, int] = defaultdict(int)
    mass: dict[str, float] = defaultdict(float)
    order: dict[str, int] = {}
    best: dict[str, tuple[str, Branch]] = {}
    for i, b in enumerate(branches):
        a = ctx.answer(b)
        if a is None:
            continue
        key = ctx.normalize(a)
        order.setdefault(key, i)
        counts[key] += 1
        mass[key] += 1.0 if weights is None else float(weights[i])
        if key not in best or score_of(b, how) > score_of(best[key][1], how):
            best[key] = (a, b)
    out = [
        Tally(key=k, answer=best[k][0], count=counts[k], weight=mass[k], best=best[k][1])
        for k in counts
    ]
    out.sort(key=lambda t: (-t.weight, -score_of(t.best, how), order[t.key]))
    return out


def best_by_score(branches: Sequence[Branch], how: str | None = None) -> Branch | None:
    """The highest-scoring branch (first one on ties), or None."""
    if not branches:
        return None
    return max(branches, key=lambda b: score_of(b, how))


def solution(
    ctx: SolveContext, branch: Branch | None, *, answer: str | None = None, **trace: object
) -> Solution:
    """A `Solution` for `branch` (marked selected), its answer taken from the branch unless
    given (a vote may choose an answer that several branches state)."""
    if branch is not None:
        branch.selected = True
        if answer is None:
            answer = ctx.answer(branch)
    return Solution(answer=answer, branch=branch, trace=dict(trace))


def log_odds(p: float, eps: float = 1e-6) -> float:
    """log(p / (1 - p)), clamped away from the infinities at 0 and 1."""
    p = min(max(p, eps), 1.0 - eps)
    return math.log(p / (1.0 - p))


def normalise_log_weights(logw: Sequence[float]) -> list[float]:
    """Softmax of log weights (shifted by their maximum, so it never overflows)."""
    if not logw:
        return []
    top = max(logw)
    if top == float("-inf"):
        return [1.0 / len(logw)] * len(logw)
    raw = [math.exp(v - top) for v in logw]
    total = sum(raw)
    return [r / total for r in raw]


def effective_sample_size(weights: Sequence[float]) -> float:
    """Kish's effective sample size 1 / sum(w^2) of normalised weights (N when uniform,
    1 when one particle holds all the weight)."""
    sq = sum(w * w for w in weights)
    return 1.0 / sq if sq > 0 else 0.0


def step_sampling(
    *, n: int, temperature: float, top_p: float, step_delimiter: str, step_tokens: int
) -> Sampling:
    """Sampling of one reasoning step: it ends at `step_delimiter` (kept in the text) or
    after `step_tokens` tokens; an empty delimiter makes every step `step_tokens` long."""
    return Sampling(
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_tokens=step_tokens,
        stop=(step_delimiter,) if step_delimiter else (),
    )
