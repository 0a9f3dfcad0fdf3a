"""`run.executor=ray`: one run's problems across the actors of a Ray cluster.

The driver (the `ttc run` process) keeps the run's row, heartbeat, progress line and
totals, as a local run does. It places actors (`ttc.executor.worker.ProblemWorker`) on
the cluster's nodes (`ray.actors_per_node`, or `ray.actors_per_gpu` on nodes with GPUs),
and hands each one chunks of `ray.chunk_size` problems, keeping enough chunks in flight
that an actor holds `ray.concurrency_per_actor` problems at once. An actor that finishes
a chunk pulls the next one (see `ttc.executor.routing` for the order and why).

Faults: when an actor dies (killed, out of memory, its node lost), the problems of its
unfinished chunks go back to the front of the queue and another actor solves them; a
replacement actor is started while fewer than `ray.max_actor_failures` have died. Each
problem is stored in one transaction under the store's unique (run, problem) key, so a
problem the dead actor had already committed is not stored again and a half-solved one
left nothing behind. When the driver itself dies, the actors die with it and
`ttc run resume=<id>` continues the run like a local one.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from omegaconf import OmegaConf
from sqlalchemy.engine import make_url

from ttc.errors import ConfigError, ExecutorError, TtcError
from ttc.executor.routing import chunks
from ttc.executor.worker import FORWARDED_ENV, Event, ProblemWorker
from ttc.progress import tokens_generated, verbose
from ttc.types import Problem

if TYPE_CHECKING:
    from ttc.runner import Runner


@dataclass(frozen=True)
class Placement:
    """Where one actor goes: a node and its share of that node's GPUs."""

    node_id: str
    num_gpus: float


def plan_actors(nodes: list[dict[str, Any]], options: Any) -> list[Placement]:
    """One placement per actor: `actors_per_gpu` per GPU on nodes with GPUs when it is
    set, else `actors_per_node` on every node."""
    out = []
    for node in nodes:
        gpus = int(node.get("Resources", {}).get("GPU", 0))
        per_gpu = options.actors_per_gpu
        if per_gpu and gpus:
            out += [Placement(node["NodeID"], 1.0 / per_gpu)] * (gpus * per_gpu)
        else:
            out += [Placement(node["NodeID"], 0.0)] * options.actors_per_node
    return out


def actor_name(run_id: str, k: int) -> str:
    """The Ray name of a run's k-th actor (`ray list actors` shows it)."""
    return f"ttc-{run_id}-{k}"


