"""Stopping generations before they finish: `Abort`, given to `ctx.generate(...,
abort=...)`.

Two ways to stop:

- `abort.set()` stops every sequence of every call the `Abort` was given to (the answer
  is decided: the samples still running are wasted work). A strategy sets it from
  another task while the call is in flight.
- `Abort(watch=fn)`: a streaming backend asks `fn(progress)` after each chunk of each
  sequence (`SequenceProgress`: the tokens and logprobs so far) and stops that sequence
  when it returns True (a weak trace: DeepConf's confidence stop).

A stopped sequence ends with `finish_reason="cancelled"` and keeps the tokens it had
generated; the call returns normally. Its generated tokens are charged, the rest never
are: backends report the usage of what they produced. Where a backend cannot stop a
sequence mid-way (the batched ones: `hf`), requests still queued when `set()` is called
are dropped unspent, and the rest run to their end.

The `openai` backend streams a call that carries an `Abort` and closes the connection to
stop it (vLLM aborts a request whose client disconnected); the `vllm` backend aborts the
engine's request ids.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SequenceProgress:
    """One sequence as far as it has been generated (what a `watch` sees)."""

    index: int
    """The sample's index within its request (0 .. n-1)."""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    """Logprob of each generated token (when the call asked for logprobs)."""
    top_logprobs: list[tuple[tuple[int, float], ...]] = field(default_factory=list)
    """Per generated token, the top alternatives `(id, logprob)` (when asked for)."""
    tokens: int = 0
    """Tokens generated so far (also when ids and logprobs are not returned)."""


class Abort:
    """Stops sequences mid-generation (see the module docstring)."""

    def __init__(self, watch: Callable[[SequenceProgress], bool] | None = None) -> None:
        self.watch = watch
        """Asked after each streamed chunk of each sequence; True stops that sequence."""
        self._event = asyncio.Event()
        self.stopped = 0
        """Sequences stopped (by `set` or by `watch`) so far, for traces and tests."""

    def set(self) -> None:
        """Stop every sequence still running in the calls this was given to."""
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> None:
        await self._event.wait()

    def check(self, progress: SequenceProgress) -> bool:
        """Whether `progress`'s sequence should stop now."""
        return self._event.is_set() or (self.watch is not None and bool(self.watch(progress)))


async def until_aborted(work: Awaitable[Any], abort: Abort) -> bool:
    """Run `work` until it ends or `abort` is set, then cancel it (a backend's reader:
    cancelling it closes its connection or aborts its engine request). True when the
    abort cut it short. What `work` raised is raised; cancelling the caller cancels
    both."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(abort.wait())
    cut = False
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            cut = True
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.done() and not task.cancelled():
        task.result()  # re-raise what the work raised
    return cut
