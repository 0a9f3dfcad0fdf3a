"""Continuing a stored run: `ttc run resume=<run id> [key=value ...] [--force]`.

A resumed run is the stored run, continued: its stored config is used as it was (seed,
concurrency, name and every group), and only the few keys in `RESUME_KEYS` may be given
beside the id. They are validated like a fresh run's overrides before anything loads.
Problems already stored are skipped, except errored ones, which are solved again unless
`resume.retry_errors=false`. The task's problems must be the ones the run started with
(their fingerprint is stored), and a run another process is still running is refused
unless `--force`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ttc.config import RayConfig, RootConfig, RunConfig, StoreConfig, check_bounds, validate
from ttc.errors import ConfigError, DataError
from ttc.types import Problem

RESUME_KEYS = ("store.url", "run.progress", "run.concurrency", "run.executor", "ray.address")
"""What may be set beside `resume=`: the rest comes from the stored run. Where the
problems run (`run.executor`, `ray.address`) does not change what they give."""

RETRY_KEY = "resume.retry_errors"
FORCE_FLAG = "--force"


@dataclass(frozen=True)
class ResumeRequest:
    """What the user asked for: which run, what to change, how to treat errors."""

    run_id: str
    overrides: dict[str, Any] = field(default_factory=dict)
    """Validated values of `RESUME_KEYS` the user gave (dotted key -> value)."""
    retry_errors: bool = True
    force: bool = False

    @property
    def store_url(self) -> str:
        given = self.overrides.get("store.url")
        return str(given or os.environ.get("TTC_STORE_URL") or StoreConfig.url)


def is_resume(args: Sequence[str]) -> bool:
    return any(a.startswith("resume=") for a in args)


def parse_request(args: Sequence[str]) -> ResumeRequest:
    """Parse and validate the arguments of a resume; raise `ConfigError` naming the key."""
    run_id: str | None = None
    overrides: dict[str, Any] = {}
    retry_errors, force = True, False
    for arg in args:
        if arg == FORCE_FLAG:
            force = True
            continue
        if arg.startswith("-"):
            raise ConfigError(
                f"resume=<run id> takes no Hydra flags ({arg}); only {FORCE_FLAG}",
                key=arg,
                hint="drop the flag; to sweep, start new runs without resume=",
            )
        key, sep, text = arg.partition("=")
        if not sep:
            raise ConfigError(f"'{arg}' is not a key=value override", key=arg)
        if key == "resume":
            if not text.strip():
                raise ConfigError(
                    "resume= needs a run id",
                    key="resume",
                    hint="list runs with `ttc runs list`, then `ttc run resume=<run id>`",
                )
            run_id = text.strip()
        elif key == RETRY_KEY:
            retry_errors = _typed(RETRY_KEY, text, bool)
        elif key in RESUME_KEYS:
            overrides[key] = _typed(key, text, None)
        else:
            raise ConfigError(
                f"{key} cannot be changed when resuming: the run continues with its stored "
                f"config; only {', '.join((*RESUME_KEYS, RETRY_KEY))} may be given",
                key=key,
                hint="start a new run to change it",
            )
    assert run_id is not None  # is_resume() holds
    return ResumeRequest(run_id, overrides, retry_errors=retry_errors, force=force)


def _typed(key: str, text: str, kind: type | None) -> Any:
    """`text` as the value of `key`, checked against the schema that declares it."""
    import yaml
    from omegaconf.errors import OmegaConfBaseException

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}={text!r} is not valid; valid choices: true, false", key=key)
        return value
    group, _, name = key.partition(".")
    schema = {"run": RunConfig, "store": StoreConfig, "ray": RayConfig}[group]
    node = OmegaConf.structured(schema)
    try:
        setattr(node, name, value)
    except OmegaConfBaseException as exc:
        why = str(exc.msg).splitlines()[0]
        raise ConfigError(f"{key}={text!r} is not valid: {why}", key=key, value=text) from exc
    check_bounds(OmegaConf.to_object(node), group)
    return getattr(node, name)


def resolve(request: ResumeRequest, stored: dict[str, Any], *, store_url: str) -> DictConfig:
    """The config a resumed run continues with: the stored one, the request's overrides
    on top, and `store.url` set to the store the run was found in (stored configs hold a
    masked URL). Validated like a fresh run's."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(RootConfig), stored)
    except OmegaConfBaseException as exc:
        raise ConfigError(
            f"run {request.run_id}'s stored config no longer fits this version of ttc: "
            f"{str(exc).splitlines()[0]}",
            hint="start a new run",
        ) from exc
    assert isinstance(merged, DictConfig)
    for key, value in request.overrides.items():
        OmegaConf.update(merged, key, value, merge=False)
    OmegaConf.update(merged, "store.url", store_url, merge=False)
    merged.resume = request.run_id
    validate(merged)
    return merged


def load(request: ResumeRequest) -> DictConfig:
    """Open the request's store and resolve the config the run continues with."""
    from ttc.store import Store

    store = Store(request.store_url)
    try:
        run_id = store.resolve_id(request.run_id)
        return resolve(request, store.get_run(run_id)["config"], store_url=request.store_url)
    finally:
        store.close()


def fingerprint(problems: Sequence[Problem]) -> str:
    """SHA-256 over the problems' ids, messages, prompts and references, in order."""
    h = hashlib.sha256()
    for p in problems:
        h.update(json.dumps([p.id, p.messages, p.prompt, p.reference], default=str).encode())
        h.update(b"\n")
    return h.hexdigest()


def check_same_problems(run_id: str, stored: str | None, problems: Sequence[Problem]) -> None:
    """Refuse a resume over problems other than those the run started with."""
    if stored is not None and stored != fingerprint(problems):
        raise DataError(
            f"the task's problems changed since run {run_id} started (the data file or task "
            "settings differ), so resuming would mix two problem sets",
            hint="restore the original data, or start a new run on the new problems",
        )
