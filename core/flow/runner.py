"""Solve "generate a digit of class c" problems with a flow strategy, and store them.

`solve_flow` runs a strategy on each problem with its own `FlowLedger` (budget from the
allocator) and `FlowContext`; a refused call ends that problem's search with the best
sample proposed so far (`trace["ended_by"] = "budget"`). `record_flow_run` writes the
results to the run store like any run: one `results` row per problem (its budget and NFE
spending in the JSON columns, FLOPs and seconds in theirs), every particle a `nodes` row
(`step` = timestep, `score` = reward, `extra` = schedule time and, for finished samples,
the image), every velocity / reward call a `calls` row (`generate` / `score`).
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ttc.errors import BudgetExceeded
from ttc.flow.budget import FlowBudget, FlowLedger, FlowSpent
from ttc.flow.context import FlowContext, Particle, Reward, VelocityModel
from ttc.flow.interfaces import FlowAllocator, FlowStrategy
from ttc.types import Branch, CallRecord, Problem, ProblemResult


def digit_problems(classes: Sequence[int], *, per_class: int = 1) -> list[Problem]:
    """One problem per (class, repeat): generate a digit of that class."""
    return [
        Problem(
            id=f"digit-{c}-{i}",
            prompt=f"a handwritten digit {c}",
            reference=str(c),
            metadata={"target": int(c)},
        )
        for c in classes
        for i in range(per_class)
    ]


@dataclass
class FlowResult:
    problem: Problem
    image: np.ndarray | None
    reward: float | None
    success: bool | None
    spent: FlowSpent
    budget: dict[str, Any]
    particles: list[Particle]
    calls: list[CallRecord]
    trace: dict[str, Any] = field(default_factory=dict)


def solve_flow(
    strategy: FlowStrategy,
    problems: Sequence[Problem],
    *,
    model: VelocityModel,
    reward: Reward,
    allocator: FlowAllocator,
    judge: Any = None,
    seed: int = 0,
    conditional: bool = False,
) -> list[FlowResult]:
    """Solve every problem (in order, each with its own seeded stream)."""
    results = []
    timesteps = int(getattr(strategy.config, "nfes_per_sample", 1))
    for index, problem in enumerate(problems):
        budget: FlowBudget = allocator.budget_for(problem, timesteps=timesteps)
        ledger = FlowLedger(budget, flops_per_nfe=model.flops_per_nfe)
        ctx = FlowContext(
            problem,
            model=model,
            reward=reward,
            ledger=ledger,
            seed=seed * 1_000_003 + index,
            conditional=conditional,
        )
        trace: dict[str, Any] = {}
        try:
            solution = strategy.solve(ctx)
            trace.update(solution.trace)
        except BudgetExceeded as exc:
            trace["ended_by"] = "budget"
            trace["refusal"] = str(exc)
        spent = ledger.close()
        image = reward_value = success = None
        if ctx.best is not None:
            image, reward_value, pid = ctx.best
            ctx.particles[pid].selected = True
            if judge is not None:
                success = int(judge.predict(image[None, :])[0]) == ctx.target
        results.append(
            FlowResult(
                problem=problem,
                image=image,
                reward=reward_value,
                success=success,
                spent=spent,
                budget=budget.as_dict(),
                particles=ctx.particles,
                calls=ctx.calls,
                trace=trace,
            )
        )
    return results


def particle_branch(p: Particle) -> Branch:
    """A particle as the store's node: no tokens; timestep, reward and schedule time."""
    return Branch(
        id=p.id,
        parent_id=p.parent_id,
        step=p.step,
        token_ids=(),
        step_texts=(),
        score=p.reward,
        finished=p.finished,
        selected=p.selected,
        extra={"s": p.s, **p.extra},
    )


def problem_result(r: FlowResult, index: int) -> ProblemResult:
    spent = r.spent.as_dict()
    answer = None if r.image is None else str(r.problem.metadata["target"])
    return ProblemResult(
        index=index,
        problem=r.problem,
        status="ok",
        answer=answer if r.success is not False else None,
        correct=r.success,
        pass_at_1=None if r.success is None else float(r.success),
        majority_correct=None,
        oracle_correct=None,
        spent={
            "samples": sum(p.finished for p in r.particles),
            "flops": r.spent.flops,
            "seconds": r.spent.seconds,
            "reward_calls": r.spent.reward_calls,
        },
        budget=r.budget,
        branches=[particle_branch(p) for p in r.particles],
        calls=r.calls,
        n_leaves=sum(p.finished for p in r.particles),
        trace={**r.trace, "reward": r.reward, "spent": spent},
    )


def record_flow_run(
    store: Any,
    results: Sequence[FlowResult],
    *,
    strategy: str,
    model: str,
    config: dict[str, Any],
    name: str | None = None,
) -> str:
    """Write one finished flow run (its results, particles and calls) to `store`."""
    from ttc import __version__

    run_id: str = store.create_run(
        config=config,
        strategy=strategy,
        backend="flow",
        model=model,
        task="digits",
        reward="digit_classifier",
        versions={"ttc": __version__},
        hardware={"machine": platform.machine()},
        name=name,
        n_problems=len(results),
    )
    for i, r in enumerate(results):
        store.record_problem(run_id, problem_result(r, i))
    store.finish_run(run_id, "finished")
    return run_id
