"""The serving run: one run in the store whose problems are the requests.

Its plugins (backend, reward model) are started once; every request is solved through
the Runner's per-problem path (`Runner.solve_problem`) and one shared `Scheduler`, so
the searches of concurrent requests are batched together. Finished requests are
stored through one `GroupWriter`: a request alone is committed at once, requests that
finish together share a transaction (group commit), so the store does not cap the
request rate at one commit per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import itertools
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ttc.config import StoreConfig, instantiate_config
from ttc.context import ModelRoute
from ttc.cost import CostModel, check_measurable
from ttc.errors import ConfigError, TtcError
from ttc.interfaces import Backend, Strategy
from ttc.registry import Registry, get_registry
from ttc.runner import (
    Components,
    Runner,
    build_components,
    build_model,
    hardware,
    start_model,
    versions,
)
from ttc.scheduler import BatchStats, Scheduler
from ttc.serve.allocation import RequestAllocators
from ttc.serve.config import ServeConfig, serve_config
from ttc.serve.plan import Planner, RequestError, RequestPlan
from ttc.store import Store
from ttc.store.liveness import Heartbeat
from ttc.store.secrets import mask_config
from ttc.store.writer import GroupWriter
from ttc.types import Branch, Problem, ProblemResult, Solution

SERVE_TASK = "serve"
"""The `task` a serving run is stored under."""


log = logging.getLogger("ttc.serve")


class Unavailable(Exception):
    """The server is shutting down (or not started): the request gets a 503."""


class NotStored(Exception):
    """The request was solved but its transaction failed (the store is locked, full,
    gone): nothing of it is in the store, and the request gets a 500 saying so."""


@dataclass
class Answer:
    """What one request got, and what it cost."""

    run_id: str
    problem_id: str
    status: str
    strategy: str
    """The strategy that answered: the request's, or the allocator's choice."""
    text: str
    finish_reason: str
    """OpenAI's: `stop` (end of sequence or a stop string) or `length`."""
    answer: str | None
    spent: dict[str, float]
    plan: RequestPlan
    error: str | None = None


class _Chosen(Strategy):
    """The request's strategy, remembering the solution it returned (its branch is the
    response's text). Delegates everything; anytime strategies stay anytime."""

    def __init__(self, inner: Strategy) -> None:
        super().__init__(inner.config)
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]
        self.uses_reward = inner.uses_reward  # type: ignore[misc]
        self.last: Solution | None = None

    def solve(self, problem: Problem, ctx: Any) -> Any:
        out: Any = self.inner.solve(problem, ctx)
        if inspect.isasyncgen(out):
            return self._anytime(out)
        return self._once(out)

    async def _anytime(self, out: AsyncIterator[Any]) -> AsyncIterator[Solution]:
        async for current in out:
            self.last = current
            yield current

    async def _once(self, out: Any) -> Solution:
        self.last = await out
        return self.last


