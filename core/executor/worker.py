"""The body of one Ray actor of a `run.executor=ray` run.

An actor builds the run's plugins once (its own backend: a model on its GPU, or a client
of a shared endpoint), starts them, and then solves the chunks of problems the driver
hands it. Each chunk runs through `Runner._solve_all`, the code a local run uses: the
same scheduler batching across every problem the actor holds, the same grading, one
store transaction per finished problem. What the actor's hooks see (calls, finished
problems) streams back to the driver, which shows it in its own progress line.

Importing this module does not import Ray; `ttc.executor.cluster` wraps the class as an
actor.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import threading
from collections.abc import AsyncIterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

import ttc
from ttc.config import RootConfig, instantiate_config, validate
from ttc.progress import add_token_listener, remove_token_listener
from ttc.types import CallRecord, Problem, ProblemResult

FORWARDED_ENV = (
    "TTC_PLUGINS",
    "TTC_PLUGIN_MODULES",
    "TTC_CACHE_DIR",
    "TTC_VERBOSE",
    "TTC_SQLITE_BUSY_TIMEOUT_MS",
    "HF_HUB_OFFLINE",
    "TOKENIZERS_PARALLELISM",
)
"""Environment of the driver that decides which plugins and models a worker loads."""

Event = tuple[str, Any]
"""What a worker streams back: ("call", (problem id, CallRecord)), ("done", ProblemResult
without its tree: the tree is in the store), ("tokens", tokens its backends generated
since the last report: the driver's progress line), ("written", problems newly stored)."""

TOKENS_EVERY_S = 0.25
"""How often a chunk that has no other event to send reports the tokens generated."""

_DONE = ("end", None)


class _Forward:
    """An observer in the worker's plugin manager: hands each hook call to the queue of
    the chunk that holds the problem."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queues: dict[str, asyncio.Queue[Event]] = {}

    def _put(self, problem_id: str, event: Event) -> None:
        queue = self.queues.get(problem_id)
        if queue is not None:
            self.loop.call_soon_threadsafe(queue.put_nowait, event)

    @ttc.hookimpl
    def on_call(self, run_id: str, problem_id: str, call: CallRecord) -> None:
        self._put(problem_id, ("call", (problem_id, call)))

    @ttc.hookimpl
    def on_problem_done(self, run_id: str, result: ProblemResult) -> None:
        self._put(result.problem.id, ("done", dataclasses.replace(result, branches=[])))


def worker_config(plain: dict[str, Any]) -> DictConfig:
    """The config a worker runs with: the driver's resolved one, solved locally."""
    cfg = OmegaConf.merge(OmegaConf.structured(RootConfig), plain)
    assert isinstance(cfg, DictConfig)
    cfg.run.executor = "local"
    cfg.run.progress = False
    cfg.resume = None
    validate(cfg)
    return cfg


class ProblemWorker:
    """Solves chunks of one run's problems (see the module docstring)."""

    def __init__(
        self,
        config: dict[str, Any],
        run_id: str,
        *,
        store_url: str,
        pool_size: int,
        chunk_size: int,
        replace_error: bool,
        env: dict[str, str],
    ) -> None:
        for key, value in env.items():
            os.environ[key] = value
        for path in reversed(env.get("PYTHONPATH", "").split(os.pathsep)):
            if path and path not in sys.path:
                sys.path.insert(0, path)
        self.cfg = worker_config(config)
        # each chunk runs its problems at once; the driver keeps enough chunks in flight
        self.cfg.run.concurrency = chunk_size
        self.run_id = run_id
        self.store_url = store_url
        self.pool_size = pool_size
        self.replace_error = replace_error
        self._started: Any = None

    async def start(self) -> dict[str, Any]:
        """Build and start the plugins and open the store; where the worker runs."""
        from ttc.registry import get_registry
        from ttc.runner import build_components, start_components
        from ttc.store import Store

        self.registry = get_registry()
        self.forward = _Forward(asyncio.get_running_loop())
        self.registry.pm.register(self.forward, name="ttc.executor.forward")
        self._tokens = 0
        self._tokens_lock = threading.Lock()
        add_token_listener(self._count_tokens)
        self.parts = build_components(self.cfg, self.registry)
        self.scheduler = await start_components(self.cfg, self.parts, [])
        # the driver migrated the store; a worker only writes
        self.store = await asyncio.to_thread(
            Store, self.store_url, migrate=False, pool_size=self.pool_size
        )
        import ray

        return {"pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def _count_tokens(self, n: int) -> None:  # from a backend's thread
        with self._tokens_lock:
            self._tokens += n

    def _take_tokens(self) -> list[Event]:
        """The tokens generated since the last report, as an event (none if none)."""
        with self._tokens_lock:
            n, self._tokens = self._tokens, 0
        return [("tokens", n)] if n else []

    def _allocator(self) -> Any:
        """A fresh allocator for a chunk: budgets that allocators share between problems
        (`global`, `rollover`) are shared within the chunk."""
        reg = self.registry.get("allocator", str(self.cfg.allocator.name))
        config = instantiate_config(reg.config_cls, self.cfg.allocator, "allocator")
        return reg.cls(config, self.parts.allocator.budget)

    async def solve(self, chunk: list[tuple[int, Problem]]) -> AsyncIterator[list[Event]]:
        """Solve a chunk of (index, problem); yield the events of its problems as they
        happen, the count of newly stored problems last."""
        from ttc.runner import Runner

        queue: asyncio.Queue[Event] = asyncio.Queue()
        for _, problem in chunk:
            self.forward.queues[problem.id] = queue
        allocator = self._allocator()
        allocator.plan([p for _, p in chunk])
        parts = dataclasses.replace(self.parts, allocator=allocator)
        runner = Runner(self.cfg, registry=self.registry)
        runner.remaining = len(chunk)
        task = asyncio.create_task(
            runner._solve_all(
                self.run_id,
                self.cfg,
                parts,
                self.scheduler,
                self.store,
                chunk,
                replace_error=self.replace_error,
            )
        )
        task.add_done_callback(lambda _: queue.put_nowait(_DONE))
        try:
            while True:
                try:
                    events = [await asyncio.wait_for(queue.get(), TOKENS_EVERY_S)]
                except TimeoutError:  # nothing finished meanwhile: the tokens so far
                    if tokens := self._take_tokens():
                        yield tokens
                    continue
                while not queue.empty():
                    events.append(queue.get_nowait())
                ended = _DONE in events
                # the tokens first: a problem's own tokens reach the driver before it is done
                events = self._take_tokens() + [e for e in events if e is not _DONE]
                if events:
                    yield events
                if ended:
                    break
            yield [("written", await task)]
        finally:
            for _, problem in chunk:
                self.forward.queues.pop(problem.id, None)
            task.cancel()

    async def close(self) -> None:
        remove_token_listener(self._count_tokens)
        await self.parts.backend.close()
        for extra in self.parts.models.values():  # a strategy's further models
            await extra.close()
        if self.parts.reward is not None:
            await self.parts.reward.close()
        self.store.close()