def sqlite_file(url: str) -> str | None:
    """The file of a SQLite store URL, made absolute (workers may start elsewhere)."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return None
    return os.path.abspath(parsed.database or ":memory:")


class RayExecutor:
    """Runs the problems of one run on Ray actors (see the module docstring)."""

    def __init__(self, cfg: Any, *, store_url: str, placements: list[Placement], own: bool):
        self.cfg = cfg
        self.options = cfg.ray
        self.store_url = store_url
        self.placements = placements
        self._own_cluster = own
        self._actors: list[Any] = []
        self._spawned = 0
        self.deaths = 0
        """Actors of this run that died (their problems ran elsewhere)."""
        self.nodes_used: set[str] = set()
        """Ray node ids the run's actors started on."""

    @classmethod
    def connect(cls, cfg: Any, *, store_url: str) -> RayExecutor:
        """Join (or start) the cluster, plan the actors and check the store can be
        shared by them: SQLite only when all of them run on one node."""
        try:
            import ray
        except ImportError as exc:
            raise ConfigError(
                "run.executor=ray needs Ray, which is not installed",
                key="run.executor",
                value="ray",
                hint="pip install 'ttc[ray]', or run.executor=local",
            ) from exc
        options = cfg.ray
        own = False
        if not ray.is_initialized():
            address = str(options.address or "") or None
            try:
                ray.init(
                    address=address,
                    include_dashboard=False,
                    log_to_driver=verbose(),
                    logging_level=logging.INFO if verbose() else logging.ERROR,
                )
            except Exception as exc:
                raise ConfigError(
                    f"cannot join the Ray cluster at ray.address={options.address!r}: "
                    f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                    key="ray.address",
                    value=options.address,
                    hint="`ray start --head` on the head node, then ray.address=auto there "
                    "(or host:6379); leave ray.address empty for a local cluster",
                ) from exc
            own = address is None
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        placements = plan_actors(nodes, options)
        n_nodes = len({p.node_id for p in placements})
        db = sqlite_file(store_url)
        if db is not None and (n_nodes > 1 or db.endswith(":memory:")):
            if own:
                ray.shutdown()
            where = f"{n_nodes} nodes" if n_nodes > 1 else "an in-memory database"
            raise ConfigError(
                f"store=sqlite cannot be shared by a Ray run across {where}; "
                "use store=postgres (store.url=postgresql+psycopg://...)",
                key="store.url",
                hint="PostgreSQL is the store of multi-node runs (pip install 'ttc[postgres]')",
            )
        if db is not None:
            store_url = f"sqlite:///{db}"
        return cls(cfg, store_url=store_url, placements=placements, own=own)

    # -- actors -----------------------------------------------------------------------
    def _slots(self) -> int:
        """Chunks in flight per actor: enough for `concurrency_per_actor` problems."""
        per_actor = self.options.concurrency_per_actor or self.cfg.run.concurrency
        size = self.options.chunk_size
        return max(1, -(-int(per_actor) // int(size)))

    def _spawn(self, placement: Placement, run_id: str, *, replace_error: bool) -> Any:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        plain = OmegaConf.to_container(self.cfg, resolve=True)
        env = {k: os.environ[k] for k in (*FORWARDED_ENV, "PYTHONPATH") if k in os.environ}
        actor_cls = ray.remote(ProblemWorker)
        self._spawned += 1
        actor = actor_cls.options(  # type: ignore[attr-defined]
            name=actor_name(run_id, self._spawned),
            num_cpus=float(self.options.cpus_per_actor),
            num_gpus=placement.num_gpus,
            max_concurrency=self._slots() + 2,
            # soft: a replacement still starts when its node is gone
            scheduling_strategy=NodeAffinitySchedulingStrategy(placement.node_id, soft=True),
        ).remote(
            plain,
            run_id,
            store_url=self.store_url,
            pool_size=self._slots(),
            chunk_size=int(self.options.chunk_size),
            replace_error=replace_error,
            env=env,
        )
        self._actors.append(actor)
        return actor

    async def _start(self, actor: Any) -> None:
        try:
            where = await actor.start.remote()
            self.nodes_used.add(where["node"])
        except Exception as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, TtcError):  # a config or plugin error: as a local run says it
                raise cause from None
            raise ExecutorError(
                f"a Ray worker could not start the run's plugins: {_cause(exc)}",
                hint="the error names the plugin; check the config and that every node "
                "has ttc and the plugin installed",
            ) from exc

    # -- the run ----------------------------------------------------------------------
    async def solve(
        self, runner: Runner, run_id: str, todo: list[tuple[int, Problem]], *, replace_error: bool
    ) -> int:
        """Solve `todo` on the actors; fire the runner's hooks as their events arrive;
        return how many problems were newly stored."""
        from ray.exceptions import RayActorError

        queue: deque[list[tuple[int, Problem]]] = deque(chunks(todo, self.options.chunk_size))
        changed = asyncio.Condition()
        done: set[str] = set()
        inflight = written = deaths = 0
        hook = runner.hook

        def handle(event: Event) -> None:
            nonlocal written
            kind, value = event
            if kind == "call":
                problem_id, call = value
                hook.on_call(run_id=run_id, problem_id=problem_id, call=call)
            elif kind == "done":
                done.add(value.problem.id)
                if runner.remaining is not None:
                    runner.remaining -= 1
                hook.on_problem_done(run_id=run_id, result=value)
            elif kind == "tokens":  # the actors' decoding moves the progress line
                tokens_generated(int(value))
            elif kind == "written":
                written += int(value)

        async def feed(actor: Any, dead: asyncio.Event) -> None:
            """Hand `actor` chunks until none are left or it died."""
            nonlocal inflight
            while not dead.is_set():
                async with changed:
                    while not queue and inflight and not dead.is_set():
                        await changed.wait()  # a dead actor's chunk may come back
                    if not queue or dead.is_set():
                        return
                    chunk = queue.popleft()
                    inflight += 1
                try:
                    async for ref in actor.solve.remote(chunk):
                        for event in await ref:
                            handle(event)
                except RayActorError:
                    dead.set()
                    left = [(i, p) for i, p in chunk if p.id not in done]
                    if left:
                        queue.appendleft(left)
                finally:
                    async with changed:
                        inflight -= 1
                        changed.notify_all()

        async def drive(placement: Placement) -> None:
            nonlocal deaths
            while True:
                actor = self._spawn(placement, run_id, replace_error=replace_error)
                await self._start(actor)
                dead = asyncio.Event()
                await asyncio.gather(*(feed(actor, dead) for _ in range(self._slots())))
                if not dead.is_set():
                    return
                deaths += 1
                self.deaths = deaths
                self._forget(actor)
                if deaths > int(self.options.max_actor_failures) or not (queue or inflight):
                    return
                # a replacement takes over the dead actor's share of the cluster

        await asyncio.gather(*(drive(p) for p in self.placements))
        if queue:
            raise ExecutorError(
                f"{deaths} Ray workers died and {sum(len(c) for c in queue)} problems were "
                f"left unsolved (ray.max_actor_failures={self.options.max_actor_failures})",
                hint=f"`ttc run resume={run_id}` solves the rest",
            )
        return written

    @property
    def actors(self) -> list[Any]:
        """Handles of the run's live actors."""
        return list(self._actors)

    def _forget(self, actor: Any) -> None:
        import ray

        if actor in self._actors:
            self._actors.remove(actor)
        try:
            ray.kill(actor)
        except Exception:
            return

    def close(self) -> None:
        """Stop the actors (their backends go with them); a cluster this run started
        is shut down."""
        import ray

        for actor in self._actors:
            try:
                ray.kill(actor)
            except Exception:
                continue
        self._actors.clear()
        if self._own_cluster:
            ray.shutdown()


def _cause(exc: BaseException) -> str:
    """The first line of the error a remote call raised (Ray wraps it)."""
    cause = getattr(exc, "cause", None) or exc
    text = str(cause).strip().splitlines()
    return text[-1] if text else type(cause).__name__
