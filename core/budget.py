"""Budgets and the per-problem ledger that enforces them.

Every call a strategy makes goes through its problem's `Ledger`: before the call the
ledger authorises it against the worst case (all prompt tokens computed, every sample
running to `max_tokens`), shrinking `max_tokens` to what is left where that suffices and
refusing with `BudgetExceeded` otherwise; after the call it debits what was really spent.
So every enforced unit stays within its limit, whatever the backend returns.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from ttc.cost import CostModel
from ttc.errors import BudgetExceeded

UNITS = (
    "samples",
    "tokens",
    "prefill_tokens",
    "reward_tokens",
    "reward_calls",
    "flops",
    "seconds",
)


@dataclass(frozen=True)
class Budget:
    """Limits in several units at once; None means not enforced."""

    samples: int | None = None
    tokens: int | None = None
    prefill_tokens: int | None = None
    reward_tokens: int | None = None
    reward_calls: int | None = None
    flops: float | None = None
    seconds: float | None = None

    @classmethod
    def from_config(cls, cfg: Any) -> Budget:
        return cls(**{f.name: getattr(cfg, f.name, None) for f in fields(cls)})

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)

    def scaled(self, factor: float) -> Budget:
        """Every limit multiplied by `factor` (integers rounded down, at least 1)."""
        out: dict[str, float | None] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None:
                out[f.name] = None
            elif isinstance(v, int):
                out[f.name] = max(int(v * factor), 1)
            else:
                out[f.name] = v * factor
        return Budget(**out)  # type: ignore[arg-type]


@dataclass
class Spent:
    """What one problem spent, in every unit (also the units no limit is set for)."""

    samples: int = 0
    tokens: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    prefill_tokens: int = 0
    reward_tokens: int = 0
    reward_calls: int = 0
    flops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0
    generate_calls: int = 0
    refused_calls: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Ledger:
    """Debits and enforces one problem's budget."""

    def __init__(self, budget: Budget, cost: CostModel | None = None) -> None:
        self.budget = budget
        self.cost = cost or CostModel(None)
        self.spent = Spent()
        self._t0 = time.monotonic()

    # -- queries ----------------------------------------------------------------------
    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def remaining(self, unit: str) -> float | None:
        limit = getattr(self.budget, unit)
        if limit is None:
            return None
        spent = self.elapsed() if unit == "seconds" else getattr(self.spent, unit)
        return limit - spent

    def exhausted(self) -> bool:
        """True when some enforced unit has nothing left."""
        for unit in UNITS:
            left = self.remaining(unit)
            if left is not None and left <= 0:
                return True
        return False

    def _refuse(self, unit: str, requested: float) -> BudgetExceeded:
        limit = getattr(self.budget, unit)
        spent = self.elapsed() if unit == "seconds" else getattr(self.spent, unit)
        self.spent.refused_calls += 1
        return BudgetExceeded(unit, limit=limit, spent=spent, requested=requested)

    # -- generation -------------------------------------------------------------------
    def authorize_generate(self, prompt_lens: Sequence[int], n: int, max_tokens: int) -> int:
        """Check a generate call against every enforced unit.

        Returns the `max_tokens` the call may use (possibly less than asked), or raises
        `BudgetExceeded` when not even one token per sequence fits.
        """
        sequences = len(prompt_lens) * n
        left = self.remaining("seconds")
        if left is not None and left <= 0:
            raise self._refuse("seconds", 0)
        left = self.remaining("samples")
        if left is not None and sequences > left:
            raise self._refuse("samples", sequences)
        left = self.remaining("prefill_tokens")
        if left is not None and sum(prompt_lens) > left:
            # worst case: nothing comes from the prefix cache
            raise self._refuse("prefill_tokens", sum(prompt_lens))
        allowed = max_tokens
        left = self.remaining("tokens")
        if left is not None:
            allowed = min(allowed, int(left // sequences))
            if allowed < 1:
                raise self._refuse("tokens", sequences)
        left = self.remaining("flops")
        if left is not None and self.cost.known:
            allowed = self._fit_flops(prompt_lens, n, allowed, left)
        return allowed

    def _worst_flops(self, prompt_lens: Sequence[int], n: int, max_tokens: int) -> float:
        return sum(
            self.cost.generation_flops(
                prompt_len=p, computed_prompt=p, completion_lens=[max_tokens] * n
            )
            for p in prompt_lens
        )

    def _fit_flops(self, prompt_lens: Sequence[int], n: int, allowed: int, left: float) -> int:
        if self._worst_flops(prompt_lens, n, allowed) <= left:
            return allowed
        lo, hi = 0, allowed  # largest max_tokens whose worst case fits: binary search
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if self._worst_flops(prompt_lens, n, mid) <= left:
                lo = mid
            else:
                hi = mid - 1
        if lo < 1:
            raise self._refuse("flops", self._worst_flops(prompt_lens, n, 1))
        return lo

    def debit_generate(
        self,
        *,
        sequences: int,
        prompt_tokens: int,
        cached_prompt_tokens: int,
        completion_tokens: int,
        flops: float,
        bytes_moved: float = 0.0,
    ) -> None:
        s = self.spent
        s.generate_calls += 1
        s.samples += sequences
        s.tokens += completion_tokens
        s.prompt_tokens += prompt_tokens
        s.cached_prompt_tokens += cached_prompt_tokens
        s.prefill_tokens += prompt_tokens - cached_prompt_tokens
        s.flops += flops
        s.bytes += bytes_moved

    # -- reward -----------------------------------------------------------------------
    def authorize_score(self, n_requests: int) -> None:
        left = self.remaining("seconds")
        if left is not None and left <= 0:
            raise self._refuse("seconds", 0)
        left = self.remaining("reward_calls")
        if left is not None and left < 1:
            raise self._refuse("reward_calls", 1)
        left = self.remaining("reward_tokens")
        if left is not None and left <= 0:
            raise self._refuse("reward_tokens", n_requests)

    def debit_score(self, *, tokens: int) -> None:
        self.spent.reward_calls += 1
        self.spent.reward_tokens += tokens

    def close(self) -> Spent:
        self.spent.seconds = self.elapsed()
        return self.spent
