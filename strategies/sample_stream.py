"""Whole samples drawn one request each, a window of them in flight, handed back in the
order they were drawn; closing the stream aborts the ones still running.

Strategies that stop sampling once the answer is decided (`adaptive_consistency`,
`deepconf`) use it: the engine keeps `window` sequences of the problem busy, the
strategy looks at each sample as it arrives, and when it is done, `close()` aborts the
rest through `ttc.cancel.Abort` (their generated tokens are charged, the rest never
spent). Samples come back in draw order, not finishing order, so what a strategy decides
depends on the seeds only, never on timing.

The first `together` samples, the ones the strategy needs before it decides anything
(`adaptive_consistency`'s `min_samples`, `deepconf`'s warm-up), are one request of
`n = together`: one prefill and one request instead of one each. Every other sample is
a request of its own, so that each can be looked at as soon as it ends; `window` of
them are in flight (the opening group counts while it runs).
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
        together: int = 1,
    ) -> None:
        self.ctx = ctx
        self.sampling = sampling.replace(n=1)
        self.window = max(window, 1)
        self.total = total
        self.together = max(together, 1)
        self.abort = abort or Abort()
        self.launched = 0
        self.cancelled: list[Branch] = []
        """Samples stopped before they finished (by `close` or the abort's `watch`)."""
        self._pending: deque[tuple[asyncio.Future[list[Branch]], int]] = deque()
        """Calls in flight, with their numbers of samples."""
        self._running = 0
        """Samples of the pending calls."""
        self._ready: deque[Branch] = deque()
        """Finished samples of a call not handed out yet (a call of several samples)."""

    def _top_up(self) -> None:
        """Fill the window: first the opening group (one request of `together`) and
        singles up to `window`; later one single per free place. Not while samples of
        a call are still being handed out: the strategy has not judged them yet, and
        they ended together, so a sample started now would overlap none of them."""
        if self._ready:
            return
        if self.launched == 0 and self.total > 0:
            self._launch(min(self.together, self.total))
        for _ in range(min(self.window - self._running, self.total - self.launched)):
            self._launch(1)

    def _launch(self, n: int) -> None:
        call = self.ctx.generate([self.ctx.root], self.sampling.replace(n=n), abort=self.abort)
        self._pending.append((asyncio.ensure_future(call), n))
        self._running += n
        self.launched += n

    async def next(self) -> Branch | None:
        """The next finished sample in draw order, skipping those the abort's `watch`
        stopped (see `cancelled`) and failed requests; None when all `total` were
        handed out. A refusal (`BudgetExceeded`) or a failed call (`BackendError`) of
        the samples due is raised after the others are aborted."""
        while True:
            self._top_up()
            if self._ready:
                return self._ready.popleft()
            if not self._pending:
                return None
            task, size = self._pending.popleft()
            self._running -= size
            try:
                drawn = await task
            except BaseException:
                await self.close()
                raise
            self.cancelled += [b for b in drawn if b.finish_reason == "cancelled"]
            for b in drawn:
                if b.finish_reason != "cancelled":
                    b.finished = True  # a whole sample is a leaf, whatever ended it
                    self._ready.append(b)

    @property
    def exhausted(self) -> bool:
        return self.launched >= self.total and not self._pending and not self._ready

    async def close(self) -> None:
        """Abort the samples still in flight and wait until they are charged."""
        if not self._pending:
            return
        self.abort.set()
        pending = [task for task, _ in self._pending]
        self._pending.clear()
        self._running = 0
        for out in await asyncio.gather(*pending, return_exceptions=True):
            if isinstance(out, list):
                self.cancelled += [b for b in out if b.finish_reason == "cancelled"]
                for b in out:  # finished before the abort reached it: still a sample
                    if b.finish_reason != "cancelled":
                        b.finished = True

    @property
    def cancelled_tokens(self) -> int:
        return sum(b.new_tokens for b in self.cancelled)
