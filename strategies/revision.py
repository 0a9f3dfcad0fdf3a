"""`revision`: sequential revisions, several chains in parallel.

Snell et al., "Scaling LLM Test-Time Compute Optimally can be More Effective than
Scaling Model Parameters" (2024), section 6. Instead of drawing independent samples,
the model revises its own earlier attempts in context: a chain writes an attempt, then
`revise_prompt`, then a revised attempt that sees every attempt before it, and so on
for `chain_length` attempts. `attempts` is the generation budget in whole attempts; it
is spent as `attempts // chain_length` chains in parallel, so `chain_length` sets the
paper's sequential/parallel ratio (`chain_length` : chains): `chain_length=1` is plain
parallel sampling, `chain_length=attempts` one long chain.

Every round advances all chains by one attempt in one call. A chain's prompt is its
whole history, so each round's prompt extends the previous one: with prefix caching
(vLLM, the `hf` backend's prefix cache) only the newest attempt and the instruction are
prefilled. The tree keeps each chain as a chain: attempt, instruction (`written`),
attempt, ...; attempts carry `extra["chain"]` and `extra["revision"]` (0 = first).

The answer (`select`):
- `last`: a majority vote over each chain's last attempt;
- `majority`: a majority vote over every attempt of every chain;
- `verifier`: every attempt is scored by the reward model (the verifier; each attempt
  alone is its newest step) and the best-scoring attempt across chains wins (the
  paper's verifier-based selection).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ttc.aggregation import best_by_score
from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import SampleConfig, finish_all, solution, votes
from ttc.types import Branch, Problem, Sampling, Solution

REVISE_PROMPT = "\n\nReview the attempt above and correct any mistake.\nRevised solution:\n"


@dataclass
class RevisionConfig(SampleConfig):
    name: str = "revision"
    attempts: int = bounded(8, ge=1, help="attempts in all (chains x chain_length)")
    chain_length: int = bounded(4, ge=1, help="attempts per chain: the sequential share")
    select: str = bounded("last", choices=["last", "majority", "verifier"])
    revise_prompt: str = REVISE_PROMPT
    """Written between an attempt and its revision (the chain is the revision's prompt)."""


class Revision(Strategy):
    name = "revision"
    uses_reward = False

    def __init__(self, config: RevisionConfig) -> None:
        super().__init__(config)
        # The runner asks the instance whether it needs a reward: only the verifier does.
        self.uses_reward = config.select == "verifier"  # type: ignore[misc]

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        length = min(c.chain_length, c.attempts)
        chains = max(c.attempts // length, 1)
        sampling = Sampling(
            n=1,
            temperature=c.temperature,
            top_p=c.top_p,
            top_k=c.top_k,
            min_p=c.min_p,
            max_tokens=c.max_tokens,
        )
        heads = await ctx.generate([ctx.root], sampling.replace(n=chains))
        attempts: list[list[Branch]] = [[b] for b in heads]
        self._mark(heads, attempts)
        yield await self._choose(ctx, attempts, rounds=1)
        for r in range(1, length):
            live = [chain for chain in attempts if chain]
            prompts = [ctx.extend(chain[-1], c.revise_prompt) for chain in live]
            revised = await ctx.generate(prompts, sampling)
            by_parent = {b.parent_id: b for b in revised}
            for chain, prompt in zip(live, prompts, strict=True):
                if prompt.id in by_parent:  # a failed request leaves its chain as it was
                    chain.append(by_parent[prompt.id])
            self._mark(revised, attempts)
            yield await self._choose(ctx, attempts, rounds=r + 1)

    @staticmethod
    def _mark(new: list[Branch], attempts: list[list[Branch]]) -> None:
        finish_all(new)  # an attempt is a whole solution
        for i, chain in enumerate(attempts):
            for j, b in enumerate(chain):
                b.extra.setdefault("chain", i)
                b.extra.setdefault("revision", j)

    async def _choose(
        self, ctx: SolveContext, attempts: list[list[Branch]], **trace: Any
    ) -> Solution:
        how = self.config.select
        every = [b for chain in attempts for b in chain]
        trace["chains"] = len(attempts)
        if how == "verifier":
            await ctx.score([b for b in every if b.score is None])
            return solution(ctx, best_by_score(every), **trace)
        pool = every if how == "majority" else [chain[-1] for chain in attempts if chain]
        found = votes(ctx, pool)
        if not found:
            return solution(ctx, pool[0] if pool else None, **trace)
        top = found[0]
        return solution(ctx, top.best, answer=top.answer, support=top.members, **trace)
