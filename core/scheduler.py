"""Cross-problem batching.

Every running problem awaits its own `generate`/`score` call; the scheduler gathers the
requests of all of them into one queue per model and hands the backend batches of up to
`max_batch_size` requests. A batch is sent as soon as the previous one returned and either
the queue is full or `max_wait_ms` passed since its first request arrived, so while the
model is busy the next batch fills with the requests of every other problem.

Backends that batch by themselves (`batches_itself`) get each request as it comes.

A request whose `abort` (`ttc.cancel.Abort`) is set while it still waits in the queue is
answered at once with cancelled, empty generations and no usage: it never reaches the
backend. (Streaming backends stop requests already running themselves.)

Reward models get their batches through `RewardModel.ascore_batch` (by default
`score_batch` in a worker thread). A reward that `needs_backend` is given the scheduler
as its `policy`: an LLM judge asks the policy model through `Scheduler.generate`, so
its requests are batched with the strategies' and work on every backend.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ttc.interfaces import Backend, RewardModel
from ttc.types import (
    GenerateRequest,
    GenerateResult,
    Generation,
    ScoreRequest,
    ScoreResult,
    Usage,
)

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass(frozen=True)
class Batched(Generic[Res]):
    """A result with the size of the backend batch it was computed in."""

    result: Res
    batch_size: int
    latency_s: float


@dataclass
class _Pending(Generic[Req, Res]):
    request: Req
    future: asyncio.Future[Batched[Res]]


@dataclass
class BatchStats:
    sizes: list[int] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return sum(self.sizes) / len(self.sizes) if self.sizes else 0.0


class BatchQueue(Generic[Req, Res]):
    """Gathers requests from many coroutines and runs them in batches (`run_batch` is a
    coroutine function; a model's blocking batch call runs it in a worker thread).

    Batches run one at a time (a single model is not shared between threads). When a
    batch fails, its requests are retried one by one so that only the failing request's
    caller sees the exception.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Req]], Awaitable[list[Res]]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        drop: Callable[[Req], Res | None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self._drop = drop
        """The answer for a queued request that no longer needs running, or None."""
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.stats = BatchStats()
        self._queue: list[_Pending[Req, Res]] = []
        self._arrived = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, requests: Sequence[Req]) -> list[Batched[Res] | BaseException]:
        """Queue `requests`; return one result (or the exception that request raised)
        per request, in order."""
        loop = asyncio.get_running_loop()
        pending = [_Pending(r, loop.create_future()) for r in requests]
        self._queue.extend(pending)
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return list(await asyncio.gather(*(p.future for p in pending), return_exceptions=True))

    async def _work(self) -> None:
        while self._queue:
            first_wait = time.monotonic()
            while len(self._queue) < self.max_batch_size:
                left = self.max_wait_s - (time.monotonic() - first_wait)
                if left <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), timeout=left)
                except TimeoutError:
                    break
            batch = self._queue[: self.max_batch_size]
            del self._queue[: self.max_batch_size]
            batch = [p for p in batch if not p.future.cancelled() and not self._dropped(p)]
            if batch:
                await self._dispatch(batch)

    def _dropped(self, p: _Pending[Req, Res]) -> bool:
        answer = self._drop(p.request) if self._drop is not None else None
        if answer is None:
            return False
        _settle(p.future, Batched(answer, 0, 0.0))
        return True

    async def _dispatch(self, batch: list[_Pending[Req, Res]]) -> None:
        t0 = time.perf_counter()
        try:
            results = await self._run_batch([p.request for p in batch])
            if len(results) != len(batch):
                raise RuntimeError(
                    f"backend returned {len(results)} results for {len(batch)} requests"
                )
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0].future, exc)
                return
            for p in batch:  # isolate the failing request(s)
                await self._dispatch([p])
            return
        latency = time.perf_counter() - t0
        self.stats.sizes.append(len(batch))
        for p, r in zip(batch, results, strict=True):
            _settle(p.future, Batched(r, len(batch), latency))


def _in_thread(
    fn: Callable[[Sequence[Req]], list[Res]],
) -> Callable[[Sequence[Req]], Awaitable[list[Res]]]:
    async def run(requests: Sequence[Req]) -> list[Res]:
        return await asyncio.to_thread(fn, requests)

    return run


def _aborted(request: GenerateRequest) -> GenerateResult | None:
    """Cancelled, empty generations for a request aborted before it ran (else None)."""
    if request.abort is None or not request.abort.is_set():
        return None
    request.abort.stopped += request.sampling.n
    empty = Generation(token_ids=(), text="", finish_reason="cancelled")
    return GenerateResult(generations=(empty,) * request.sampling.n, usage=Usage())


def _settle(future: asyncio.Future[Any], value: Any) -> None:
    if future.done():
        return
    if isinstance(value, BaseException):
        future.set_exception(value)
    else:
        future.set_result(value)


class Scheduler:
    """The run's single path to the backend and the reward model."""

    def __init__(
        self,
        backend: Backend,
        reward: RewardModel | None,
        *,
        max_batch_size: int = 64,
        max_wait_s: float = 0.002,
    ) -> None:
        self.backend = backend
        self.reward = reward
        self.generate_queue: BatchQueue[GenerateRequest, GenerateResult] = BatchQueue(
            _in_thread(backend.generate_batch),
            max_batch_size=max_batch_size,
            max_wait_s=max_wait_s,
            drop=_aborted,
        )
        self.score_queue: BatchQueue[ScoreRequest, ScoreResult] | None = (
            BatchQueue(reward.ascore_batch, max_batch_size=max_batch_size, max_wait_s=max_wait_s)
            if reward is not None
            else None
        )
        if reward is not None and reward.needs_backend:
            reward.policy = self
        self._inflight = 0

    async def generate(
        self, requests: Sequence[GenerateRequest]
    ) -> list[Batched[GenerateResult] | BaseException]:
        if not self.backend.batches_itself:
            return await self.generate_queue.submit(requests)
        # The engine batches continuously: report how many requests were in flight.
        self._inflight += len(requests)
        try:
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(self.backend.agenerate(r) for r in requests), return_exceptions=True
            )
            size = max(self._inflight, len(requests))
            latency = time.perf_counter() - t0
            self.generate_queue.stats.sizes.append(len(requests))
            return [
                r if isinstance(r, BaseException) else Batched(r, size, latency) for r in results
            ]
        finally:
            self._inflight -= len(requests)

    async def score(
        self, requests: Sequence[ScoreRequest]
    ) -> list[Batched[ScoreResult] | BaseException]:
        if self.score_queue is None:
            raise RuntimeError("no reward model is configured")
        return await self.score_queue.submit(requests)
