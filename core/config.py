"""Structured-config schemas and their validation.

Every configurable thing has a dataclass schema stored in Hydra's ConfigStore as
`<group>/base_<name>`; the YAML files in `ttc.conf` extend those, so a misspelt key or a
wrong type fails when Hydra composes the config. Ranges are declared in field metadata
(`ge`, `gt`, `le`, `lt`, `choices`) and checked by `validate`, which names the key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from ttc.errors import ConfigError


def bounded(default: Any, *, help: str = "", **bounds: Any) -> Any:
    """A dataclass field with a documented range, checked by `validate`.

    `bounds` may hold `ge`, `gt`, `le`, `lt` (numbers), `choices` (a list) and `max_len`
    (characters of a string).
    """
    return field(default=default, metadata={"help": help, **bounds})


@dataclass
class BackendConfig:
    name: str = MISSING
    """Registered backend name (see `ttc plugins`)."""


@dataclass
class StrategyConfig:
    name: str = MISSING
    """Registered strategy name."""


@dataclass
class RewardConfig:
    name: str = MISSING
    """Registered reward model name (`none` for strategies that need no reward)."""
    aggregate: str = bounded(
        "last", choices=["last", "min", "prod", "mean"], help="how step scores become one score"
    )


@dataclass
class AllocatorConfig:
    name: str = MISSING


@dataclass
class TaskConfig:
    name: str = MISSING
    limit: int | None = bounded(None, ge=1, help="use only the first `limit` problems")
    seed: int = 0
    shuffle: bool = False


@dataclass
class StoreConfig:
    url: str = "sqlite:///runs/ttc.db"
    """SQLAlchemy URL of the run store (SQLite file by default; PostgreSQL for many workers)."""
    echo: bool = False


@dataclass
class BudgetConfig:
    """Per-problem limits (None: unlimited). Every unit is counted; set ones are enforced."""

    samples: int | None = bounded(None, ge=1, help="sampled sequences")
    tokens: int | None = bounded(None, ge=1, help="generated (completion) tokens")
    prefill_tokens: int | None = bounded(None, ge=0, help="prefilled tokens net of cache hits")
    reward_tokens: int | None = bounded(None, ge=0, help="tokens read by reward models")
    reward_calls: int | None = bounded(None, ge=0, help="reward-model calls")
    flops: float | None = bounded(None, gt=0, help="model FLOPs (policy, from the cost model)")
    eflops: float | None = bounded(
        None, gt=0, help="effective FLOPs: FLOPs + intensity * bytes moved (ttc.cost)"
    )
    seconds: float | None = bounded(None, gt=0, help="wall seconds of the problem")


@dataclass
class SchedulerConfig:
    max_batch_size: int = bounded(64, ge=1, help="requests per backend batch")
    max_wait_ms: float = bounded(2.0, ge=0, help="how long a batch waits for more requests")


@dataclass
class RunConfig:
    concurrency: int = bounded(32, ge=1, help="problems solved at the same time")
    seed: int = 0
    progress: bool = True
    name: str | None = bounded(
        None, max_len=200, help="a label for the run (the store's column holds 200 characters)"
    )
    allow_errors: bool = False
    """Exit 0 even when some problems ended with an error (they stay stored as errors)."""
    executor: str = bounded(
        "local",
        choices=["local", "ray"],
        help="where problems run: this process (local) or actors of a Ray cluster (ray)",
    )


@dataclass
class RayConfig:
    """Options of `run.executor=ray` (`ttc.executor`): where the actors run and how many."""

    address: str = ""
    """Cluster to join: `auto` (the one `ray start` runs here), a head address
    (`host:6379`, `ray://host:10001`), or empty for a new local cluster."""
    actors_per_node: int = bounded(1, ge=1, le=1024, help="actors on every node without GPUs")
    actors_per_gpu: int | None = bounded(
        None, ge=1, le=64, help="actors sharing each GPU of a node (each gets 1/k of it)"
    )
    concurrency_per_actor: int | None = bounded(
        None, ge=1, help="problems an actor solves at once (unset: run.concurrency)"
    )
    chunk_size: int = bounded(4, ge=1, help="problems handed out at a time")
    cpus_per_actor: float = bounded(1.0, ge=0.0, le=1024.0, help="CPUs Ray reserves per actor")
    max_actor_failures: int = bounded(
        8, ge=0, help="actors that may die before the run fails (their problems run elsewhere)"
    )


@dataclass
class RootConfig:
    backend: Any = MISSING
    strategy: Any = MISSING
    reward: Any = MISSING
    allocator: Any = MISSING
    task: Any = MISSING
    store: Any = MISSING
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    run: RunConfig = field(default_factory=RunConfig)
    resume: str | None = None
    """Id of an interrupted run to continue (its stored config is used)."""
    ray: RayConfig = field(default_factory=RayConfig)
    """Options of `run.executor=ray`."""
    serve: Any = None
    """The `serve` node of `ttc serve` (`ttc.serve.ServeConfig`); unset for `ttc run`."""


GROUP_BASES: dict[str, type] = {
    "backend": BackendConfig,
    "strategy": StrategyConfig,
    "reward": RewardConfig,
    "allocator": AllocatorConfig,
    "task": TaskConfig,
    "store": StoreConfig,
}


MAX_SAMPLES = 4096
"""Sequences one problem may hold at once (n, particles, beam width, ...)."""
MAX_TOKENS = 1_048_576
"""Tokens of one sample or step: more than any model's context."""
MAX_PARALLEL = 65_536
"""Problems, requests or sequences in flight at once."""
MAX_INT = 2**31 - 1
"""Any integer setting: larger values overflow the tensors and columns they reach."""

