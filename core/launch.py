"""Composing configs and launching runs through Hydra.

`launch(overrides)` is what `ttc run` calls: it validates every job of the request up
front (so a typo fails in one clear line before anything runs), then hands the overrides
to a `@hydra.main` entry so that Hydra's own features (multirun sweeps, launchers, run
directories) work as Hydra users expect. Every job writes to the configured store.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.errors import CompactHydraException
from omegaconf import DictConfig

from ttc.config import validate
from ttc.errors import ConfigError, RunInterrupted, SweepInterrupted, TtcError
from ttc.registry import get_registry, store_configs
from ttc.resume import ResumeRequest, is_resume, parse_request
from ttc.resume import load as load_resume_config
from ttc.store.secrets import mask_url

CONFIG_MODULE = "ttc.conf"
CONFIG_NAME = "config"
MULTIRUN_FLAGS = ("-m", "--multirun")


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """Compose and validate the config for one job (no Hydra run directory, no logging)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    store_configs()
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        try:
            cfg = hydra_compose(config_name=CONFIG_NAME, overrides=list(overrides))
        except Exception as exc:
            raise explain_compose_error(exc, overrides) from exc
        validate(cfg)
        return cfg


def _group_options(group: str) -> list[str]:
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(o for o in loader.get_group_options(group) if not o.startswith("base_"))


def explain_compose_error(exc: Exception, overrides: Sequence[str]) -> ConfigError:
    """Turn Hydra/OmegaConf's multi-line composition errors into one line naming the key."""
    from hydra.errors import MissingConfigException

    text = str(exc)
    if isinstance(exc, MissingConfigException) or "Could not find" in text:
        m = re.search(r"Could not find '([\w/]+)/([^']+)'", text)
        if m:
            group, name = m.group(1), m.group(2)
            choices = ", ".join(_group_options(group))
            return ConfigError(
                f"{group}={name}: no such {group}; valid choices: {choices}",
                key=group,
                value=name,
                hint="run `ttc plugins` to see what each installed plugin provides",
            )
    cause: Any = exc.__cause__ or exc
    while getattr(cause, "full_key", None) is None and cause.__cause__ is not None:
        cause = cause.__cause__
    full_key = getattr(cause, "full_key", None)
    if "not in" in text or "Could not override" in text or "Could not append" in text:
        m = re.search(r"Could not (?:override|append to) '([^']+)'", text)
        key = full_key or (m.group(1) if m else None)
        if key:
            schema = getattr(cause, "object_type", None)
            valid = ""
            if schema is not None and dataclasses.is_dataclass(schema):
                parent = key.rpartition(".")[0] or "the root"
                names = ", ".join(f.name for f in dataclasses.fields(schema))
                valid = f"; valid keys under {parent}: {names}"
            return ConfigError(f"{key} is not a config key{valid}", key=key)
    if full_key:
        msg = str(getattr(cause, "msg", text)).splitlines()[0]
        return ConfigError(f"{full_key}: {msg}", key=full_key)
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    return ConfigError(first, hint="check the overrides: " + " ".join(overrides))


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of a multirun, each as its list of plain overrides."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        parsed = parser.parse_overrides(list(overrides))
    except Exception as exc:
        raise _parse_error(parser, overrides, exc) from exc
    batches = BasicSweeper.split_arguments(parsed, None)
    return [list(job) for batch in batches for job in batch]


def _parse_error(parser: Any, overrides: Sequence[str], exc: Exception) -> ConfigError:
    """The override that does not parse, named with its key."""
    reason = str(exc).splitlines()[0]
    for override in overrides:
        try:
            parser.parse_overrides([override])
        except Exception as one:
            key = override.partition("=")[0].lstrip("+~")
            return ConfigError(
                f"cannot parse the override {override!r}: {str(one).splitlines()[0]}",
                key=key,
                hint="sweep values are comma-separated (key=a,b) or range(start,stop)",
            )
    return ConfigError(f"cannot parse overrides: {reason}", hint="check the overrides' syntax")


def check(overrides: Sequence[str], *, multirun: bool) -> None:
    """Compose every job of the request; raise the first `ConfigError`."""
    if not multirun:
        compose(overrides)
        return
    for job in expand_sweep(overrides):
        compose(job)


@dataclass(frozen=True)
class Job:
    """One job of a request: its config, the sweep it belongs to, the run it resumes."""

    cfg: DictConfig
    sweep: str | None = None
    resume: ResumeRequest | None = None


JobFn = Callable[[Job], Any]


SECRET_ENV_PREFIX = "TTC_SECRET_OVERRIDE_"


