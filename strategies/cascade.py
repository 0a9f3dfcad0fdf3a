"""`cascade`: entropy-adaptive decoding over two models.

A small model (the run's backend) writes the solution in chunks of `chunk_tokens`
tokens, reporting the top-k logprobs of every token. While the rolling mean of its
next-token entropy (over the last `window` tokens it wrote) stays at or below
`threshold`, its chunk is kept. Where it rises above, the small model is unsure: its
chunk is set aside and the large model (`strategy.large_model`, on a second backend)
writes the next `large_tokens` tokens from the same point instead; then the small model
takes over again (its entropy window starts afresh, since it did not write those
tokens). `chunk_tokens=1` switches at single tokens; larger chunks trade a little
set-aside work for far fewer calls. `threshold=0` gives (nearly) the large model alone,
a threshold above ln(top_logprobs + 1) the small model alone.

The two models need not share a tokenizer: the large model continues the solution's
text after its own rendering of the problem, and what it writes is re-encoded for the
small one. Every call is charged to the problem's ledger at the shape of the model that
ran it; each node records its model, tokens and FLOPs (`extra`), each solution's last
node the cascade's totals (`extra["cascade"]`: tokens and FLOPs per model, the large
model's share of the solution's tokens, switches, set-aside tokens).

After the entropy-guided speculative / collaborative decoding line of work: a small
model defers to a large one where its own predictive entropy is high (e.g. "Cascade
Speculative Drafting", Chen et al. 2023; entropy-gated model switching in "Fast and Slow
Generating", Zhang et al. 2024); see docs/strategies/cascade.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from ttc.config import StrategyConfig, bounded
from ttc.errors import BackendError, BudgetExceeded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import majority, solution
from ttc.types import Branch, Problem, Sampling, Solution

LARGE = "large"
"""The name the large model has in `ctx.generate(..., model=...)`."""
SMALL = "policy"
MAX_FAILED_ROUNDS = 3
"""A failed request is retried from where its chain stands; after this many rounds in
which every chain's request failed, the search ends with what exists."""


@dataclass
class CascadeConfig(StrategyConfig):
    name: str = "cascade"
    large_model: str | None = "gemma3-270m"
    """The large model (its `backend.model`: an alias, directory, .gguf or hub id);
    None: the run's `backend.model`."""
    large_backend: dict[str, Any] = field(default_factory=dict)
    """Further overrides of the run's `backend` config for the large model's backend
    (`+strategy.large_backend.device=cuda`; `name` picks another backend kind)."""
    threshold: float = bounded(1.0, ge=0.0, help="rolling entropy (nats) above which to switch")
    window: int = bounded(4, ge=1, help="small-model tokens in the rolling entropy mean")
    chunk_tokens: int = bounded(16, ge=1, help="tokens the small model writes per call")
    large_tokens: int = bounded(16, ge=1, help="tokens the large model writes per switch")
    top_logprobs: int = bounded(20, ge=1, help="alternatives per token for the entropy")
    max_tokens: int = bounded(256, ge=1, help="tokens per solution (small-model tokens)")
    n: int = bounded(1, ge=1, help="solutions, voted on (each its own cascade)")
    temperature: float = bounded(0.7, ge=0.0)
    top_p: float = bounded(1.0, gt=0.0, le=1.0)
    step_delimiter: str = ""
    """A chunk also ends where this string appears (the switching points become step
    boundaries); empty: chunks end by length only."""
    stop: list[str] = field(default_factory=list)
    """The solution ends where one of these appears (e.g. "\\n\\nQuestion:" for a base
    model behind a few-shot prompt)."""


@dataclass
class _Chain:
    """One solution being written."""

    head: Branch
    window: list[float] = field(default_factory=list)
    small_tokens: int = 0
    large_tokens: int = 0
    small_flops: float = 0.0
    large_flops: float = 0.0
    set_aside: int = 0
    switches: int = 0
    done: bool = False

    def totals(self) -> dict[str, Any]:
        written = self.small_tokens + self.large_tokens
        return {
            "small_tokens": self.small_tokens,
            "large_tokens": self.large_tokens,
            "large_share": self.large_tokens / written if written else 0.0,
            "small_flops": self.small_flops,
            "large_flops": self.large_flops,
            "switches": self.switches,
            "set_aside_tokens": self.set_aside,
        }


def rolling_peak(history: list[float], new: tuple[float, ...], window: int) -> float:
    """The highest rolling mean over `window` values at each new position (`history`:
    the values before them in this run of the small model)."""
    values = [*history[-(window - 1) :], *new] if window > 1 else list(new)
    start = len(values) - len(new)
    peak = 0.0
    for i in range(start, len(values)):
        span = values[max(0, i - window + 1) : i + 1]
        peak = max(peak, sum(span) / len(span))
    return peak


