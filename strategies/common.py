"""Helpers every search strategy shares: configs, sampling a step, drawing whole
samples, marking finished branches, building a `Solution`, and the weights of
sequential Monte Carlo. Ranking and voting live in `ttc.aggregation`.

A strategy does not catch refusals: it yields its current answer as it goes, and
`ttc.context.run_strategy` ends the search with the last one when a call is refused.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ttc.aggregation import Tally, tally
from ttc.config import StrategyConfig, bounded
from ttc.interfaces import SolveContext
from ttc.types import Branch, Sampling, Solution


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


def votes(
    ctx: SolveContext,
    branches: Sequence[Branch],
    weights: Sequence[float] | None = None,
    *,
    how: str | None = None,
) -> list[Tally]:
    """`ttc.aggregation.tally` with the task's answers: most votes (or weight) first."""
    return tally(branches, answer=ctx.answer, normalize=ctx.normalize, weights=weights, how=how)


def majority(ctx: SolveContext, branches: Sequence[Branch]) -> Branch | None:
    """The best branch stating the most frequent (normalised) answer."""
    found = votes(ctx, branches)
    if not found:
        return branches[0] if branches else None
    return found[0].best


def solution(
    ctx: SolveContext,
    branch: Branch | None,
    *,
    answer: str | None = None,
    support: Iterable[Branch] = (),
    **trace: Any,
) -> Solution:
    """A `Solution` for `branch`, its answer taken from the branch unless given (a vote
    may choose an answer that several branches state: pass them as `support`). Nothing
    is marked until the search ends (`run_strategy` marks the final one)."""
    if branch is not None and answer is None:
        answer = ctx.answer(branch)
    return Solution(answer=answer, branch=branch, trace=dict(trace), support=tuple(support))


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