class ServingRun:
    """A long-lived run answering one problem per request."""

    def __init__(
        self,
        cfg: DictConfig,
        *,
        registry: Registry | None = None,
        serve: ServeConfig | None = None,
        name: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.registry = registry or get_registry()
        self.serve = serve or serve_config(cfg.get("serve"))
        self.name = name or cfg.run.name
        self.runner = Runner(cfg, registry=self.registry)
        self.run_id: str | None = None
        self.draining = False
        self.inflight = 0
        """Requests being searched, or answered and not yet stored (write-behind)."""
        self._searching = 0
        self.answered = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._writes: set[asyncio.Future[bool]] = set()
        self.writer: GroupWriter | None = None
        self._index = itertools.count()
        self._store: Store | None = None
        self._parts: Components | None = None
        self._scheduler: Scheduler | None = None
        self._heartbeat: Heartbeat | None = None
        self.planner: Planner | None = None
        self.startup_error: Exception | None = None
        self._routes: dict[str, ModelRoute] = {}
        """The strategies' further models (`Strategy.models`) started so far, by role and
        config: shared by every request whose strategy names the same model."""
        self._routes_lock: asyncio.Lock | None = None
        """Why `start` failed, when it did (the server then stops; see `create_app`)."""

    # -- life cycle ---------------------------------------------------------------------
    def prepare(self) -> None:
        """Build the plugins and check the config (no model loaded yet): a bad config
        fails here, in one line, before the server listens."""
        if self._parts is not None:
            return
        cfg = self.cfg
        self._store_cfg = instantiate_config(StoreConfig, cfg.store, "store")
        parts = build_components(cfg, self.registry)
        self._allocators = RequestAllocators(parts.allocator)
        nodes = strategy_nodes(cfg, self.registry)
        self.planner = Planner(cfg, self.registry, self.serve, nodes)
        self._parts = parts

    async def start(self) -> str:
        """Start the plugins (in the server's event loop) and create the serving run."""
        self.prepare()
        cfg, parts, store_cfg = self.cfg, self._parts, self._store_cfg
        assert parts is not None
        store = Store(
            store_cfg.url, echo=store_cfg.echo, sqlite_synchronous=self.serve.sqlite_synchronous
        )
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(plain, dict)
        config = mask_config({str(k): v for k, v in plain.items() if k != "resume"})
        await parts.backend.start()
        self._routes_lock = asyncio.Lock()
        try:
            if parts.reward is not None:
                await parts.reward.start()
            # the server's own strategy's models start with it (a bad one fails here)
            declared = parts.strategy.models()
            for role, backend in parts.models.items():
                route = await start_model(backend, cfg)
                self._routes[_model_key(role, declared[role])] = route
        except BaseException:
            await self._close_models()
            if parts.reward is not None:
                await parts.reward.close()
            await parts.backend.close()
            raise
        run_id = store.create_run(
            config=config,
            strategy=parts.strategy.name,
            backend=parts.backend.name,
            model=parts.backend.model_name,
            task=SERVE_TASK,
            reward=str(cfg.reward.name),
            versions=versions(self.registry),
            hardware=hardware(),
            name=self.name,
            n_problems=0,
        )
        self.run_id = run_id
        self._store = store
        self._heartbeat = Heartbeat(lambda: store.heartbeat(run_id)).start()
        self._max_wait_s = cfg.scheduler.max_wait_ms / 1000.0
        self._scheduler = Scheduler(
            parts.backend,
            parts.reward,
            max_batch_size=cfg.scheduler.max_batch_size,
            max_wait_s=self._max_wait_s,
        )
        self._cost = CostModel(parts.backend.architecture)
        self._sem = asyncio.Semaphore(int(cfg.run.concurrency))
        self.writer = GroupWriter(store, run_id)
        self.registry.pm.hook.on_run_start(run_id=run_id, config=config, n_problems=0)
        return run_id

    async def close(self, *, timeout_s: float | None = None) -> dict[str, Any]:
        """Refuse new requests, let the in-flight ones finish (up to `timeout_s`), then
        stop the plugins and mark the run finished (or interrupted, when some request was
        still running: it is not stored)."""
        self.draining = True
        if self._store is None or self.run_id is None:
            return {}
        timeout = self.serve.shutdown_timeout_s if timeout_s is None else timeout_s
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            status = "finished"
        except TimeoutError:
            status = "interrupted"
        parts = self._parts
        assert parts is not None
        try:
            if self.writer is not None:
                await self.writer.close()  # everything answered is committed first
            await parts.backend.close()
            await self._close_models()
            if parts.reward is not None:
                await parts.reward.close()
        finally:
            totals = self._store.finish_run(self.run_id, status)
            if self._heartbeat is not None:
                self._heartbeat.stop()
            self.registry.pm.hook.on_run_end(run_id=self.run_id, status=status, totals=totals)
            self._store.close()
            self._store = None
        return totals

    def started_models(self) -> list[Backend]:
        """The further models started so far (the server's strategy's, then those of
        requests that chose another strategy), in the order they started."""
        return [route.backend for route in self._routes.values()]

    async def _close_models(self) -> None:
        routes, self._routes = list(self._routes.values()), {}
        for route in routes:
            await route.backend.close()

    async def _models_for(self, strategy: Strategy) -> dict[str, ModelRoute]:
        """The routes of `strategy`'s further models, starting (once) those that no
        earlier request started."""
        declared = strategy.models()
        out: dict[str, ModelRoute] = {}
        for role, overrides in declared.items():
            key = _model_key(role, overrides)
            route = self._routes.get(key)
            if route is None:
                assert self._routes_lock is not None
                async with self._routes_lock:
                    route = self._routes.get(key)
                    if route is None:
                        backend = build_model(self.cfg, self.registry, role, overrides)
                        route = await start_model(backend, self.cfg)
                        self._routes[key] = route
            out[role] = route
        return out

    @property
    def batch_stats(self) -> BatchStats:
        return self._scheduler.generate_queue.stats if self._scheduler else BatchStats()

    @property
    def backend(self) -> Backend:
        if self._parts is None or self._store is None:
            raise Unavailable("the serving run is not started")
        return self._parts.backend

    @property
    def store(self) -> Store:
        if self._store is None:
            raise Unavailable("the serving run is not running")
        return self._store

    # -- requests -----------------------------------------------------------------------
    def plan(self, body: dict[str, Any]) -> RequestPlan:
        if self.planner is None or self._store is None:
            raise Unavailable("the serving run is not started")
        plan = self.planner.plan(body)
        parts = self._parts
        assert parts is not None
        try:
            check_measurable(plan.budget.limits(), backend=parts.backend, reward=parts.reward)
        except ConfigError as exc:
            raise RequestError(exc.message.replace("budget.", "ttc.budget.", 1)) from None
        return plan

    async def solve(self, plan: RequestPlan, problem: Problem) -> Answer:
        """Solve one request's problem and store it (one transaction)."""
        if self.draining or self._store is None:
            raise Unavailable("the server is shutting down")
        self.inflight += 1
        self._searching += 1
        self._idle.clear()
        self._batch_window()
        try:
            return await self._solve(plan, problem)
        finally:
            self._searching -= 1
            self._batch_window()
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()

    def _batch_window(self) -> None:
        """A request searching alone has no company to wait for: its calls go to the
        model at once. With others searching, a batch waits up to `scheduler.max_wait_ms`
        for their calls, as in `ttc run`."""
        if self._scheduler is None:
            return
        wait = self._max_wait_s if self._searching > 1 else 0.0
        for queue in (self._scheduler.generate_queue, self._scheduler.score_queue):
            if queue is not None:
                queue.max_wait_s = wait

    async def _solve(self, plan: RequestPlan, problem: Problem) -> Answer:
        parts, scheduler, run_id = self._parts, self._scheduler, self.run_id
        assert parts is not None and scheduler is not None and run_id
        reg = self.registry.get("strategy", plan.strategy)
        raw = reg.cls(plan.config)
        strategy = _Chosen(raw)
        allocator = self._allocators.for_request(
            plan.budget, strategy_named=plan.named, wrap=_Chosen
        )
        routes = await self._models_for(raw)
        request_parts = dataclasses.replace(
            parts, strategy=strategy, allocator=allocator, routes=routes
        )
        seed = int(self.cfg.run.seed) if plan.seed is None else plan.seed
        async with self._sem:
            result = await self.runner.solve_problem(
                next(self._index),
                problem,
                run_id,
                request_parts,
                scheduler,
                self._cost,
                aggregate_how=str(self.cfg.reward.get("aggregate", "last")),
                seed=seed,
            )
        result.trace = {**result.trace, "serve": plan.describe()}
        writer = self.writer
        assert writer is not None
        if self.serve.write_behind:
            self._track(writer.submit(result), result)
        else:
            try:
                await writer.write(result)
            except TtcError as exc:
                raise NotStored(
                    f"the request was solved but could not be stored (nothing of it was "
                    f"written): {exc.message}"
                ) from exc
            self.registry.pm.hook.on_problem_done(run_id=run_id, result=result)
        self.answered += 1
        chosen = allocator.strategy if isinstance(allocator.strategy, _Chosen) else strategy
        return _answer(run_id, plan, result, chosen.last, strategy=chosen.name)

    def _track(self, write: asyncio.Future[bool], result: ProblemResult) -> None:
        """A write that outlives its request: `close` waits for it like a request."""
        self.inflight += 1
        self._idle.clear()
        self._writes.add(write)

        def done(_: asyncio.Future[bool]) -> None:
            self._writes.discard(write)
            self.inflight -= 1
            if self.inflight == 0:
                self._idle.set()
            error = write.exception() if not write.cancelled() else None
            if error is not None:
                # the answer is sent already: the loss can only be reported here
                log.error("request %s was answered but not stored: %s", result.problem.id, error)
            else:
                self.registry.pm.hook.on_problem_done(run_id=self.run_id, result=result)

        write.add_done_callback(done)

    async def flush(self) -> None:
        """Wait until every answered request is in the store (with `serve.write_behind`)."""
        await asyncio.gather(*list(self._writes), return_exceptions=True)


def _model_key(role: str, overrides: dict[str, Any]) -> str:
    return f"{role}:{json.dumps(overrides, sort_keys=True, default=str)}"


def new_problem_id() -> str:
    return uuid.uuid4().hex[:20]


def strategy_nodes(cfg: DictConfig, registry: Registry) -> dict[str, dict[str, Any]]:
    """Every registered strategy's default config node as plain data (composed as `ttc run
    strategy=<name>` would); the run's own strategy keeps its overrides."""
    from ttc.launch import compose

    nodes: dict[str, dict[str, Any]] = {}
    own = str(cfg.strategy.name)
    for name in registry.names("strategy"):
        if name == own:
            node: Any = cfg.strategy
        else:
            try:
                node = compose([f"strategy={name}"]).strategy
            except ConfigError:
                continue  # a strategy without a composable default is not offered
        plain = OmegaConf.to_container(node, resolve=True)
        assert isinstance(plain, dict)
        nodes[name] = {str(k): v for k, v in plain.items()}
    return nodes


def chosen_branch(result: ProblemResult, solution: Solution | None) -> Branch | None:
    """The branch whose text answers the request: the strategy's own choice, else (a
    fallback vote, a search ended early) the best selected branch stating the answer."""
    if solution is not None and solution.branch is not None and "fallback" not in result.trace:
        return solution.branch
    selected = [b for b in result.branches if b.selected and b.step_texts]
    if result.answer is not None:
        selected = [b for b in selected if b.answer == result.answer] or selected
    if not selected:
        return None
    return max(selected, key=lambda b: (b.score if b.score is not None else -1.0, -b.id))


def _answer(
    run_id: str,
    plan: RequestPlan,
    result: ProblemResult,
    solution: Solution | None,
    *,
    strategy: str,
) -> Answer:
    branch = chosen_branch(result, solution)
    text = branch.text if branch is not None else (result.answer or "")
    finish = "length" if branch is not None and branch.finish_reason == "length" else "stop"
    text, cut = truncate_at_stop(text, plan.stop)
    if cut:
        finish = "stop"
    return Answer(
        run_id=run_id,
        problem_id=result.problem.id,
        status=result.status,
        strategy=strategy,
        text=text,
        finish_reason=finish,
        answer=result.answer,
        spent=result.spent,
        plan=plan,
        error=result.error,
    )


def truncate_at_stop(text: str, stops: tuple[str, ...]) -> tuple[str, bool]:
    """`text` up to (not including) the earliest stop string, as OpenAI servers return it."""
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not hits:
        return text, False
    return text[: min(hits)], True
