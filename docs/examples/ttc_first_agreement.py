# ttc_first_agreement.py
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import ttc
from ttc.config import StrategyConfig, bounded
from ttc.interfaces import SolveContext, Strategy
from ttc.types import Branch, Problem, Sampling, Solution


@dataclass
class FirstAgreementConfig(StrategyConfig):
    name: str = "first_agreement"
    max_samples: int = bounded(8, ge=1, help="samples at most")
    max_tokens: int = bounded(256, ge=1, help="tokens per sample")


class FirstAgreement(Strategy):
    """Draw one sample at a time until two of them state the same answer."""

    name = "first_agreement"
    uses_reward = False

    async def solve(self, problem: Problem, ctx: SolveContext) -> AsyncIterator[Solution]:
        sampling = Sampling(n=1, max_tokens=self.config.max_tokens)
        samples: list[Branch] = []
        votes: Counter[str] = Counter()
        for _ in range(self.config.max_samples):
            # A refused call ends the search right here, with the last answer yielded.
            (sample,) = await ctx.generate([ctx.root], sampling)
            sample.finished = True  # a whole solution: a leaf of the tree
            samples.append(sample)
            answer = ctx.answer(sample)
            if answer is not None:
                votes[ctx.normalize(answer)] += 1
            if votes:
                top, count = votes.most_common(1)[0]
                best = next(b for b in samples if _key(ctx, b) == top)
                yield Solution(answer=ctx.answer(best), branch=best, trace={"votes": dict(votes)})
                if count >= 2:
                    return


def _key(ctx: SolveContext, b: Branch) -> str | None:
    answer = ctx.answer(b)
    return None if answer is None else ctx.normalize(answer)


@ttc.hookimpl
def register_strategies(register: Callable[..., None]) -> None:
    register(FirstAgreement, FirstAgreementConfig)
