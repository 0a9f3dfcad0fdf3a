"""The flow ledger: budgets in NFEs (velocity-network evaluations), seconds and FLOPs.

It keeps the discipline of `ttc.budget.Ledger` for a second modality: every velocity call
is authorised before it runs against what is left (`nfes`, `flops` at the network's cost
per evaluation, `seconds`), and debited after. A call the budget cannot cover raises
`ttc.errors.BudgetExceeded` naming the unit. A `StepPolicy` (the `rollover` flow
allocator's) may add a per-timestep limit: call it with `step=k` and the ledger refuses
what the step's allowance cannot cover.

NFEs count rows: one evaluation of the velocity network for one particle is one NFE,
however the rows are batched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ttc.errors import BudgetExceeded

FLOW_UNITS = ("nfes", "flops", "seconds")
"""The units a `FlowBudget` can limit."""


@dataclass(frozen=True)
class FlowBudget:
    """Limits of one problem (one sample set) of a flow run; None: not enforced."""

    nfes: int | None = None
    flops: float | None = None
    seconds: float | None = None
    policy: StepPolicy | None = field(default=None, compare=False)
    """A per-timestep spending rule from the allocator (e.g. rollover), or None."""

    def limits(self) -> dict[str, float | None]:
        return {u: getattr(self, u) for u in FLOW_UNITS}

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = self.limits()
        if self.policy is not None:
            out["policy"] = self.policy.describe()
        return out


class StepPolicy:
    """A per-timestep NFE limit: `allowance(step, spent)` is what timestep `step` may
    spend given `spent` NFEs so far (None: no per-step limit)."""

    name = "policy"

    def allowance(self, step: int, spent: int) -> int | None:
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class FlowSpent:
    """What one problem spent."""

    nfes: int = 0
    flops: float = 0.0
    seconds: float = 0.0
    velocity_calls: int = 0
    reward_calls: int = 0
    reward_evals: int = 0
    refused_calls: int = 0
    nfes_by_step: dict[int, int] = field(default_factory=dict)
    """NFEs charged to each timestep (calls made with `step=`)."""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["nfes_by_step"] = {str(k): v for k, v in sorted(self.nfes_by_step.items())}
        return out


class FlowLedger:
    """Authorises and debits one problem's velocity calls."""

    def __init__(
        self,
        budget: FlowBudget,
        *,
        flops_per_nfe: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.budget = budget
        self.flops_per_nfe = flops_per_nfe
        self.spent = FlowSpent()
        self._clock = clock
        self._t0 = clock()

    def elapsed(self) -> float:
        return self._clock() - self._t0

    def remaining(self, unit: str = "nfes") -> float | None:
        """What is left of an enforced unit (None: not enforced)."""
        limit = getattr(self.budget, unit)
        if limit is None:
            return None
        used = self.elapsed() if unit == "seconds" else getattr(self.spent, unit)
        return limit - used

    def nfes_left(self, step: int | None = None) -> int | None:
        """NFEs a call may still use (at `step`, within its allowance); None: unlimited."""
        left: float | None = self.remaining("nfes")
        if self.flops_per_nfe > 0:
            fl = self.remaining("flops")
            if fl is not None:
                by_flops = fl // self.flops_per_nfe
                left = by_flops if left is None else min(left, by_flops)
        if step is not None and self.budget.policy is not None:
            allowed = self.budget.policy.allowance(step, self.spent.nfes)
            if allowed is not None:
                left = allowed if left is None else min(left, allowed)
        return None if left is None else max(int(left), 0)

    def authorize(self, nfes: int, *, step: int | None = None) -> None:
        """Refuse (`BudgetExceeded`) a call of `nfes` evaluations that does not fit."""
        seconds = self.remaining("seconds")
        if seconds is not None and seconds <= 0:
            self.spent.refused_calls += 1
            raise BudgetExceeded(
                "seconds", limit=self.budget.seconds or 0, spent=self.elapsed(), requested=0
            )
        left = self.nfes_left(step)
        if left is not None and nfes > left:
            self.spent.refused_calls += 1
            what = "nfes" if step is None else f"step {step} nfes"
            raise BudgetExceeded(
                what, limit=self.spent.nfes + left, spent=self.spent.nfes, requested=nfes
            )

    def charge(self, nfes: int, *, step: int | None = None) -> float:
        """Debit an authorised call; returns its FLOPs."""
        flops = nfes * self.flops_per_nfe
        self.spent.nfes += nfes
        self.spent.flops += flops
        self.spent.velocity_calls += 1
        if step is not None:
            self.spent.nfes_by_step[step] = self.spent.nfes_by_step.get(step, 0) + nfes
        return flops

    def close(self) -> FlowSpent:
        self.spent.seconds = self.elapsed()
        return self.spent
