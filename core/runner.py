"""The orchestrator: builds the plugins a config names and solves every problem of the
task concurrently, batching their calls through one scheduler and writing each finished
problem to the store in its own transaction.

A crashed or interrupted run is continued with `resume=<run id>` (see `ttc.resume`):
problems already in the store are skipped (errored ones are retried), the rest run again
from scratch with the stored config, so each gives what an uninterrupted run gives. While
it runs, a heartbeat thread marks the run as alive.
"""

from __future__ import annotations

import asyncio
import os
import platform
import sys
import traceback
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ttc.budget import Budget, Ledger
from ttc.config import StoreConfig, instantiate_config, to_object, validate
from ttc.context import ModelRoute, ProblemContext, solve_problem
from ttc.cost import CostModel, check_measurable
from ttc.errors import ConfigError, DataError
from ttc.executor import remote_executor
from ttc.interfaces import Allocator, Backend, RewardModel, Strategy, Task
from ttc.registry import Registry, get_registry
from ttc.resume import ResumeRequest, check_same_problems, fingerprint
from ttc.resume import resolve as resolve_resume
from ttc.scheduler import BatchStats, Scheduler
from ttc.store import Store
from ttc.store.liveness import Heartbeat
from ttc.store.secrets import mask_config, scrub
from ttc.types import CallRecord, Problem, ProblemResult, Solution


@dataclass
class RunOutcome:
    run_id: str
    status: str
    totals: dict[str, Any]
    batch_stats: BatchStats
    solved_now: int


@dataclass
class Components:
    task: Task
    backend: Backend
    reward: RewardModel | None
    strategy: Strategy
    allocator: Allocator
    models: dict[str, Backend] = field(default_factory=dict)
    """The strategy's further models (`Strategy.models`), by name."""
    routes: dict[str, ModelRoute] = field(default_factory=dict)
    """Their schedulers and cost models, once started (`start_models`)."""


def build_components(cfg: DictConfig, registry: Registry) -> Components:
    """Instantiate the registered implementations the config names."""

    def make(kind: str) -> tuple[type, Any]:
        reg = registry.get(kind, str(cfg[kind].name))
        return reg.cls, instantiate_config(reg.config_cls, cfg[kind], kind)

    task_cls, task_cfg = make("task")
    backend_cls, backend_cfg = make("backend")
    strategy_cls, strategy_cfg = make("strategy")
    allocator_cls, allocator_cfg = make("allocator")
    backend: Backend = backend_cls(backend_cfg)
    reward: RewardModel | None = None
    if str(cfg.reward.name) != "none":
        reward_cls, reward_cfg = make("reward")
        if getattr(reward_cls, "needs_backend", False):
            reward = reward_cls(reward_cfg, backend=backend)
        else:
            reward = reward_cls(reward_cfg)
    strategy: Strategy = strategy_cls(strategy_cfg)
    if strategy.uses_reward and reward is None:
        raise ConfigError(
            f"strategy '{strategy.name}' ranks branches with a reward model, but reward=none",
            key="reward",
            value="none",
            hint="choose a reward model, e.g. reward=self_certainty (see `ttc plugins`)",
        )
    budget = Budget.from_config(to_object(cfg.budget, "budget"))
    return Components(
        task=task_cls(task_cfg),
        backend=backend,
        reward=reward,
        strategy=strategy,
        allocator=allocator_cls(allocator_cfg, budget),
        models=build_models(cfg, registry, strategy),
    )


def build_models(cfg: DictConfig, registry: Registry, strategy: Strategy) -> dict[str, Backend]:
    """The backends of a strategy's further models: the run's `backend` config with the
    strategy's overrides for each (`Strategy.models`)."""
    return {
        role: build_model(cfg, registry, role, overrides)
        for role, overrides in strategy.models().items()
    }


def build_model(
    cfg: DictConfig, registry: Registry, role: str, overrides: dict[str, Any]
) -> Backend:
    """The backend of the strategy's model `role` (not started)."""
    run_backend = OmegaConf.to_container(cfg.backend, resolve=True)
    assert isinstance(run_backend, dict)
    if overrides.get("name", run_backend["name"]) != run_backend["name"]:
        run_backend = {}  # another kind of backend: none of the run's keys apply
    node = OmegaConf.merge(run_backend, overrides)
    reg = registry.get("backend", str(node.name))
    # by convention the strategy's key for model `role` is `<role>_backend`
    key = f"strategy.{role}_backend"
    backend: Backend = reg.cls(instantiate_config(reg.config_cls, node, key))
    return backend


