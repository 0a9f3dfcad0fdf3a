"""Executors: where the problems of a run are solved.

`run.executor=local` (the default) solves them in this process (`ttc.runner.Runner`).
`run.executor=ray` hands them, in chunks, to async actors of a Ray cluster
(`ttc.executor.cluster`); each actor builds the run's plugins once and solves its
problems through the same `Runner` / `Scheduler` code as a local run, committing each
finished problem to the shared store. Ray is imported only here, only for such a run:
`import ttc` and local runs never load it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ttc.executor.cluster import RayExecutor


def remote_executor(cfg: Any, *, store_url: str) -> RayExecutor | None:
    """The executor a config asks for, connected and checked; None for a local run."""
    run = cfg.get("run") if hasattr(cfg, "get") else None
    if run is None or str(run.get("executor", "local")) != "ray":
        return None
    from ttc.executor.cluster import RayExecutor

    return RayExecutor.connect(cfg, store_url=store_url)