def entropies(b: Branch) -> tuple[float, ...]:
    """The small model's next-token entropy at each token of `b`'s new text: from the
    top-k alternatives, else each sampled token's surprisal (-logprob)."""
    if b.token_entropies:
        return b.token_entropies
    return tuple(-lp for lp in b.token_logprobs)


class Cascade(Strategy):
    """Small model by default, large model where the small one is unsure."""

    name = "cascade"
    uses_reward = False
    config: CascadeConfig

    def models(self) -> dict[str, dict[str, Any]]:
        c = self.config
        model = {"model": c.large_model} if c.large_model is not None else {}
        return {LARGE: {**model, **dict(c.large_backend)}}

    def _sampling(self, max_tokens: int, *, small: bool) -> Sampling:
        c = self.config
        stops = tuple(c.stop) + ((c.step_delimiter,) if c.step_delimiter else ())
        return Sampling(
            n=1,
            temperature=c.temperature,
            top_p=c.top_p,
            max_tokens=max_tokens,
            stop=stops,
            logprobs=small,
            top_logprobs=c.top_logprobs if small else 0,
        )

    def _settle(self, chain: _Chain, b: Branch) -> None:
        """Make `b` the chain's head; decide whether the solution ended with it."""
        c = self.config
        chain.head = b
        ended_by_stop = any(s and b.text.endswith(s) for s in c.stop)
        full = len(b.token_ids) >= c.max_tokens
        # the context marks a length-cut chunk finished: here only EOS, a solution stop
        # or the solution's token limit ends it
        chain.done = b.finish_reason in ("eos", "error") or ended_by_stop or full
        b.finished = chain.done

    async def _advance(self, ctx: SolveContext, chain: _Chain) -> None:
        """One chunk of the chain: the small model's, or the large model's instead."""
        c = self.config
        left = c.max_tokens - len(chain.head.token_ids)
        (small,) = await ctx.generate(
            [chain.head], self._sampling(min(c.chunk_tokens, left), small=True), model=SMALL
        )
        chain.small_flops += float(small.extra.get("flops", 0.0))
        ent = entropies(small)
        peak = rolling_peak(chain.window, ent, c.window)
        small.extra["entropy_peak"] = peak
        if peak <= c.threshold or not ent:
            chain.window += list(ent)
            chain.small_tokens += len(small.token_ids) - len(chain.head.token_ids)
            self._settle(chain, small)
            return
        small.extra["set_aside"] = True
        small.finished = False  # not a solution: the large model rewrites this stretch
        chain.set_aside += small.new_tokens
        (large,) = await ctx.generate(
            [chain.head], self._sampling(min(c.large_tokens, left), small=False), model=LARGE
        )
        chain.large_flops += float(large.extra.get("flops", 0.0))
        chain.large_tokens += len(large.token_ids) - len(chain.head.token_ids)
        chain.switches += 1
        chain.window = []
        self._settle(chain, large)

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        chains = [_Chain(head=ctx.root) for _ in range(self.config.n)]
        failed_rounds = 0  # consecutive rounds in which every chain's call failed
        while True:
            active = [ch for ch in chains if not ch.done]
            if not active:
                break
            got = await asyncio.gather(
                *(self._advance(ctx, ch) for ch in active), return_exceptions=True
            )
            refused = next((g for g in got if isinstance(g, BudgetExceeded)), None)
            for g in got:
                if isinstance(g, BackendError):
                    continue  # that chain stays where it is; the failure is recorded
                if isinstance(g, BaseException) and not isinstance(g, BudgetExceeded):
                    raise g
            failed_rounds = (
                failed_rounds + 1 if all(isinstance(g, BackendError) for g in got) else 0
            )
            if refused is not None or failed_rounds >= MAX_FAILED_ROUNDS:
                yield self._answer(ctx, chains)
                if refused is not None:
                    raise refused
                break
        yield self._answer(ctx, chains)

    def _answer(self, ctx: SolveContext, chains: list[_Chain]) -> Solution:
        """The majority answer over the chains (those cut short by the budget count too:
        their text so far is all there is); the cascade's totals on each chain's last
        node and in the trace."""
        heads = []
        for ch in chains:
            if ch.head.step_texts:
                ch.head.finished = True  # a (possibly partial) solution: a leaf
                ch.head.extra["cascade"] = ch.totals()
                heads.append(ch.head)
        best = majority(ctx, heads)
        total: dict[str, float] = {}
        for ch in chains:
            for k, v in ch.totals().items():
                if k != "large_share":
                    total[k] = total.get(k, 0) + v
        written = total.get("small_tokens", 0) + total.get("large_tokens", 0)
        trace: dict[str, Any] = {
            **total,
            "large_share": total.get("large_tokens", 0) / written if written else 0.0,
            "threshold": self.config.threshold,
        }
        answer = ctx.answer(best) if best is not None else None
        support = [h for h in heads if answer is not None and ctx.answer(h) == answer]
        return solution(ctx, best, answer=answer, support=support, **trace)
