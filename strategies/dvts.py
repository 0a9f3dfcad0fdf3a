"""`dvts`: Diverse Verifier Tree Search.

Beeching, Tunstall and Rush, "Scaling test-time compute with open models" (Hugging Face,
2024). Beam search with a process reward tends to collapse onto one prefix that the
reward model likes, so its `n` beams stop being diverse. DVTS splits the `n` beams into
`n / width` independent subtrees; every round each subtree expands its single current
node into `width` candidate steps and greedily keeps the best-scoring one. The subtrees
never compete with each other, so they explore different solutions; the answer is the
best-scoring finished solution over all subtrees (`select=best`), or the answer with
the largest summed score (`select=weighted_vote`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ttc.aggregation import best_by_score, score_of
from ttc.config import bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.strategies.common import StepSearchConfig, mark_steps, solution, step_sampling, votes
from ttc.types import Branch, Problem, Sampling, Solution


@dataclass
class DvtsConfig(StepSearchConfig):
    name: str = "dvts"
    n: int = bounded(8, ge=1, help="candidate steps per round over all subtrees")
    width: int = bounded(2, ge=1, help="candidates per subtree per round (n / width subtrees)")
    select: str = bounded("best", choices=["best", "weighted_vote"])


class Dvts(Strategy):
    name = "dvts"

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        c = self.config
        subtrees = max(c.n // c.width, 1)
        sampling = step_sampling(
            n=c.width,
            temperature=c.temperature,
            top_p=c.top_p,
            step_delimiter=c.step_delimiter,
            step_tokens=c.step_tokens,
        )
        # One current node per live subtree; every subtree starts from the root.
        heads: list[tuple[int, Branch]] = [(t, ctx.root) for t in range(subtrees)]
        finished: list[Branch] = []
        partial: dict[int, Branch] = {}
        stop = "max_steps"
        for _ in range(c.max_steps):
            if not heads:
                break
            groups = await self._expand(ctx, heads, sampling)
            live: list[tuple[int, Branch]] = []
            for tree, _ in heads:
                kids = [b for b in groups.get(tree, []) if b.scored]
                if not kids:
                    continue  # every request (or scoring) of this subtree failed: it ends
                # Greedy within the subtree: the best candidate continues, whether it
                # finished or not (a finished best ends the subtree).
                best = max(kids, key=score_of)
                best.extra["kept"] = True
                best.extra["subtree"] = tree
                if best.finished:
                    finished.append(best)
                else:
                    partial[tree] = best
                    live.append((tree, best))
            heads = live
            yield self._choose(ctx, finished, partial, subtrees=subtrees)
        if not heads:
            stop = "finished"
        yield self._choose(ctx, finished, partial, subtrees=subtrees, ended_by=stop)

    def _choose(
        self,
        ctx: SolveContext,
        finished: list[Branch],
        partial: dict[int, Branch],
        **trace: Any,
    ) -> Solution:
        pool = finished or list(partial.values())
        trace["finished"] = len(finished)
        if self.config.select == "weighted_vote" and pool:
            found = votes(ctx, pool, [max(score_of(b), 0.0) for b in pool])
            if found:
                return solution(ctx, found[0].best, answer=found[0].answer, **trace)
        return solution(ctx, best_by_score(pool), **trace)

    @staticmethod
    async def _expand(
        ctx: SolveContext, heads: list[tuple[int, Branch]], sampling: Sampling
    ) -> dict[int, list[Branch]]:
        """Candidates of every live subtree, scored, keyed by subtree."""
        if all(b.id == ctx.root.id for _, b in heads):
            # First round: every subtree starts at the root, so one request for all of
            # them (one prefill) is split into consecutive groups of `width`.
            kids = await ctx.generate([ctx.root], sampling.replace(n=sampling.n * len(heads)))
            mark_steps(kids)
            await ctx.score(kids)
            w = sampling.n
            return {tree: kids[i * w : (i + 1) * w] for i, (tree, _) in enumerate(heads)}
        children = await ctx.generate([b for _, b in heads], sampling)
        mark_steps(children)
        await ctx.score(children)
        owner = {b.id: tree for tree, b in heads}  # heads are distinct after round one
        groups: dict[int, list[Branch]] = {}
        for ch in children:
            groups.setdefault(owner[ch.parent_id or 0], []).append(ch)
        return groups
