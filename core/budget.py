"""Budgets and the per-problem ledger that enforces them.

Every call a strategy makes goes through its problem's `Ledger`: before the call the
ledger authorises it against the worst case (all prompt tokens computed, every sample
running to `max_tokens`), shrinking `max_tokens` to what is left where that suffices and
refusing with `BudgetExceeded` otherwise. An authorised call holds its worst case
reserved (a `Grant`) until it is charged, so calls of one problem that run concurrently
cannot together spend more than is left; `charge_generate` / `charge_score` then debit
what was really spent (the ledger does the cost arithmetic) and release the rest. So
every enforced unit stays within its limit, whatever the backend returns. `seconds` is
the exception: wall time cannot be reserved, so a call that starts with time left may
end past the limit (by at most its own duration).

A ledger may have a parent (`Ledger.sub`): a sub-budget, e.g. one phase of a search
(`ctx.limit(tokens=...)`), enforced together with every budget above it.

Allocators may attach a `SpendPolicy` to a problem's budget: a per-problem rule the
ledger consults before every generate call (it may lower `max_tokens` or refuse) and
tells about every call's outcome. The policies live with their allocators
(`ttc.plugins.allocators.rollover`, `...adaptive_stop`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any

from ttc.cost import CostModel
from ttc.errors import BudgetExceeded, ConfigError
from ttc.types import ModelPass


class Unit(StrEnum):
    """A unit a `Budget` can limit (every one is also counted in `Spent`). Members are
    strings, so `Unit.TOKENS == "tokens"` and config keys map onto them directly."""

    SAMPLES = "samples"
    TOKENS = "tokens"
    PREFILL_TOKENS = "prefill_tokens"
    REWARD_TOKENS = "reward_tokens"
    REWARD_CALLS = "reward_calls"
    FLOPS = "flops"
    EFLOPS = "eflops"
    SECONDS = "seconds"

    @classmethod
    def parse(cls, name: str) -> Unit:
        """The unit called `name`; a one-line `ValueError` listing the units otherwise."""
        try:
            return cls(name)
        except ValueError:
            raise ValueError(
                f"{name!r} is not a budget unit; units: {', '.join(u.value for u in cls)}"
            ) from None


UNITS: tuple[Unit, ...] = tuple(Unit)
"""Every unit, in order."""
INT_UNITS = frozenset(
    {Unit.SAMPLES, Unit.TOKENS, Unit.PREFILL_TOKENS, Unit.REWARD_TOKENS, Unit.REWARD_CALLS}
)
"""Units counted in whole numbers (the others are floats)."""
SCORE_WORK_UNITS = (Unit.REWARD_TOKENS, Unit.FLOPS, Unit.EFLOPS)
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
        return cls(**{unit.value: getattr(cfg, unit.value, None) for unit in UNITS})

    def limits(self) -> dict[str, float | None]:
        """The limit of every unit (None: not enforced)."""
        return {unit.value: getattr(self, unit.value) for unit in UNITS}

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

    def should_stop(self) -> bool:
        """Whether the next generate call would be refused (a hint; see `Ledger`)."""
        return False

    def after_generate(self, ledger: Ledger, *, tokens: int, samples: int) -> None:
        """What the call just spent (already debited)."""

    def observe_answers(self, answers: Sequence[str]) -> None:
        """Normalised final answers stated by the samples of the last call."""

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary stored with the problem's budget."""
        return {"name": self.name}


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


@dataclass
class Grant:
    """An authorised call: the `max_tokens` it may use and the worst case it holds
    reserved in each unit until `Ledger.charge_*` (or `release`) settles it."""

    max_tokens: int
    held: dict[Unit, float]
    settled: bool = False
    prefills: int = 1
    """How many sequences prefill each prompt (n where the backend counts the prompt
    per sample, see `Backend.prompt_tokens_per_sample`)."""


@dataclass(frozen=True)
class GenerateCharge:
    """What one generate call spent, as the ledger computed it (for the call record)."""

    sequences: int = 0
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0
    completion_tokens: int = 0
    flops: float = 0.0
    bytes_moved: float = 0.0
    eflops: float = 0.0
    request_flops: tuple[float, ...] = ()
    """The FLOPs of each served request, in order."""


@dataclass(frozen=True)
class Served:
    """One request's result as the ledger charges it: the prompt length the request
    continued from, the tokens of each generation, the backend's usage and the size of
    the batch it ran in."""

    prompt_len: int
    completion_lens: Sequence[int]
    prompt_tokens: int
    cached_prompt_tokens: int
    completion_tokens: int
    batch_size: int = 1


