"""Every error ttc raises on purpose.

Each carries a message (what was expected, what was found) and a `hint` (what to run
next). The CLI prints `error: <message>` and `hint: <hint>` and exits with `exit_code`,
never with a traceback.
"""

from __future__ import annotations

from typing import Any


class TtcError(Exception):
    """Base of all ttc errors."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from its fields, not by calling the subclass's constructor again (whose
        # arguments differ from `args`): an error raised in a Ray actor reaches the driver
        # as the same error.
        return _rebuild, (type(self), self.args, self.__dict__)


def _rebuild(cls: type[TtcError], args: tuple[Any, ...], state: dict[str, Any]) -> TtcError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, *args)
    exc.__dict__.update(state)
    return exc


class ExecutorError(TtcError):
    """A Ray run could not solve its problems: no worker could start, or too many died."""


class ConfigError(TtcError):
    """A configuration value is missing, misspelt, of the wrong type or out of range."""

    exit_code = 2

    def __init__(
        self,
        message: str,
        *,
        key: str | None = None,
        value: Any = None,
        hint: str | None = None,
    ) -> None:
        if hint is None and key:
            hint = f"correct {key} (`ttc run --cfg job` prints every key with its value)"
        super().__init__(message, hint=hint)
        self.key = key
        self.value = value


class UnknownNameError(ConfigError):
    """A plugin-extensible thing (backend, strategy, ...) was chosen by a name nobody registered."""

    def __init__(self, kind: str, name: str, choices: list[str]) -> None:
        listed = ", ".join(sorted(choices)) or "(none registered)"
        super().__init__(
            f"unknown {kind} '{name}'; valid choices: {listed}",
            key=kind,
            value=name,
            hint="run `ttc plugins` to see what is installed",
        )
        self.kind = kind
        self.choices = sorted(choices)


class PluginError(TtcError):
    """A plugin failed to load, registered a clashing name, or implements an unknown hook."""

    exit_code = 3

    def __init__(self, message: str, *, plugin: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.plugin = plugin


class PluginImportError(PluginError):
    """A plugin's entry point could not be imported."""


class DuplicateNameError(PluginError):
    """Two plugins registered the same name for the same kind."""

    def __init__(self, kind: str, name: str, *, first: str, second: str) -> None:
        super().__init__(
            f"{kind} '{name}' is registered by both plugin '{first}' and plugin '{second}'",
            plugin=second,
            hint="uninstall one of them, or limit loaded plugins with TTC_PLUGINS",
        )
        self.kind = kind
        self.name = name
        self.first = first
        self.second = second


class HookSpecError(PluginError):
    """A plugin implements a hook that does not exist (usually a typo)."""


class BudgetExceeded(TtcError):
    """A call was refused because it would spend more than the problem's budget.

    Strategies catch it and finish with the branches they have.
    """

    def __init__(self, unit: str, *, limit: float, spent: float, requested: float) -> None:
        super().__init__(
            f"budget exhausted in {unit}: limit {limit:g}, spent {spent:g}, "
            f"call needs at least {requested:g}",
            hint=f"raise budget.{unit} or choose a cheaper strategy",
        )
        self.unit = unit
        self.limit = limit
        self.spent = spent
        self.requested = requested


class BackendError(TtcError):
    """A backend failed to produce generations."""


class ServerUnreachable(BackendError):
    """The generation server refuses every connection: it is not running, or not at the
    configured address. Requests then fail at once instead of being retried, and the
    runner stops the run (see `Backend.unavailable`)."""

    def __init__(self, url: str, *, refused: int, hint: str | None = None) -> None:
        super().__init__(
            f"the server at {url} refused "
            + ("the connection" if refused == 1 else f"{refused} connections in a row")
            + ": it is not running, still starting, or not at that address",
            hint=hint or "start the server (or wait until it listens), or fix backend.base_url",
        )
        self.url = url
        self.refused = refused


class StoreError(TtcError):
    """The run store cannot be opened, migrated or read."""


class RunNotFoundError(StoreError):
    def __init__(self, run_id: str) -> None:
        super().__init__(
            f"no run with id '{run_id}' in the store",
            hint="list runs with `ttc runs list` (and check store.url)",
        )
        self.run_id = run_id


class AmbiguousRunIdError(StoreError):
    def __init__(self, prefix: str, matches: list[str]) -> None:
        shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
        super().__init__(
            f"run id prefix '{prefix}' is ambiguous: it matches {shown}",
            hint="give more characters of the id (`ttc runs list` shows them)",
        )
        self.prefix = prefix
        self.matches = matches


class DataError(TtcError):
    """A task's data could not be loaded or has the wrong fields."""


class RunInterrupted(TtcError):
    """A run was stopped (Ctrl-C, SIGTERM) before all problems finished."""

    exit_code = 130

    def __init__(self, run_id: str | None) -> None:
        if run_id is None:
            super().__init__("interrupted before the run was created; nothing was stored")
        else:
            super().__init__(
                f"run {run_id} interrupted; its finished problems are stored",
                hint=f"continue with `ttc run resume={run_id}`",
            )
        self.run_id = run_id


class ProblemsFailed(TtcError):
    """A run ended with problems whose solving raised (stored with status `error`)."""

    def __init__(self, run_id: str, errors: int, problems: int) -> None:
        super().__init__(
            f"run {run_id} finished with {errors} of {problems} problems failed "
            "(see `ttc runs export` for their errors)",
            hint=f"retry them with `ttc run resume={run_id}`, or accept them with "
            "run.allow_errors=true",
        )
        self.run_id = run_id
        self.errors = errors


class SweepInterrupted(TtcError):
    """A multirun sweep was stopped (Ctrl-C, SIGTERM) before all its jobs finished."""

    exit_code = 130

    def __init__(self, *, done: int, total: int, commands: list[str]) -> None:
        lines = "".join(f"\n  {c}" for c in commands)
        super().__init__(
            f"sweep stopped after {done} of {total} jobs; finished problems are stored. "
            f"To finish it, run:{lines}"
        )
        self.done = done
        self.total = total
        self.commands = commands