SIZE_LIMITS: dict[str, tuple[int, str]] = {
    **{
        name: (MAX_SAMPLES, "ttc.config.MAX_SAMPLES, sequences per problem")
        for name in (
            "n", "particles", "beam_width", "expansions", "width", "max_samples",
            "min_samples", "batch", "pop", "solutions", "iterations", "k",
        )
    },
    **{
        name: (MAX_TOKENS, "ttc.config.MAX_TOKENS, tokens per sample")
        for name in ("max_tokens", "step_tokens", "verify_max_tokens")
    },
    **{
        name: (MAX_PARALLEL, "ttc.config.MAX_PARALLEL, items in flight")
        for name in (
            "concurrency", "max_batch_size", "max_concurrency", "max_batch_sequences",
            "batch_size", "concurrency_per_actor", "chunk_size",
        )
    },
}  # fmt: skip
"""Upper bounds of the settings that allocate, by field name, for every group (plugins'
too): a field whose metadata sets no `le`/`lt` gets this one. Without them a typo such as
`strategy.n=99999999999999999999999` would try to allocate that many sequences."""


def _upper_bound(f: dataclasses.Field[Any], value: Any) -> tuple[int, str] | None:
    meta = f.metadata
    if "le" in meta or "lt" in meta or isinstance(value, bool) or not isinstance(value, int):
        return None
    if "seed" in f.name:  # any integer seeds a generator
        return None
    return SIZE_LIMITS.get(f.name, (MAX_INT, "ttc.config.MAX_INT"))


def check_bounds(obj: Any, prefix: str) -> None:
    """Check the `bounded` metadata of a dataclass instance (recursively), and the upper
    bounds of `SIZE_LIMITS`."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_bounds(value, key)
            continue
        if value is None:
            continue
        meta = f.metadata
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise ConfigError(
                f"{key}={value!r} is not valid; valid choices: {', '.join(map(str, choices))}",
                key=key,
                value=value,
            )
        for op, ok, words in (
            ("ge", lambda v, b: v >= b, ">="),
            ("gt", lambda v, b: v > b, ">"),
            ("le", lambda v, b: v <= b, "<="),
            ("lt", lambda v, b: v < b, "<"),
        ):
            if op in meta and not ok(value, meta[op]):
                raise ConfigError(
                    f"{key}={value!r} is out of range; it must be {words} {meta[op]}",
                    key=key,
                    value=value,
                )
        max_len = meta.get("max_len")
        if max_len is not None and isinstance(value, str) and len(value) > max_len:
            raise ConfigError(
                f"{key} is {len(value)} characters long; it may have at most {max_len}",
                key=key,
                hint=f"shorten {key}",
            )
        upper = _upper_bound(f, value)
        if upper is not None and value > upper[0]:
            raise ConfigError(
                f"{key}={value} is too large; it must be <= {upper[0]:,} ({upper[1]})",
                key=key,
                value=value,
                hint=f"lower {key}; for more, split the work into several problems or runs",
            )


def check_keys(node: Any, key: str) -> None:
    """Refuse keys a schema does not declare (`+foo=bar` adds them past Hydra's checks)."""
    schema = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    if schema is None or not dataclasses.is_dataclass(schema):
        return
    declared = {f.name: f for f in dataclasses.fields(schema)}
    for name in node:
        name = str(name)
        full = f"{key}.{name}" if key else name
        if name not in declared:
            raise ConfigError(
                f"{full} is not a config key; valid keys under {key or 'the root'}: "
                f"{', '.join(declared)}",
                key=full,
                hint=f"remove +{full}=..., or check its spelling",
            )
        child = node._get_node(name)
        if isinstance(child, DictConfig):
            check_keys(child, full)


def to_object(node: Any, key: str) -> Any:
    """Turn a config node into its schema dataclass and check its ranges."""
    if isinstance(node, DictConfig) and OmegaConf.get_type(node) not in (dict, None):
        obj = OmegaConf.to_object(node)
        check_bounds(obj, key)
        return obj
    return node


def instantiate_config(schema: type, node: Any, key: str) -> Any:
    """Build the `schema` dataclass from a config node (structured or plain), checking
    types and ranges; errors name `key`."""
    from omegaconf.errors import OmegaConfBaseException

    try:
        merged = OmegaConf.merge(OmegaConf.structured(schema), node)
        obj = OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        full = getattr(exc, "full_key", None)
        where = f"{key}.{full}" if full else key
        raise ConfigError(f"invalid value under {where}: {exc.msg}", key=where) from exc
    check_bounds(obj, key)
    return obj


def validate(cfg: DictConfig) -> None:
    """Check every group's and the root's ranges; raise `ConfigError` naming the key."""
    check_keys(cfg, "")
    for key in (*GROUP_BASES, "budget", "scheduler", "run", "ray"):
        to_object(cfg[key], key)