class Ledger:
    """Authorises, reserves and debits one problem's (or one sub-budget's) spending."""

    def __init__(
        self,
        budget: Budget,
        cost: CostModel | None = None,
        *,
        reward_cost: CostModel | None = None,
        parent: Ledger | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.budget = budget
        self.parent = parent
        self._clock: Callable[[], float] = clock or (
            parent._clock if parent is not None else time.monotonic
        )
        """Seconds, for the `seconds` unit (a test may pass a simulated clock)."""
        self.cost: CostModel = cost or (parent.cost if parent is not None else CostModel(None))
        self.reward_cost: CostModel = reward_cost or (
            parent.reward_cost if parent is not None else CostModel(None)
        )
        """The reward model's own cost model (its FLOPs count in `flops`/`eflops`)."""
        self.spent = Spent()
        self.held: dict[Unit, float] = dict.fromkeys(UNITS, 0.0)
        """The worst cases of authorised calls not yet charged, by unit."""
        self._t0 = self._clock()  # a sub-budget's seconds count from its own start

    def sub(self, budget: Budget) -> Ledger:
        """A ledger for a part of this problem's spending, limited by `budget` and by
        every budget above it; what it spends is spent here too."""
        return Ledger(budget, self.cost, reward_cost=self.reward_cost, parent=self)

    def _chain(self) -> Iterator[Ledger]:
        node: Ledger | None = self
        while node is not None:
            yield node
            node = node.parent

    @property
    def policy(self) -> SpendPolicy | None:
        return self.budget.policy

    def _policies(self) -> list[SpendPolicy]:
        return [n.policy for n in self._chain() if n.policy is not None]

    @property
    def wants_answers(self) -> bool:
        """True when a budget's policy wants the answers samples state (the context then
        passes them to `observe_answers`)."""
        return any(p.wants_answers for p in self._policies())

    def observe_answers(self, answers: Sequence[str]) -> None:
        for p in self._policies():
            p.observe_answers(answers)

    def should_stop(self) -> bool:
        """Whether a budget's policy would refuse the next call (a hint strategies may
        consult before starting a round; the refusal comes either way)."""
        return any(p.should_stop() for p in self._policies())

    def rebudget(self, budget: Budget) -> None:
        """Replace the budget (an allocator's plan), raising its limits where needed to
        what was already spent, so the stored budget is never below the spending."""
        self.spent.seconds = self.elapsed()
        self.budget = budget.covering(self.spent)

    # -- queries ----------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._clock() - self._t0

    def _used(self, unit: Unit) -> float:
        return self.elapsed() if unit == Unit.SECONDS else float(getattr(self.spent, unit))

    def _left(self, unit: Unit) -> tuple[float | None, Ledger]:
        """What is left of `unit` (None: not enforced anywhere) and the ledger whose
        limit binds."""
        best: float | None = None
        binding = self
        for node in self._chain():
            limit = getattr(node.budget, unit)
            if limit is None:
                continue
            left = limit - node._used(unit) - node.held[unit]
            if best is None or left < best:
                best, binding = left, node
        return best, binding

    def remaining(self, unit: Unit | str) -> float | None:
        """What is left of an enforced unit after the calls in flight (None: not
        enforced)."""
        return self._left(Unit(unit))[0]

    def exhausted(self) -> bool:
        """True when some enforced unit has nothing left."""
        for unit in UNITS:
            left = self.remaining(unit)
            if left is not None and left <= 0:
                return True
        return False

    def _refuse(self, unit: Unit, requested: float) -> BudgetExceeded:
        _, node = self._left(unit)
        for n in self._chain():
            n.spent.refused_calls += 1
        exc = BudgetExceeded(
            unit,
            limit=getattr(node.budget, unit),
            spent=node._used(unit),
            requested=requested,
        )
        exc.ledger = node  # type: ignore[attr-defined]
        return exc

    def refuse(
        self, unit: Unit | str, requested: float, *, limit: float, rule: str = ""
    ) -> BudgetExceeded:
        """A refusal by a policy's own limit on `unit` (`rule` names the policy's limit,
        e.g. "step"), counted as refused."""
        u = Unit(unit)
        for n in self._chain():
            n.spent.refused_calls += 1
        what = f"{rule} {u.value}".strip()
        exc = BudgetExceeded(what, limit=limit, spent=self._used(u), requested=requested)
        exc.ledger = self  # type: ignore[attr-defined]
        return exc

    def _hold(self, held: dict[Unit, float]) -> Grant:
        for node in self._chain():
            for unit, amount in held.items():
                node.held[unit] += amount
        return Grant(max_tokens=0, held=held)

    def release(self, grant: Grant) -> None:
        """Give back what `grant` holds (the call was charged, or never ran)."""
        if grant.settled:
            return
        grant.settled = True
        for node in self._chain():
            for unit, amount in grant.held.items():
                node.held[unit] -= amount

    # -- generation -------------------------------------------------------------------
    def _unmeasurable(self, unit: Unit, what: str) -> ConfigError:
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
        cost: CostModel | None = None,
    ) -> Grant:
        """Check a generate call against every enforced unit and reserve its worst case.

        The grant's `max_tokens` is what the call may use (possibly less than asked);
        raises `BudgetExceeded` when not even one token per sequence fits. `per_sample`:
        the backend counts (and may compute) the prompt once per sample
        (`Backend.prompt_tokens_per_sample`), so the worst case prefills it `n` times.
        `cost`: the shape of the model that runs the call, when it is not the policy's
        (a strategy's second model, e.g. the cascade's large one).
        """
        cost = cost or self.cost
        prefills = n if per_sample else 1
        sequences = len(prompt_lens) * n
        left = self.remaining(Unit.SECONDS)
        if left is not None and left <= 0:
            raise self._refuse(Unit.SECONDS, 0)
        left = self.remaining(Unit.SAMPLES)
        if left is not None and sequences > left:
            raise self._refuse(Unit.SAMPLES, sequences)
        prefill = sum(prompt_lens) * prefills  # worst case: nothing from the prefix cache
        left = self.remaining(Unit.PREFILL_TOKENS)
        if left is not None and prefill > left:
            raise self._refuse(Unit.PREFILL_TOKENS, prefill)
        allowed = max_tokens
        left = self.remaining(Unit.TOKENS)
        if left is not None:
            allowed = min(allowed, int(left // sequences))
            if allowed < 1:
                raise self._refuse(Unit.TOKENS, sequences)
        for unit in (Unit.FLOPS, Unit.EFLOPS):
            left = self.remaining(unit)
            if left is not None:
                if not cost.known:
                    raise self._unmeasurable(unit, "the policy model")
                allowed = self._fit(
                    unit, prompt_lens, n, allowed, left, prefills=prefills, cost=cost
                )
        for node in self._chain():  # a policy refuses on its own ledger's behalf
            if node.policy is not None:
                allowed = node.policy.limit_generate(node, sequences=sequences, max_tokens=allowed)
        held = {
            Unit.SAMPLES: float(sequences),
            Unit.TOKENS: float(sequences * allowed),
            Unit.PREFILL_TOKENS: float(prefill),
        }
        if cost.known:
            for unit in (Unit.FLOPS, Unit.EFLOPS):
                held[unit] = self._worst(
                    unit, prompt_lens, n, allowed, prefills=prefills, cost=cost
                )
        grant = self._hold(held)
        grant.max_tokens = allowed
        grant.prefills = prefills
        return grant

    def _worst(
        self,
        unit: Unit,
        prompt_lens: Sequence[int],
        n: int,
        max_tokens: int,
        *,
        prefills: int = 1,
        cost: CostModel | None = None,
    ) -> float:
        """The most a call can spend in `flops` or `eflops`: every prompt token computed
        (`prefills` times), every sample running to `max_tokens` (decoded alone, so it
        reads all weights)."""
        cost = cost or self.cost
        k = prefills
        flops = sum(
            cost.generation_flops(
                prompt_len=p, computed_prompt=k * p, completion_lens=[max_tokens] * n, prefills=k
            )
            for p in prompt_lens
        )
        if unit == Unit.FLOPS:
            return flops
        moved = sum(
            k * cost.prefill_bytes(p) + n * cost.decode_bytes(max_tokens, context_before=p, batch=1)
            for p in prompt_lens
        )
        return cost.eflops(flops, moved)

    def _fit(
        self,
        unit: Unit,
        prompt_lens: Sequence[int],
        n: int,
        allowed: int,
        left: float,
        *,
        prefills: int = 1,
        cost: CostModel | None = None,
    ) -> int:
        def worst(m: int) -> float:
            return self._worst(unit, prompt_lens, n, m, prefills=prefills, cost=cost)

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

    def charge_generate(
        self, grant: Grant, served: Sequence[Served], *, cost: CostModel | None = None
    ) -> GenerateCharge:
        """Debit what a generate call really spent (its FLOPs and bytes from the cost
        model: `cost`, when another model than the policy ran it) and release its
        reservation."""
        cost = cost or self.cost
        flops = bytes_moved = 0.0
        per_request = []
        for r in served:
            one = cost.generation_flops(
                prompt_len=r.prompt_len,
                computed_prompt=r.prompt_tokens - r.cached_prompt_tokens,
                completion_lens=list(r.completion_lens),
                prefills=len(r.completion_lens) if grant.prefills > 1 else 1,
            )
            per_request.append(one)
            flops += one
            bytes_moved += sum(
                cost.decode_bytes(k, context_before=r.prompt_len, batch=max(r.batch_size, 1))
                for k in r.completion_lens
            )
        charge = GenerateCharge(
            sequences=sum(len(r.completion_lens) for r in served),
            prompt_tokens=sum(r.prompt_tokens for r in served),
            cached_prompt_tokens=sum(r.cached_prompt_tokens for r in served),
            completion_tokens=sum(r.completion_tokens for r in served),
            flops=flops,
            bytes_moved=bytes_moved,
            eflops=cost.eflops(flops, bytes_moved) if cost.known else 0.0,
            request_flops=tuple(per_request),
        )
        self.release(grant)
        for node in self._chain():
            node._debit(charge)
        return charge

    def _debit(self, c: GenerateCharge) -> None:
        s = self.spent
        s.generate_calls += 1
        s.samples += c.sequences
        s.tokens += c.completion_tokens
        s.prompt_tokens += c.prompt_tokens
        s.cached_prompt_tokens += c.cached_prompt_tokens
        s.prefill_tokens += c.prompt_tokens - c.cached_prompt_tokens
        s.flops += c.flops
        s.bytes += c.bytes_moved
        s.eflops += c.eflops
        if self.policy is not None:
            self.policy.after_generate(self, tokens=c.completion_tokens, samples=c.sequences)

    # -- reward -----------------------------------------------------------------------
    @property
    def bounds_score_work(self) -> bool:
        """True when a score call must be authorised against the reward model's worst
        case (`RewardModel.worst_case`): `reward_tokens`, `flops` or `eflops` is enforced
        (here or in a budget above)."""
        return any(
            getattr(node.budget, u) is not None for node in self._chain() for u in SCORE_WORK_UNITS
        )

    def authorize_score(self, worst: Sequence[ModelPass] | None) -> Grant:
        """Check a score call against every enforced unit, at its worst case `worst`
        (the reward model's passes with nothing cached; None: not known, which is an
        error when `bounds_score_work`), and reserve it. Raises `BudgetExceeded` when it
        does not fit."""
        left = self.remaining(Unit.SECONDS)
        if left is not None and left <= 0:
            raise self._refuse(Unit.SECONDS, 0)
        left = self.remaining(Unit.REWARD_CALLS)
        if left is not None and left < 1:
            raise self._refuse(Unit.REWARD_CALLS, 1)
        held: dict[Unit, float] = {Unit.REWARD_CALLS: 1.0}
        if not self.bounds_score_work:
            return self._hold(held)
        if worst is None:
            unit = next(
                u
                for n in self._chain()
                for u in SCORE_WORK_UNITS
                if getattr(n.budget, u) is not None
            )
            raise ConfigError(
                f"budget.{unit} is enforced but the reward model cannot bound what a call "
                "may spend (its worst_case returns None)",
                key=f"budget.{unit}",
                hint=f"implement RewardModel.worst_case, or remove budget.{unit}",
            )
        tokens = sum(p.tokens for p in worst)
        left = self.remaining(Unit.REWARD_TOKENS)
        if left is not None and tokens > left:
            raise self._refuse(Unit.REWARD_TOKENS, tokens)
        held[Unit.REWARD_TOKENS] = float(tokens)
        for unit in (Unit.FLOPS, Unit.EFLOPS):
            left = self.remaining(unit)
            if tokens == 0 or not self.reward_cost.known:
                if left is not None and tokens:
                    raise self._unmeasurable(unit, "the reward model")
                continue
            need = self._score_work(unit, worst)
            if left is not None and need > left:
                raise self._refuse(unit, need)
            held[unit] = need
        return self._hold(held)

    def _score_work(self, unit: Unit, passes: Sequence[ModelPass]) -> float:
        cost = self.reward_cost
        flops = sum(cost.pass_flops(p) for p in passes)
        if unit == Unit.FLOPS:
            return flops
        return cost.eflops(flops, sum(cost.pass_bytes(p) for p in passes))

    def charge_score(self, grant: Grant, *, tokens: int, passes: Sequence[ModelPass] = ()) -> float:
        """Debit what a score call spent (reward-model tokens, and the FLOPs and bytes of
        its passes on the reward model's own shape) and release its reservation; returns
        the FLOPs charged."""
        self.release(grant)
        flops = moved = 0.0
        if passes and self.reward_cost.known:
            cost = self.reward_cost
            flops = sum(cost.pass_flops(p) for p in passes)
            moved = sum(cost.pass_bytes(p) for p in passes)
        for node in self._chain():
            node.spent.reward_calls += 1
            node.spent.reward_tokens += tokens
            if flops or moved:
                node.spent.flops += flops
                node.spent.bytes += moved
                node.spent.eflops += self.reward_cost.eflops(flops, moved)
        return flops

    def close(self) -> Spent:
        self.spent.seconds = self.elapsed()
        return self.spent