async def start_model(backend: Backend, cfg: DictConfig) -> ModelRoute:
    """Start a further model behind a scheduler of its own."""
    await backend.start()
    return ModelRoute(
        backend=backend,
        scheduler=Scheduler(
            backend,
            None,
            max_batch_size=cfg.scheduler.max_batch_size,
            max_wait_s=cfg.scheduler.max_wait_ms / 1000.0,
        ),
        cost=CostModel(backend.architecture),
    )


async def start_models(parts: Components, cfg: DictConfig) -> None:
    """Start the strategy's further models, each behind a scheduler of its own."""
    for role, backend in parts.models.items():
        parts.routes[role] = await start_model(backend, cfg)


def versions(registry: Registry) -> dict[str, Any]:
    import importlib.metadata as md

    from ttc import __version__

    packages = {}
    for name in ("torch", "transformers", "vllm", "hydra-core", "sqlalchemy", "math-verify"):
        try:
            packages[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return {
        "ttc": __version__,
        "python": platform.python_version(),
        "packages": packages,
        "plugins": {p.name: p.version for p in registry.plugins.values()},
    }


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpus"] = torch.cuda.device_count()
    return info


def grade(
    task: Task, problem: Problem, solution: Solution | None, ctx: ProblemContext
) -> dict[str, Any]:
    """Correctness of the chosen answer, and pass@1 / majority / oracle over the leaves."""
    cache: dict[str | None, bool | None] = {}

    def is_correct(answer: str | None) -> bool | None:
        if answer not in cache:
            if problem.reference is None:
                cache[answer] = None
            else:
                cache[answer] = bool(answer is not None and task.is_correct(answer, problem))
        return cache[answer]

    answer = solution.answer if solution is not None else None
    leaves = ctx.leaves()
    leaf_answers = [ctx.answer(b) for b in leaves]
    out: dict[str, Any] = {
        "answer": answer,
        "correct": is_correct(answer),
        "pass_at_1": None,
        "majority_correct": None,
        "oracle_correct": None,
        "n_leaves": len(leaves),
    }
    if problem.reference is None or not leaves:
        return out
    marks = [bool(is_correct(a)) for a in leaf_answers]
    out["pass_at_1"] = sum(marks) / len(marks)
    out["oracle_correct"] = any(marks)
    votes = Counter(task.normalize(a) for a in leaf_answers if a is not None)
    if votes:
        top = votes.most_common(1)[0][0]
        first = next(a for a in leaf_answers if a is not None and task.normalize(a) == top)
        out["majority_correct"] = bool(is_correct(first))
    else:
        out["majority_correct"] = False
    return out


class Runner:
    """Runs one job described by a composed config, or continues a stored run (`resume`)."""

    def __init__(
        self,
        cfg: DictConfig | None = None,
        *,
        registry: Registry | None = None,
        sweep: str | None = None,
        resume: ResumeRequest | None = None,
    ) -> None:
        if resume is None and cfg is not None and cfg.get("resume"):
            # a composed config naming a run to resume: its store is where to find it
            resume = ResumeRequest(str(cfg.resume), {"store.url": str(cfg.store.url)})
        if resume is None:
            if cfg is None:
                raise ValueError("Runner needs a config or a ResumeRequest")
            validate(cfg)
        self.cfg = cfg
        self.resume = resume
        self.registry = registry or get_registry()
        self.sweep = sweep
        self.hook = self.registry.pm.hook
        self.run_id: str | None = None
        self.remaining: int | None = None
        """Problems of this run not yet stored (None until the run row exists)."""
        self.executor: Any = None
        """The remote executor of a `run.executor=ray` run (`ttc.executor`), once joined."""

    def run(self) -> RunOutcome:
        return asyncio.run(self.arun())

    def finish_after_late_interrupt(self) -> RunOutcome:
        """The outcome of a run interrupted after its last problem was stored: finished."""
        assert self.run_id is not None and self.cfg is not None
        url = self.resume.store_url if self.resume is not None else str(self.cfg.store.url)
        store = Store(url)
        try:
            run = store.get_run(self.run_id)
            if run["status"] == "finished" and run["totals"] is not None:
                totals = run["totals"]
            else:
                totals = store.finish_run(self.run_id, "finished")
        finally:
            store.close()
        return RunOutcome(self.run_id, "finished", totals, BatchStats(), self.remaining or 0)

    async def arun(self) -> RunOutcome:
        if self.resume is not None:
            url, echo = self.resume.store_url, False
        else:
            assert self.cfg is not None
            store_cfg = instantiate_config(StoreConfig, self.cfg.store, "store")
            url, echo = store_cfg.url, store_cfg.echo
        store = Store(url, echo=echo)
        try:
            return await self._arun(store)
        finally:
            store.close()

    async def _arun(self, store: Store) -> RunOutcome:
        resume = self.resume
        stored_statuses: dict[str, str] = {}
        if resume is not None:
            run_id = store.resolve_id(resume.run_id)
            stored = store.get_run(run_id)
            cfg = resolve_resume(resume, stored["config"], store_url=store.url)
            store.refuse_if_live(run_id, force=resume.force)
            stored_statuses = store.problem_statuses(run_id)
        else:
            assert self.cfg is not None
            cfg = self.cfg
        self.cfg = cfg
        parts = build_components(cfg, self.registry)
        problems = parts.task.load()
        _check_unique(problems)
        if resume is not None:
            check_same_problems(run_id, stored["fingerprint"], problems)
        plain = OmegaConf.to_container(cfg, resolve=True)
        assert isinstance(plain, dict)
        task = asyncio.current_task()
        if task is not None and task.cancelling():  # Ctrl-C came while loading: no run row
            raise asyncio.CancelledError
        executor = remote_executor(cfg, store_url=store.url)  # checked before the run row
        self.executor = executor
        if resume is not None:
            store.claim(run_id, force=resume.force)
        else:
            run_id = store.create_run(
                config=mask_config({str(k): v for k, v in plain.items() if k != "resume"}),
                strategy=parts.strategy.name,
                backend=parts.backend.name,
                model=parts.backend.model_name,
                task=parts.task.name,
                reward=str(cfg.reward.name),
                versions=versions(self.registry),
                hardware=hardware(),
                name=cfg.run.name,
                sweep=self.sweep,
                n_problems=len(problems),
                fingerprint=fingerprint(problems),
            )
        self.run_id = run_id
        retry = resume is not None and resume.retry_errors
        skip = {pid for pid, st in stored_statuses.items() if st != "error" or not retry}
        todo = [(i, p) for i, p in enumerate(problems) if p.id not in skip]
        self.remaining = len(todo)
        heartbeat = Heartbeat(lambda: store.heartbeat(run_id)).start()
        self.hook.on_run_start(run_id=run_id, config=mask_config(plain), n_problems=len(todo))
        status, error = "failed", None
        scheduler: Scheduler | None = None
        solved = 0
        try:
            if executor is not None:  # the problems run on remote workers (ttc.executor)
                solved = await executor.solve(self, run_id, todo, replace_error=retry)
            else:
                scheduler = await start_components(cfg, parts, [p for _, p in todo])
                solved = await self._solve_all(
                    run_id, cfg, parts, scheduler, store, todo, replace_error=retry
                )
            status = "finished"
        except (KeyboardInterrupt, asyncio.CancelledError):
            # An interrupt that lands after the last problem was stored ends nothing.
            status = "finished" if self.remaining == 0 else "interrupted"
            if status == "interrupted":
                raise
        except Exception as exc:
            error = scrub(f"{type(exc).__name__}: {exc}")
            raise
        finally:
            try:
                if executor is not None:
                    executor.close()
                await parts.backend.close()
                for extra in parts.models.values():
                    await extra.close()
                if parts.reward is not None:
                    await parts.reward.close()
            finally:
                totals = store.finish_run(run_id, status, error=error)
                heartbeat.stop()
                self.hook.on_run_end(run_id=run_id, status=status, totals=totals)
        stats = scheduler.generate_queue.stats if scheduler is not None else BatchStats()
        return RunOutcome(run_id, status, totals, stats, solved)

    async def _solve_all(
        self,
        run_id: str,
        cfg: DictConfig,
        parts: Components,
        scheduler: Scheduler,
        store: Store,
        todo: list[tuple[int, Problem]],
        *,
        replace_error: bool = False,
    ) -> int:
        sem = asyncio.Semaphore(cfg.run.concurrency)
        write_lock = asyncio.Lock()
        cost = CostModel(parts.backend.architecture)
        aggregate_how = str(cfg.reward.get("aggregate", "last"))
        seed = int(cfg.run.seed)
        written = 0

        async def solve_one(index: int, problem: Problem) -> None:
            nonlocal written
            async with sem:
                if parts.backend.unavailable() is not None:
                    return  # the server is down: left unsolved for a resume
                result = await self._solve(
                    index, problem, run_id, parts, scheduler, cost, aggregate_how, seed
                )
            async with write_lock:
                if await asyncio.to_thread(
                    store.record_problem, run_id, result, replace_error=replace_error
                ):
                    written += 1
                assert self.remaining is not None
                self.remaining -= 1
            self.hook.on_problem_done(run_id=run_id, result=result)

        await asyncio.gather(*(solve_one(i, p) for i, p in todo))
        down = parts.backend.unavailable()
        if down is not None:  # stop the run with the one line that says why
            if "resume=" not in (down.hint or ""):
                down.hint = f"{down.hint}; then continue with `ttc run resume={run_id}`"
            raise down
        return written

    async def solve_problem(
        self,
        index: int,
        problem: Problem,
        run_id: str,
        parts: Components,
        scheduler: Scheduler,
        cost: CostModel,
        *,
        aggregate_how: str = "last",
        seed: int = 0,
    ) -> ProblemResult:
        """Solve one problem now through `parts` and a started `scheduler`, as `arun` does
        for each of its problems (nothing is stored): for callers that bring problems one
        at a time, e.g. `ttc serve`."""
        return await self._solve(
            index, problem, run_id, parts, scheduler, cost, aggregate_how, seed
        )

    async def _solve(
        self,
        index: int,
        problem: Problem,
        run_id: str,
        parts: Components,
        scheduler: Scheduler,
        cost: CostModel,
        aggregate_how: str,
        seed: int,
    ) -> ProblemResult:

        def on_call(call: CallRecord) -> None:
            self.hook.on_call(run_id=run_id, problem_id=problem.id, call=call)

        try:  # a failure in one problem's planning, rendering or encoding is its own
            budget = parts.allocator.budget_for(problem)
            ledger = Ledger(budget, cost)
            prompt, prompt_ids = await render_encode(parts.backend, problem)
            ctx = ProblemContext(
                problem=problem,
                prompt=prompt,
                prompt_ids=prompt_ids,
                scheduler=scheduler,
                ledger=ledger,
                task=parts.task,
                aggregate=aggregate_how,
                seed=seed,
                on_call=on_call,
                models=parts.routes,
            )
        except Exception as exc:
            return _failed_before_solving(index, problem, exc)
        solution: Solution | None = None
        status: Any = "ok"
        error = None
        try:
            solution = await solve_problem(
                parts.strategy, problem, ctx, ledger, allocator=parts.allocator
            )
        except Exception as exc:
            status = "error"
            error = _format_error(exc)
        budget = ledger.budget  # the allocator's plan may have chosen another one
        spent = ledger.close().as_dict()
        parts.allocator.release(problem, budget, spent)
        if solution is not None and solution.branch is not None:
            solution.branch.selected = True
        grades = await asyncio.to_thread(grade, parts.task, problem, solution, ctx)
        return ProblemResult(
            index=index,
            problem=problem,
            status=status,
            answer=grades["answer"],
            correct=grades["correct"],
            pass_at_1=grades["pass_at_1"],
            majority_correct=grades["majority_correct"],
            oracle_correct=grades["oracle_correct"],
            n_leaves=grades["n_leaves"],
            spent=spent,
            budget=budget.as_dict(),
            branches=list(ctx.branches.values()),
            calls=ctx.calls,
            trace=(solution.trace if solution is not None else {}),
            error=error,
        )


async def start_components(
    cfg: DictConfig, parts: Components, problems: list[Problem]
) -> Scheduler:
    """Plan the allocator over `problems`, start the backend, the strategy's further
    models (`start_models`) and the reward model, check that
    the budget's units can be measured, and return the scheduler in front of them."""
    parts.allocator.plan(problems)
    await parts.backend.start()
    await start_models(parts, cfg)
    if parts.reward is not None:
        await parts.reward.start()
    check_measurable(parts.allocator.budget.limits(), backend=parts.backend, reward=parts.reward)
    return Scheduler(
        parts.backend,
        parts.reward,
        max_batch_size=cfg.scheduler.max_batch_size,
        max_wait_s=cfg.scheduler.max_wait_ms / 1000.0,
    )


def _format_error(exc: BaseException) -> str:
    return scrub("".join(traceback.format_exception(exc, limit=8)))


async def render_encode(backend: Backend, problem: Problem) -> tuple[str, list[int]]:
    """The problem's prompt and its ids (a `raw` problem's prompt as it stands, not
    rendered); in a worker thread for a backend whose codec makes blocking calls
    (`blocking_codec`: HTTP tokenization with retries)."""

    def both() -> tuple[str, list[int]]:
        if problem.raw and problem.prompt is not None:
            prompt = problem.prompt
        else:
            prompt = backend.render(problem)
        return prompt, list(backend.encode(prompt))

    if getattr(backend, "blocking_codec", False):
        return await asyncio.to_thread(both)
    return both()


def _failed_before_solving(index: int, problem: Problem, exc: Exception) -> ProblemResult:
    return ProblemResult(
        index=index,
        problem=problem,
        status="error",
        answer=None,
        correct=None,
        pass_at_1=None,
        majority_correct=None,
        oracle_correct=None,
        spent={},
        budget={},
        branches=[],
        calls=[],
        error=_format_error(exc),
    )


def _check_unique(problems: list[Problem]) -> None:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise DataError(
                f"the task yields problem id '{p.id}' twice; ids must be unique",
                hint="give every problem a distinct id (e.g. task.id_field=...)",
            )
        seen.add(p.id)
