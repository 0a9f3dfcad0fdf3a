"""`ttc run`: run a job (or a Hydra multirun sweep) and print its totals."""

from __future__ import annotations

import signal
from typing import Any

import typer
from omegaconf import DictConfig

from ttc.cli._common import console, errors_to_exit, totals_table
from ttc.errors import RunInterrupted


def _job(cfg: DictConfig, sweep: str | None) -> Any:
    from ttc.progress import ProgressObserver
    from ttc.registry import get_registry
    from ttc.runner import Runner

    registry = get_registry()
    observer = ProgressObserver() if cfg.run.progress else None
    if observer is not None:
        registry.pm.register(observer, name="ttc.progress")
    runner = Runner(cfg, registry=registry, sweep=sweep)
    try:
        outcome = runner.run()
    except KeyboardInterrupt:
        raise RunInterrupted(runner.run_id) from None
    finally:
        if observer is not None:
            registry.pm.unregister(observer)
    console.print(totals_table(outcome.run_id, outcome.totals, status=outcome.status))
    sizes = outcome.batch_stats.sizes
    if sizes:
        console.print(
            f"backend batches: {len(sizes)}, mean size {outcome.batch_stats.mean:.1f}",
            highlight=False,
        )
    console.print(f"run id: {outcome.run_id}", highlight=False)
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
        launch(ctx.args, _job)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def register(app: typer.Typer) -> None:
    app.command(
        "run",
        context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    )(run)
