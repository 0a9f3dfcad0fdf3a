"""Whole samples drawn one request each, a window of them in flight, handed back in the
order they were drawn; closing the stream aborts the ones still running.

Strategies that stop sampling once the answer is decided (`adaptive_consistency`,
`deepconf`) use it: the engine keeps `window` sequences of the problem busy, the
strategy looks at each sample as it arrives, and when it is done, `close()` aborts the
rest through `ttc.cancel.Abort` (their generated tokens are charged, the rest never
spent). Samples come back in draw order, not finishing order, so what a strategy decides
depends on the seeds only, never on timing.
"""

from __future__ import annotations

import asyncio
from collections import deque

from ttc.cancel import Abort
from ttc.interfaces import SolveContext
from ttc.types import Branch, Sampling


class SampleStream:
    """Up to `total` samples of `sampling` (one sequence per request) from the root."""

    def __init__(
        self,
        ctx: SolveContext,
        sampling: Sampling,
        *,
        window: int,
        total: int,
        abort: Abort | None = None,
    ) -> None:
        self.ctx = ctx
        self.sampling = sampling.replace(n=1)
        self.window = max(window, 1)
        self.total = total
        self.abort = abort or Abort()
        self.launched = 0
        self.cancelled: list[Branch] = []
        """Samples stopped before they finished (by `close` or the abort's `watch`)."""
        self._pending: deque[asyncio.Future[list[Branch]]] = deque()

    def _top_up(self) -> None:
        while len(self._pending) < self.window and self.launched < self.total:
            call = self.ctx.generate([self.ctx.root], self.sampling, abort=self.abort)
            self._pending.append(asyncio.ensure_future(call))
            self.launched += 1

    async def next(self) -> Branch | None:
        """The next finished sample in draw order, skipping those the abort's `watch`
        stopped (see `cancelled`) and failed requests; None when all `total` were
        handed out. A refusal (`BudgetExceeded`) or a failed call (`BackendError`) of
        the sample due is raised after the others are aborted."""
        while True:
            self._top_up()
            if not self._pending:
                return None
            task = self._pending.popleft()
            try:
                drawn = await task
            except BaseException:
                await self.close()
                raise
            self.cancelled += [b for b in drawn if b.finish_reason == "cancelled"]
            done = [b for b in drawn if b.finish_reason != "cancelled"]
            if done:
                done[0].finished = True  # a whole sample is a leaf, whatever ended it
                return done[0]

    @property
    def exhausted(self) -> bool:
        return self.launched >= self.total and not self._pending

    async def close(self) -> None:
        """Abort the samples still in flight and wait until they are charged."""
        if not self._pending:
            return
        self.abort.set()
        pending = list(self._pending)
        self._pending.clear()
        for out in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(out, list):
                self.cancelled += [b for b in out if b.finish_reason == "cancelled"]
                for b in out:  # finished before the abort reached it: still a sample
                    if b.finish_reason != "cancelled":
                        b.finished = True

    @property
    def cancelled_tokens(self) -> int:
        return sum(b.new_tokens for b in self.cancelled)
