"""The `serve` config node: `ttc serve serve.port=8001 serve.max_budget.tokens=4000`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ttc.config import BudgetConfig, bounded, instantiate_config
from ttc.errors import ConfigError


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    """Address to listen on (loopback by default: put a proxy in front for more)."""
    port: int = bounded(8000, ge=0, le=65535, help="TCP port (0: any free port)")
    api_keys_env: str | None = None
    """Name of an environment variable holding comma-separated bearer keys; when set,
    a request without one of them gets a 401. The keys themselves never enter a config."""
    max_budget: BudgetConfig = field(default_factory=BudgetConfig)
    """Ceilings of a request's budget (None: no ceiling). A request asking for more is
    refused (400); a unit the request leaves unlimited gets the ceiling."""
    max_request_bytes: int = bounded(1_000_000, ge=1, help="largest request body (413 above)")
    shutdown_timeout_s: float = bounded(
        30.0, ge=0.0, help="how long in-flight requests may finish at shutdown"
    )
    write_behind: bool = False
    """False: a request's answer is sent once its problem is in the store (one committed
    transaction). True: it is sent first and written right after (the store's commit,
    milliseconds on SQLite, leaves the request's latency; shutdown still waits for it)."""
    sqlite_synchronous: str = bounded(
        "normal",
        choices=["normal", "full"],
        help="SQLite store: sync the file at checkpoints (normal) or at every commit (full)",
    )
    """With a SQLite store: `normal` (SQLite's documented WAL trade) makes a commit a
    write to the OS, not a sync of the disk: a request stored before its answer survives
    the server being killed, and nothing is ever half-written, but the last commits before
    a power loss or OS crash may roll back. `full` syncs every commit (one disk sync per
    transaction, shared by the requests of a group commit). Other databases: ignored."""
    model_prefix: str = "ttc"
    """Model names `<prefix>/<strategy>` choose the strategy of a request."""


def serve_config(node: Any) -> ServeConfig:
    """The `serve` node of a composed config as a checked `ServeConfig`."""
    cfg: ServeConfig = instantiate_config(ServeConfig, node if node is not None else {}, "serve")
    return cfg


def api_keys(cfg: ServeConfig) -> frozenset[str] | None:
    """The accepted bearer keys (None: no authentication)."""
    if not cfg.api_keys_env:
        return None
    raw = os.environ.get(cfg.api_keys_env)
    if raw is None:
        raise ConfigError(
            f"serve.api_keys_env={cfg.api_keys_env}: that environment variable is not set",
            key="serve.api_keys_env",
            hint=f"export {cfg.api_keys_env}=key1,key2 (or unset serve.api_keys_env)",
        )
    keys = frozenset(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise ConfigError(
            f"serve.api_keys_env={cfg.api_keys_env}: the variable holds no key",
            key="serve.api_keys_env",
            hint="put comma-separated keys in it",
        )
    return keys
