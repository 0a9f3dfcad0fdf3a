"""Group commit: one writer that stores the finished problems of many concurrent callers
in shared transactions.

A caller hands its problem over and awaits the commit that holds it. While one commit
runs (in a worker thread), the problems that finish meanwhile queue up and go into the
next transaction together: one commit, one sync of the database file, for all of them.
A problem alone is committed at once (no waiting for company), so one request at a time
costs one transaction, as before; many at a time share them, and the store no longer
caps the request rate at one commit per problem.

Every caller learns the outcome of its own problem: stored (True), already stored
(False), or the one-line `StoreError` that rolled its whole batch back (nothing of that
batch is written: a caller may write the problem again). `close` commits everything
queued before it returns.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from sqlalchemy.exc import OperationalError, SQLAlchemyError

from ttc.errors import StoreError, TtcError
from ttc.store.store import Store, store_error
from ttc.types import ProblemResult

MAX_BATCH = 256
"""The most problems one transaction holds (a bound on one commit's size and time)."""


@dataclass
class _Queued:
    result: ProblemResult
    replace_error: bool
    done: asyncio.Future[bool] = field(repr=False)


class GroupWriter:
    """Writes the problems of one run; use from one event loop."""

    def __init__(self, store: Store, run_id: str, *, max_batch: int = MAX_BATCH) -> None:
        self.store = store
        self.run_id = run_id
        self.max_batch = max_batch
        self.batch_sizes: list[int] = []
        """Problems per committed transaction, in order (for benchmarks and tests)."""
        self._queue: list[_Queued] = []
        self._committing = 0
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def pending(self) -> int:
        """Problems handed over and not yet committed (or refused)."""
        return len(self._queue) + self._committing

    def submit(self, result: ProblemResult, *, replace_error: bool = False) -> asyncio.Future[bool]:
        """Queue `result`; the future resolves once its transaction committed (True:
        written, False: it was stored already) or failed (`StoreError`)."""
        if self._closed:
            raise RuntimeError("the writer is closed")
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._queue.append(_Queued(result, replace_error, done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work())
        return done

    async def write(self, result: ProblemResult, *, replace_error: bool = False) -> bool:
        """Store `result` and return when it is committed (see `submit`). A cancelled
        caller does not cancel the write: its problem is committed all the same."""
        return await asyncio.shield(self.submit(result, replace_error=replace_error))

    async def close(self) -> None:
        """Refuse new problems and wait until every queued one is committed."""
        self._closed = True
        while self._worker is not None and not self._worker.done():
            await asyncio.shield(self._worker)

    async def _work(self) -> None:
        while self._queue:
            # Problems replacing stored errors (a retry) share transactions only with
            # each other: `replace_error` holds for a whole batch.
            flag = self._queue[0].replace_error
            batch: list[_Queued] = []
            rest: list[_Queued] = []
            for q in self._queue:
                fits = q.replace_error == flag and len(batch) < self.max_batch
                (batch if fits else rest).append(q)
            self._queue = rest
            self._committing = len(batch)
            try:
                await self._commit(batch, flag)
            finally:
                self._committing = 0

    async def _commit(self, batch: list[_Queued], flag: bool) -> None:
        try:
            written = await asyncio.to_thread(
                self.store.record_problems,
                self.run_id,
                [q.result for q in batch],
                replace_error=flag,
            )
        except Exception as exc:
            if len(batch) > 1 and not isinstance(exc, OperationalError):
                # Something about one problem (a value the database refuses): each in its
                # own transaction, so only that problem's caller sees the error. A store
                # that is locked, full or gone fails the whole batch at once instead.
                for q in batch:
                    await self._commit([q], flag)
                return
            error = _one_line(self.store, exc)
            for q in batch:
                if not q.done.done():
                    q.done.set_exception(error)
            return
        self.batch_sizes.append(len(batch))
        for q, ok in zip(batch, written, strict=True):
            if not q.done.done():
                q.done.set_result(ok)


def _one_line(store: Store, exc: Exception) -> TtcError:
    if isinstance(exc, TtcError):
        return exc
    if isinstance(exc, SQLAlchemyError):
        return store_error(store.url, exc)
    return StoreError(f"cannot store the problem: {type(exc).__name__}: {exc}")
