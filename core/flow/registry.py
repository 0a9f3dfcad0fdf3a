"""Flow strategies and allocators by name (the flow modality's registry).

The language-model registry (`ttc.registry`) checks that a strategy subclasses
`ttc.interfaces.Strategy`; flow strategies are a sibling kind, so they live here, with the
same rules: a `name`, a config dataclass of the kind's base, unique names, one-line errors
for unknown names and out-of-range options. Their schemas reach Hydra's ConfigStore as
`flow_strategy/<name>` and `flow_allocator/<name>` through the built-in plugin's
`register_configs`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from ttc.errors import ConfigError, UnknownNameError


@functools.cache
def flow_entries() -> dict[str, dict[str, tuple[type, type]]]:
    """kind ("strategy" | "allocator") -> name -> (class, config class)."""
    from ttc.flow.allocators import (
        FixedFlowAllocator,
        FixedFlowAllocatorConfig,
        RolloverFlowAllocator,
        RolloverFlowAllocatorConfig,
    )
    from ttc.strategies.flow.best_of_n import FlowBestOfN, FlowBestOfNConfig
    from ttc.strategies.flow.particles import (
        ParticleSDE,
        ParticleSDEConfig,
        ParticleVPSDE,
        ParticleVPSDEConfig,
    )
    from ttc.strategies.flow.rbf import RBFConfig, RolloverBudgetForcing

    out: dict[str, dict[str, tuple[type, type]]] = {"strategy": {}, "allocator": {}}
    for kind, cls, cfg in (
        ("strategy", FlowBestOfN, FlowBestOfNConfig),
        ("strategy", ParticleSDE, ParticleSDEConfig),
        ("strategy", ParticleVPSDE, ParticleVPSDEConfig),
        ("strategy", RolloverBudgetForcing, RBFConfig),
        ("allocator", FixedFlowAllocator, FixedFlowAllocatorConfig),
        ("allocator", RolloverFlowAllocator, RolloverFlowAllocatorConfig),
    ):
        name = cls.name  # type: ignore[attr-defined]
        if name in out[kind]:
            raise ConfigError(f"two flow {kind}s are named {name!r}")
        out[kind][name] = (cls, cfg)
    return out


def _check(kind: str, config: Any) -> None:
    for f in dataclasses.fields(config):
        v, meta = getattr(config, f.name), f.metadata
        if v is None:
            continue
        bad = (
            ("choices" in meta and v not in meta["choices"])
            or ("ge" in meta and v < meta["ge"])
            or ("gt" in meta and v <= meta["gt"])
        )
        if bad:
            allowed = meta.get("choices") or {k: meta[k] for k in ("ge", "gt") if k in meta}
            raise ConfigError(
                f"flow_{kind}.{f.name}={v!r} is out of range ({allowed})",
                key=f"flow_{kind}.{f.name}",
                value=v,
            )


def build(kind: str, name: str, *args: Any, **options: Any) -> Any:
    """A flow strategy or allocator by name with config `options` (checked)."""
    entries = flow_entries()[kind]
    if name not in entries:
        raise UnknownNameError(f"flow {kind}", name, sorted(entries))
    cls, config_cls = entries[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ConfigError(
            f"flow {kind} {name!r} has no option {unknown[0]!r}",
            key=f"flow_{kind}.{unknown[0]}",
            hint=f"options: {', '.join(sorted(fields - {'name'}))}",
        )
    config = config_cls(**options)
    _check(kind, config)
    return cls(config, *args)


def config_nodes() -> list[tuple[str, str, Any]]:
    """(group, name, default config) of every flow strategy and allocator."""
    return [
        (f"flow_{kind}", name, cfg())
        for kind, entries in flow_entries().items()
        for name, (_, cfg) in entries.items()
    ]
