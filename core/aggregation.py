"""Aggregation: step scores into one branch score, branches into votes, votes into an
answer. Every strategy and the context aggregate through this module, so "how is a
branch ranked" and "how is a vote counted" have one answer each.

- `aggregate(step_scores, how)`: `last`, `min`, `prod` or `mean` of per-step scores.
- `score_of(branch, how)`: a branch's rank key; a branch whose newest step has no score
  (never scored, or its scoring failed) ranks last (-inf), never with its parent's score.
- `tally(branches, answer=..., normalize=...)`: votes per normalised answer (optionally
  weighted), most first, ties broken by the best score, then by first appearance.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from statistics import fmean

from ttc.types import Branch

AGGREGATES: dict[str, Callable[[Sequence[float]], float]] = {
    "last": lambda s: s[-1],
    "min": min,
    "prod": math.prod,
    "mean": fmean,
}
AGGREGATIONS = list(AGGREGATES)
"""The names `aggregate` accepts (the choices of every `aggregate` config field)."""


def aggregate(scores: Sequence[float], how: str) -> float | None:
    """One score from per-step scores (`last`, `min`, `prod` or `mean`); None for none."""
    if not scores:
        return None
    return float(AGGREGATES[how](scores))


def score_of(b: Branch, how: str | None = None) -> float:
    """A branch's rank key: its aggregated score (the context's `reward.aggregate`), or
    its step scores aggregated `how`; -inf when its newest step is not scored."""
    if not b.scored:
        return -math.inf
    if how is not None:
        value = aggregate(b.step_scores, how)
        return -math.inf if value is None else value
    return b.score if b.score is not None else -math.inf


def best_by_score(branches: Sequence[Branch], how: str | None = None) -> Branch | None:
    """The highest-ranked branch (first one on ties), or None."""
    if not branches:
        return None
    return max(branches, key=lambda b: score_of(b, how))


@dataclass(frozen=True, slots=True)
class Tally:
    """Votes for one normalised answer."""

    key: str
    answer: str
    count: int
    weight: float
    best: Branch
    """The highest-scoring branch that states this answer (first one on ties)."""
    members: tuple[Branch, ...] = ()
    """Every branch that states it, in order."""


def tally(
    branches: Sequence[Branch],
    *,
    answer: Callable[[Branch], str | None],
    normalize: Callable[[str], str],
    weights: Sequence[float] | None = None,
    how: str | None = None,
) -> list[Tally]:
    """Group branches by normalised answer; most votes (or weight) first.

    Branches without an answer do not vote. Ties are broken by the best score among the
    answer's branches, then by first appearance, so the order is deterministic.
    """
    mass: dict[str, float] = defaultdict(float)
    members: dict[str, list[Branch]] = defaultdict(list)
    for i, b in enumerate(branches):
        a = answer(b)
        if a is None:
            continue
        key = normalize(a)
        members[key].append(b)  # dicts keep insertion order: first appearance first
        mass[key] += 1.0 if weights is None else float(weights[i])
    out = []
    for k, bs in members.items():
        best = _best(bs, how)
        out.append(Tally(k, answer(best) or k, len(bs), mass[k], best, tuple(bs)))
    first = {t.key: i for i, t in enumerate(out)}
    out.sort(key=lambda t: (-t.weight, -score_of(t.best, how), first[t.key]))
    return out


def _best(branches: Sequence[Branch], how: str | None) -> Branch:
    """The first of the highest-ranked branches (`max` keeps the first on ties)."""
    return max(branches, key=lambda b: score_of(b, how))
