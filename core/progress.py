"""The live progress display of a run (rich): problems done, tokens/s, budget spent.

It is an ordinary observer plugin: `ttc run` registers it for the duration of a job.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

import ttc


class ProgressObserver:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.tokens = 0
        self.prefill = 0
        self.refused = 0
        self.errors = 0
        self.t0 = time.monotonic()
        self.limits: dict[str, float] = {}
        self.spent: dict[str, float] = {"tokens": 0, "samples": 0, "flops": 0.0}

    def _stats(self) -> str:
        rate = self.tokens / max(time.monotonic() - self.t0, 1e-9)
        budget = "".join(
            f" · {100 * self.spent[unit] / limit:.0f}% of {unit} budget"
            for unit, limit in self.limits.items()
            if unit in self.spent and limit
        )
        return (
            f"{rate:,.0f} tok/s · {self.tokens:,} generated · {self.prefill:,} prefilled"
            f"{budget} · {self.refused} refused · {self.errors} failed"
        )

    @ttc.hookimpl
    def on_run_start(self, run_id: str, config: dict[str, Any], n_problems: int) -> None:
        self.t0 = time.monotonic()
        # the budget is per problem: the run may spend it once per problem
        self.limits = {
            unit: float(limit) * n_problems
            for unit, limit in (config.get("budget") or {}).items()
            if limit is not None
        }
        self.progress = Progress(
            TextColumn(f"run {run_id}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
        )
        self.progress.start()
        self.task_id = self.progress.add_task("problems", total=n_problems, stats=self._stats())

    @ttc.hookimpl
    def on_call(self, run_id: str, problem_id: str, call: Any) -> None:
        self.tokens += call.completion_tokens
        self.spent["tokens"] += call.completion_tokens
        self.spent["samples"] += call.n_sequences if call.status == "ok" else 0
        self.spent["flops"] += call.flops
        self.prefill += call.prompt_tokens - call.cached_prompt_tokens
        self.refused += call.status == "refused"
        if self.progress is not None:
            self.progress.update(self.task_id, stats=self._stats())

    @ttc.hookimpl
    def on_problem_done(self, run_id: str, result: Any) -> None:
        self.errors += result.status == "error"
        if self.progress is not None:
            self.progress.update(self.task_id, advance=1, stats=self._stats())

    @ttc.hookimpl
    def on_run_end(self, run_id: str, status: str, totals: dict[str, Any]) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