def hide_secrets(args: Sequence[str]) -> list[str]:
    """Overrides whose value is a URL with a password, rewritten to read it from a process
    environment variable (`key=${oc.env:TTC_SECRET_OVERRIDE_<n>}`).

    Hydra writes the overrides and the composed config into its output folder
    (`.hydra/*.yaml`); this way it writes the interpolation, never the password, while
    the job still resolves the real URL.
    """
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        plain = value.strip("'\"")
        if sep and not key.startswith("-") and "://" in plain and mask_url(plain) != plain:
            name = f"{SECRET_ENV_PREFIX}{sum(k.startswith(SECRET_ENV_PREFIX) for k in os.environ)}"
            os.environ[name] = plain
            arg = f"{key}=${{oc.env:{name}}}"
        out.append(arg)
    return out


def launch(args: Sequence[str], job: JobFn) -> list[Any]:
    """Run one job (or a sweep with -m) through Hydra; call `job(cfg, sweep_dir)` for each.

    `resume=<run id>` continues a stored run with its stored config (no Hydra composition;
    see `ttc.resume`). Raises the first `TtcError` a job raised, after all jobs ran.
    """
    import hydra
    from hydra.core.hydra_config import HydraConfig

    args = list(args)
    if is_resume(args):
        request = parse_request(args)  # every given value checked before anything loads
        get_registry()
        return [job(Job(load_resume_config(request), resume=request))]
    args = hide_secrets(args)
    multirun = any(a in MULTIRUN_FLAGS for a in args)
    passthrough = [a for a in args if a.startswith("-")]
    overrides = [a for a in args if not a.startswith("-")]
    if all(a in MULTIRUN_FLAGS for a in passthrough):  # plain job(s), not --cfg/--help/...
        check(overrides, multirun=multirun)

    get_registry()
    store_configs()
    outcomes: list[Any] = []
    errors: list[TtcError] = []
    stopped: list[RunInterrupted] = []

    here = os.getpid()

    @hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name=CONFIG_NAME)
    def entry(cfg: DictConfig) -> None:
        sweep = None
        hc = HydraConfig.get()
        if str(hc.mode) == "RunMode.MULTIRUN":
            sweep = str(hc.sweep.dir)
        try:
            outcomes.append(job(Job(cfg, sweep)))
        except RunInterrupted as exc:
            # Ctrl-C or SIGTERM stops the whole sweep: Hydra catches Exceptions and would
            # go on with the next job, so leave it with a BaseException.
            stopped.append(exc)
            raise _StopSweep from None
        except TtcError as exc:
            if os.getpid() != here:  # a launcher ran the job elsewhere (hydra/launcher=ray):
                raise RemoteJobFailed(_one_line(exc)) from None  # back in Hydra's job return
            errors.append(exc)

    saved = sys.argv
    sys.argv = ["ttc", *args]
    try:
        entry()
    except SystemExit as exc:
        if not multirun or exc.code in (0, None):
            raise
        # Hydra printed the error of a job its launcher ran elsewhere and exits
        raise TtcError(
            "a job of the sweep failed (its error is printed above)",
            hint="fix it and run that job again; finished jobs are in the store",
        ) from None
    except (_StopSweep, KeyboardInterrupt):
        interrupted = stopped[0] if stopped else RunInterrupted(None)
        if not multirun:
            raise interrupted from None
        done = len(outcomes) + len(errors)
        jobs = [[_shown(o) for o in j] for j in expand_sweep(overrides)]
        raise SweepInterrupted(
            done=done,
            total=len(jobs),
            commands=_continue_commands(interrupted.run_id, jobs[done:]),
        ) from None
    finally:
        sys.argv = saved
    if errors:
        raise errors[0]
    return outcomes


def _shown(override: str) -> str:
    """An override as the user can type it again, a hidden URL shown masked."""
    override = override.replace("\\:", ":")  # Hydra's sweeper escapes ':' needlessly
    m = re.search(r"\$\{oc\.env:(" + SECRET_ENV_PREFIX + r"\d+)\}", override)
    if m is None:
        return override
    return override.replace(m.group(0), mask_url(os.environ.get(m.group(1), "")))


def _one_line(exc: TtcError) -> str:
    return f"{exc.message} (hint: {exc.hint})" if exc.hint else exc.message


class RemoteJobFailed(CompactHydraException):
    """A job that a launcher ran in another process failed with a ttc error. Hydra prints
    a `CompactHydraException` as its message alone; built from one string, it survives
    the pickling that brings it back (ttc's errors carry more fields)."""


class _StopSweep(BaseException):
    """Raised out of a Hydra job to stop the sweep (see `launch`)."""


def _continue_commands(run_id: str | None, unfinished: list[list[str]]) -> list[str]:
    """What finishes a stopped sweep: resume the interrupted job, run the ones not started."""
    commands = []
    for i, job_overrides in enumerate(unfinished):
        if i == 0 and run_id is not None:
            store = [o for o in job_overrides if o.lstrip("+~").startswith("store.url=")]
            commands.append(" ".join(["ttc run", f"resume={run_id}", *store]))
        else:
            commands.append(" ".join(["ttc run", *job_overrides]))
    return commands
