"""Budgets and the per-problem ledger that enforces them.

Every call a strategy makes goes through its problem's `Ledger`: before the call the
ledger authorises it against the worst case (all prompt tokens computed, every sample
running to `max_tokens`), shrinking `max_tokens` to what is left where that suffices and
refusing with `BudgetExceeded` otherwise; after the call it debits what was really spent.
So every enforced unit stays within its limit, whatever the backend returns.

Allocators may attach a `SpendPolicy` to a problem's budget: a per-problem rule the
ledger consults before every generate call (it may lower `max_tokens` or refuse) and
tells about every call's outcome. Built-in policies: `RolloverSteps` (per-step budgets
whose unspent part rolls over to later steps) and `AgreementStop` (refuse further
sampling once the answers drawn agree enough: an early stop every strategy honours,
since a refusal ends its search with the best answer it has).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ttc.cost import CostModel
from ttc.errors import BudgetExceeded, ConfigError, TtcError
from ttc.types import ModelPass

UNITS = (
    "samples",
    "tokens",
    "prefill_tokens",
    "reward_tokens",
    "reward_calls",
    "flops",
    "eflops",
    "seconds",
)
"""The units a `Budget` can limit (every one of them is also counted in `Spent`)."""

SCORE_WORK_UNITS = ("reward_tokens", "flops", "eflops")
"""The units a score call spends in besides `reward_calls` (authorised at its worst case)."""


@dataclass(frozen=True)
class Budget:
    """Limits in several units at once; None means not enforced."""

    samples: int | None = None
    tokens: int | None = None
    prefill_tokens: int | None = None
    reward_tokens: int | None = None
    reward_calls: int | None = None
    flops: float | None = None
    eflops: float | None = None
    """Kinetics effective FLOPs: FLOPs + intensity * bytes moved (see `ttc.cost`)."""
    seconds: float | None = None
    policy: SpendPolicy | None = field(default=None, compare=False)
    """A per-problem spending rule from the allocator (not a limit; see `SpendPolicy`)."""

    @classmethod
    def from_config(cls, cfg: Any) -> Budget:
        return cls(**{unit: getattr(cfg, unit, None) for unit in UNITS})

    def limits(self) -> dict[str, float | None]:
        """The limit of every unit (None: not enforced)."""
        return {unit: getattr(self, unit) for unit in UNITS}

    def as_dict(self) -> dict[str, Any]:
        """The limits, plus the policy's description under `policy` when there is one
        (JSON-ready: the store keeps it with the problem's result)."""
        out: dict[str, Any] = self.limits()
        if self.policy is not None:
            out["policy"] = self.policy.describe()
        return out

    def replace(self, **changes: Any) -> Budget:
        from dataclasses import replace

        return replace(self, **changes)

    def scaled(self, factor: float) -> Budget:
        """Every limit multiplied by `factor` (integers rounded down, at least 1)."""
        out: dict[str, Any] = {}
        for unit, v in self.limits().items():
            if v is None:
                out[unit] = None
            elif isinstance(v, int):
                out[unit] = max(int(v * factor), 1)
            else:
                out[unit] = v * factor
        return Budget(**out, policy=self.policy)

    def covering(self, spent: Spent) -> Budget:
        """This budget with every limit raised, where needed, to what `spent` already
        used (a budget chosen after spending began is never below the spending)."""
        out: dict[str, Any] = {}
        for unit, v in self.limits().items():
            used = getattr(spent, unit)
            out[unit] = None if v is None else (v if v >= used else type(v)(used))
        return Budget(**out, policy=self.policy)


class SpendPolicy:
    """A per-problem spending rule an allocator attaches to `Budget.policy`.

    The ledger calls `limit_generate` before every generate call (after the unit limits
    are checked) and `after_generate` after it; a policy with `wants_answers` is also told
    the answers the call's samples stated (`observe_answers`, called by the context).
    One instance serves one problem: `Allocator.budget_for` makes a fresh one.
    """

    name = "policy"
    wants_answers = False

    def limit_generate(self, ledger: Ledger, *, sequences: int, max_tokens: int) -> int:
        """The `max_tokens` the call may use (at most `max_tokens`); raise
        `BudgetExceeded` (via `ledger.refuse`) to refuse it."""
        return max_tokens

    def after_generate(self, ledger: Ledger, *, tokens: int, samples: int) -> None:
        """What the call just spent (already debited)."""

    def observe_answers(self, answers: Sequence[str]) -> None:
        """Normalised final answers stated by the samples of the last call."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary stored with the problem's budget."""
        return {"name": self.name}


class EarlyStop(BudgetExceeded):
    """A policy ended the search before the limits did (e.g. the answers agree)."""

    def __init__(self, reason: str, *, value: float, threshold: float) -> None:
        TtcError.__init__(
            self,
            f"stopped early ({reason}): {value:.3g} >= {threshold:.3g}",
            hint="lower the allocator's threshold to stop sooner, raise it to sample more",
        )
        self.unit = reason
        self.limit = threshold
        self.spent = value
        self.requested = 0.0


class RolloverSteps(SpendPolicy):
    """Per-step budgets: the problem's `total` (in `unit`, tokens or samples) is split
    evenly over `steps` generate calls; what a step leaves unspent rolls over to the
    next ones. Call `k` (0-based) may bring the unit's spending up to
    `total * (k + 1) / steps`; from call `steps - 1` on, up to `total`."""

    name = "rollover"

    def __init__(self, *, unit: str, total: float, steps: int) -> None:
        if unit not in ("tokens", "samples"):
            raise ValueError(f"rollover steps budget tokens or samples, not {unit!r}")
        self.unit = unit
        self.total = total
        self.steps = max(steps, 1)
        self.allowances: list[float] = []
        """The allowance each call got (for inspection and the store)."""

    def allowance(self, step: int, spent: float) -> float:
        """What call `step` may spend, given `spent` so far."""
        cap = self.total * min(step + 1, self.steps) / self.steps
        return cap - spent

    def limit_generate(self, ledger: Ledger, *, sequences: int, max_tokens: int) -> int:
        spent = float(getattr(ledger.spent, self.unit))
        left = self.allowance(ledger.spent.generate_calls, spent)
        self.allowances.append(left)
        if self.unit == "samples":
            if sequences > left:
                raise ledger.refuse(f"step {self.unit}", sequences, limit=left + spent)
            return max_tokens
        allowed = min(max_tokens, int(left // sequences))
        if allowed < 1:
            raise ledger.refuse(f"step {self.unit}", sequences, limit=left + spent)
        return allowed

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "unit": self.unit,
            "total": self.total,
            "steps": self.steps,
            "allowances": self.allowances,
        }


class AgreementStop(SpendPolicy):
    """Refuse further generation once at least `min_answers` answers were stated and the
    most common one holds a share of at least `threshold` of them."""

    name = "adaptive_stop"
    wants_answers = True

    def __init__(self, *, min_answers: int, threshold: float) -> None:
        self.min_answers = min_answers
        self.threshold = threshold
        self.votes: Counter[str] = Counter()
        self.stopped = False

    def agreement(self) -> float:
        """The leading answer's share of the answers seen (0 when none)."""
        total = sum(self.votes.values())
        return self.votes.most_common(1)[0][1] / total if total else 0.0

    def should_stop(self) -> bool:
        return sum(self.votes.values()) >= self.min_answers and self.agreement() >= self.threshold

    def observe_answers(self, answers: Sequence[str]) -> None:
        self.votes.update(answers)

    def limit_generate(self, ledger: Ledger, *, sequences: int, max_tokens: int) -> int:
        if self.should_stop():
            self.stopped = True
            ledger.spent.refused_calls += 1
            raise EarlyStop("agreement", value=self.agreement(), threshold=self.threshold)
        return max_tokens

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "answers": sum(self.votes.values()),
            "agreement": self.agreement(),
            "stopped": self.stopped,
        }


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
    eflops: float = 0.0
    bytes: float = 0.0
    seconds: float = 0.0
    generate_calls: int = 0
    refused_calls: int = 0

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


class Ledger:
    """Debits and enforces one problem's budget."""

    def __init__(
        self,
        budget: Budget,
        cost: CostModel | None = None,
        *,
        reward_cost: CostModel | None = None,
    ) -> None:
        self.budget = budget
        self.cost = cost or CostModel(None)
        self.reward_cost = reward_cost or CostModel(None)
        """The reward model's own cost model (its FLOPs count in `flops`/`eflops`)."""
        self.spent = Spent()
        self._t0 = time.monotonic()

    @property
    def policy(self) -> SpendPolicy | None:
        return self.budget.policy

    @property
    def wants_answers(self) -> bool:
        """True when the budget's policy wants the answers samples state (the context then
        passes them to `observe_answers`)."""
        return self.policy is not None and self.policy.wants_answers

    def observe_answers(self, answers: Sequence[str]) -> None:
        if self.policy is not None:
            self.policy.observe_answers(answers)

    def should_stop(self) -> bool:
        """Whether the budget's policy would refuse the next call (a hint strategies may
        consult before starting a round; the refusal comes either way)."""
        stop = getattr(self.policy, "should_stop", None)
        return bool(stop()) if stop is not None else False

    def rebudget(self, budget: Budget) -> None:
        """Replace the budget (an allocator's plan), raising its limits where needed to
        what was already spent, so the stored budget is never below the spending."""
        self.spent.seconds = self.elapsed()
        self.budget = budget.covering(self.spent)

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

    def refuse(self, what: str, requested: float, *, limit: float) -> BudgetExceeded:
        """A refusal for a policy's own limit (`what` names it), counted as refused."""
        unit = what.split()[-1]
        self.spent.refused_calls += 1
        spent = float(getattr(self.spent, unit, 0.0))
        return BudgetExceeded(what, limit=limit, spent=spent, requested=requested)

    # -- generation -------------------------------------------------------------------
    def _unmeasurable(self, unit: str, what: str) -> ConfigError:
        return ConfigError(
            f"budget.{unit} is enforced but {what}'s FLOPs cannot be counted: its shape is unknown",
            key=f"budget.{unit}",
            hint="give the model's shape (backend.tokenizer=<model spec> on the openai "
            f"backend) or remove budget.{unit}",
        )

    def authorize_generate(
        self,
        prompt_lens: Sequence[int],
        n: int,
        max_tokens: int,
        *,
        per_sample: bool = False,
    ) -> int:
        """Check a generate call against every enforced unit.

        Returns the `max_tokens` the call may use (possibly less than asked), or raises
        `BudgetExceeded` when not even one token per sequence fits. `per_sample`: the
        backend counts (and may compute) the prompt once per sample
        (`Backend.prompt_tokens_per_sample`), so the worst case prefills it `n` times.
        """
        prefills = n if per_sample else 1
        sequences = len(prompt_lens) * n
        left = self.remaining("seconds")
        if left is not None and left <= 0:
            raise self._refuse("seconds", 0)
        left = self.remaining("samples")
        if left is not None and sequences > left:
            raise self._refuse("samples", sequences)
        left = self.remaining("prefill_tokens")
        worst_prefill = sum(prompt_lens) * prefills
        if left is not None and worst_prefill > left:
            # worst case: nothing comes from the prefix cache
            raise self._refuse("prefill_tokens", worst_prefill)
        allowed = max_tokens
        left = self.remaining("tokens")
        if left is not None:
            allowed = min(allowed, int(left // sequences))
            if allowed < 1:
                raise self._refuse("tokens", sequences)
        for unit in ("flops", "eflops"):
            left = self.remaining(unit)
            if left is not None:
                if not self.cost.known:
                    raise self._unmeasurable(unit, "the policy model")
                allowed = self._fit(unit, prompt_lens, n, allowed, left, prefills=prefills)
        if self.policy is not None:
            allowed = self.policy.limit_generate(self, sequences=sequences, max_tokens=allowed)
        return allowed

    def _worst(
        self, unit: str, prompt_lens: Sequence[int], n: int, max_tokens: int, *, prefills: int = 1
    ) -> float:
        """The most a call can spend in `flops` or `eflops`: every prompt token computed
        (`prefills` times), every sample running to `max_tokens` (decoded alone, so it
        reads all weights)."""
        k = prefills
        flops = sum(
            self.cost.generation_flops(
                prompt_len=p, computed_prompt=k * p, completion_lens=[max_tokens] * n, prefills=k
            )
            for p in prompt_lens
        )
        if unit == "flops":
            return flops
        moved = sum(
            k * self.cost.prefill_bytes(p)
            + n * self.cost.decode_bytes(max_tokens, context_before=p, batch=1)
            for p in prompt_lens
        )
        return self.cost.eflops(flops, moved)

    def _fit(
        self,
        unit: str,
        prompt_lens: Sequence[int],
        n: int,
        allowed: int,
        left: float,
        *,
        prefills: int = 1,
    ) -> int:
        def worst(m: int) -> float:
            return self._worst(unit, prompt_lens, n, m, prefills=prefills)

        if worst(allowed) <= left:
            return allowed
        lo, hi = 0, allowed  # largest max_tokens whose worst case fits: binary search
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if worst(mid) <= left:
                lo = mid
            else:
                hi = mid - 1
        if lo < 1:
            raise self._refuse(unit, worst(1))
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
        s.eflops += self.cost.eflops(flops, bytes_moved) if self.cost.known else 0.0
        if self.policy is not None:
            self.policy.after_generate(self, tokens=completion_tokens, samples=sequences)

    # -- reward -----------------------------------------------------------------------
    @property
    def bounds_score_work(self) -> bool:
        """True when a score call must be authorised against the reward model's worst
        case (`RewardModel.worst_case`): `reward_tokens`, `flops` or `eflops` is enforced."""
        return any(getattr(self.budget, u) is not None for u in SCORE_WORK_UNITS)

    def authorize_score(self, worst: Sequence[ModelPass] | None) -> None:
        """Check a score call against every enforced unit, at its worst case `worst`
        (the reward model's passes with nothing cached; None: not known, which is an
        error when `bounds_score_work`). Raises `BudgetExceeded` when it does not fit."""
        left = self.remaining("seconds")
        if left is not None and left <= 0:
            raise self._refuse("seconds", 0)
        left = self.remaining("reward_calls")
        if left is not None and left < 1:
            raise self._refuse("reward_calls", 1)
        if not self.bounds_score_work:
            return
        if worst is None:
            unit = next(u for u in SCORE_WORK_UNITS if getattr(self.budget, u) is not None)
            raise ConfigError(
                f"budget.{unit} is enforced but the reward model cannot bound what a call "
                "may spend (its worst_case returns None)",
                key=f"budget.{unit}",
                hint=f"implement RewardModel.worst_case, or remove budget.{unit}",
            )
        tokens = sum(p.tokens for p in worst)
        left = self.remaining("reward_tokens")
        if left is not None and tokens > left:
            raise self._refuse("reward_tokens", tokens)
        for unit in ("flops", "eflops"):
            left = self.remaining(unit)
            if left is None or tokens == 0:
                continue
            if not self.reward_cost.known:
                raise self._unmeasurable(unit, "the reward model")
            need = self._score_work(unit, worst)
            if need > left:
                raise self._refuse(unit, need)

    def _score_work(self, unit: str, passes: Sequence[ModelPass]) -> float:
        cost = self.reward_cost
        flops = sum(cost.pass_flops(p) for p in passes)
        if unit == "flops":
            return flops
        return cost.eflops(flops, sum(cost.pass_bytes(p) for p in passes))

    def debit_score(self, *, tokens: int, passes: Sequence[ModelPass] = ()) -> None:
        """What a score call spent: reward-model tokens, and the FLOPs and bytes of its
        passes on the reward model's own shape."""
        self.spent.reward_calls += 1
        self.spent.reward_tokens += tokens
        if passes and self.reward_cost.known:
            cost = self.reward_cost
            flops = sum(cost.pass_flops(p) for p in passes)
            moved = sum(cost.pass_bytes(p) for p in passes)
            self.spent.flops += flops
            self.spent.bytes += moved
            self.spent.eflops += cost.eflops(flops, moved)

    def close(self) -> Spent:
        self.spent.seconds = self.elapsed()
        return self.spent
