"""`ttc run`: run a job (or a Hydra multirun sweep) and print its totals."""

from __future__ import annotations

import signal
from typing import TYPE_CHECKING, Any

import typer

from ttc.cli._common import console, errors_to_exit, take_verbose, totals_table
from ttc.errors import ProblemsFailed, RunInterrupted

if TYPE_CHECKING:
    from ttc.launch import Job


def _job(job: Job) -> Any:
    from ttc.progress import ProgressObserver
    from ttc.registry import get_registry
    from ttc.runner import Runner

    cfg = job.cfg
    registry = get_registry()
    observer = ProgressObserver() if cfg.run.progress else None
    if observer is not None:
        registry.pm.register(observer, name="ttc.progress")
    runner = Runner(cfg, registry=registry, sweep=job.sweep, resume=job.resume)
    try:
        outcome = runner.run()
    except KeyboardInterrupt:
        if runner.run_id is None or runner.remaining != 0:
            raise RunInterrupted(runner.run_id) from None
        outcome = runner.finish_after_late_interrupt()  # everything was stored already
    finally:
        if observer is not None:
            registry.pm.unregister(observer)
    errors = int(outcome.totals.get("errors") or 0)
    console.print(totals_table(outcome.run_id, outcome.totals, status=outcome.status))
    sizes = outcome.batch_stats.sizes
    if sizes:
        console.print(
            f"backend batches: {len(sizes)}, mean size {outcome.batch_stats.mean:.1f}",
            highlight=False,
        )
    console.print(f"run id: {outcome.run_id}", highlight=False)
    plural = "problem" if errors == 1 else "problems"
    console.print(
        f"status: {outcome.status}" + (f", {errors} {plural} with an error" if errors else ""),
        highlight=False,
    )
    if errors and not (runner.cfg or cfg).run.allow_errors:
        raise ProblemsFailed(outcome.run_id, errors, int(outcome.totals.get("problems") or 0))
    return outcome


def run(ctx: typer.Context) -> None:
    """Run a job: `ttc run \\[key=value ...]`; a sweep: `ttc run -m strategy.n=4,8 task=a,b`.

    Overrides use Hydra's syntax (groups: backend, strategy, reward, allocator, task,
    store; plus budget.*, scheduler.*, run.*). `resume=<run id>` continues an interrupted
    run. `--cfg job` prints the composed config.
    """
    from ttc.launch import launch

    # A job scheduler stops jobs with SIGTERM: treat it like Ctrl-C, so the run is marked
    # interrupted (and resumable) instead of being left as "running".
    signal.signal(signal.SIGTERM, _interrupt)
    with errors_to_exit():
        try:
            launch(take_verbose(ctx.args), _job)
        except KeyboardInterrupt:  # before any job started: no run exists
            raise RunInterrupted(None) from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(run)
