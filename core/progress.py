"""The live progress display of a run (rich): problems done, tokens/s, budget spent.

It is an ordinary observer plugin: `ttc run` registers it for the duration of a job.
Backends that decode step by step report tokens as they produce them through
`tokens_generated` (from any thread), so the line moves during a long batch instead of
jumping when the batch returns.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
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

_listeners: list[Callable[[int], None]] = []
_listeners_lock = threading.Lock()


def add_token_listener(listener: Callable[[int], None]) -> None:
    """Call `listener(n)` whenever a backend reports `n` freshly generated tokens."""
    with _listeners_lock:
        _listeners.append(listener)


def remove_token_listener(listener: Callable[[int], None]) -> None:
    with _listeners_lock:
        if listener in _listeners:
            _listeners.remove(listener)


def tokens_generated(n: int) -> None:
    """A backend's decode loop produced `n` tokens (one per active sequence and step)."""
    if not _listeners:
        return
    with _listeners_lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(n)


VERBOSE_ENV = "TTC_VERBOSE"
"""Set (to 1) by `ttc --verbose`: libraries' own progress bars, warnings and retry lines
are shown again."""


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


class ProgressObserver:
    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True)
        self.progress: Progress | None = None
        self.task_id: Any = None
        self.tokens = 0
        """Completion tokens of finished calls."""
        self.live = 0
        """Tokens the backend reported while decoding (ahead of the calls that carry them)."""
        self.prefill = 0
        self.refused = 0
        self.errors = 0
        self.t0 = time.monotonic()
        self.limits: dict[str, float] = {}
        self.spent: dict[str, float] = {"tokens": 0, "samples": 0, "flops": 0.0}

    def _generated(self) -> int:
        return max(self.tokens, self.live)

    def _on_tokens(self, n: int) -> None:
        self.live += n
        if self.progress is not None:
            self.progress.update(self.task_id, stats=self._stats())

    def _stats(self) -> str:
        generated = self._generated()
        rate = generated / max(time.monotonic() - self.t0, 1e-9)
        budget = "".join(
            f" · {100 * self.spent[unit] / limit:.0f}% of {unit} budget"
            for unit, limit in self.limits.items()
            if unit in self.spent and limit
        )
        return (
            f"{rate:,.0f} tok/s · {generated:,} generated · {self.prefill:,} prefilled"
            f"{budget} · {self.refused} refused · {self.errors} failed"
        )

    @ttc.hookimpl
    def on_run_start(self, run_id: str, config: dict[str, Any], n_problems: int) -> None:
        self.t0 = time.monotonic()
        add_token_listener(self._on_tokens)
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
        remove_token_listener(self._on_tokens)
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
