"""The plugin manager and the registry of named implementations.

Plugins are modules that implement hooks from `ttc.hookspecs`. They are found through the
entry-point group `ttc`; ttc's own built-ins are loaded through the same function. The
registry is built once, lazily, by `get_registry()`.

Environment:
- `TTC_PLUGINS`: comma-separated allow-list of third-party plugin (entry-point) names.
  Unset: load all; empty: built-ins only.
- `TTC_PLUGIN_MODULES`: comma-separated module names to load as plugins too (handy for
  plugins that are not installed as packages, e.g. in a test suite).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import importlib.metadata as md
import importlib.resources
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pluggy

from ttc import hookspecs
from ttc.config import GROUP_BASES
from ttc.errors import (
    DuplicateNameError,
    HookSpecError,
    PluginError,
    PluginImportError,
    UnknownNameError,
)

ENTRY_POINT_GROUP = "ttc"
BUILTIN_PLUGINS: dict[str, str] = {"ttc": "ttc.plugins.builtin"}
"""Built-in plugin name -> module, loaded like any entry point."""

# registration hook -> config group it fills
KIND_HOOKS: dict[str, str] = {
    "register_backends": "backend",
    "register_strategies": "strategy",
    "register_reward_models": "reward",
    "register_allocators": "allocator",
    "register_tasks": "task",
}


def _interfaces() -> dict[str, type]:
    from ttc import interfaces

    return {
        "backend": interfaces.Backend,
        "strategy": interfaces.Strategy,
        "reward": interfaces.RewardModel,
        "allocator": interfaces.Allocator,
        "task": interfaces.Task,
    }


@dataclass(frozen=True)
class Registered:
    """One named implementation and where it came from."""

    kind: str
    name: str
    cls: type
    config_cls: type
    plugin: str


@dataclass
class PluginInfo:
    name: str
    version: str
    distribution: str
    builtin: bool
    provides: dict[str, list[str]] = field(default_factory=dict)


class Registry:
    """Everything the loaded plugins registered, by kind and name."""

    def __init__(self, pm: pluggy.PluginManager, plugins: dict[str, PluginInfo]) -> None:
        self.pm = pm
        self.plugins = plugins
        self.entries: dict[str, dict[str, Registered]] = {k: {} for k in KIND_HOOKS.values()}
        self.config_nodes: list[tuple[str, str, Any, str]] = []

    def get(self, kind: str, name: str) -> Registered:
        try:
            return self.entries[kind][name]
        except KeyError:
            raise UnknownNameError(kind, name, list(self.entries[kind])) from None

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    # -- building ---------------------------------------------------------------------
    def _add(self, kind: str, plugin: str, cls: Any, config_cls: Any) -> None:
        base = _interfaces()[kind]
        if not (isinstance(cls, type) and issubclass(cls, base)):
            raise PluginError(
                f"plugin '{plugin}' registered {cls!r} as a {kind}, "
                f"but it is not a subclass of {base.__module__}.{base.__name__}",
                plugin=plugin,
            )
        name = getattr(cls, "name", "")
        if not name or not isinstance(name, str):
            raise PluginError(
                f"plugin '{plugin}' registered {kind} {cls.__name__} without a `name`",
                plugin=plugin,
                hint="set the class attribute `name = '...'`",
            )
        group_base = GROUP_BASES[kind]
        if not (
            isinstance(config_cls, type)
            and dataclasses.is_dataclass(config_cls)
            and issubclass(config_cls, group_base)
        ):
            raise PluginError(
                f"plugin '{plugin}' registered {kind} '{name}' with config {config_cls!r}, "
                f"which is not a dataclass subclassing ttc.config.{group_base.__name__}",
                plugin=plugin,
            )
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise DuplicateNameError(kind, name, first=existing.plugin, second=plugin)
        self.entries[kind][name] = Registered(kind, name, cls, config_cls, plugin)
        self.plugins[plugin].provides.setdefault(kind, []).append(name)


def _distribution_of(module_name: str) -> tuple[str, str]:
    top = module_name.split(".")[0]
    dists = md.packages_distributions().get(top, [])
    for dist in dists:
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    return "", "unknown"


def _allowed_third_party() -> set[str] | None:
    raw = os.environ.get("TTC_PLUGINS")
    if raw is None:
        return None
    return {p.strip() for p in raw.split(",") if p.strip()}


def _module_plugins() -> list[str]:
    return [m.strip() for m in os.environ.get("TTC_PLUGIN_MODULES", "").split(",") if m.strip()]


def _check_allowed(allowed: set[str] | None, entry_points: list[Any]) -> None:
    """Every name in TTC_PLUGINS must be a plugin that can be loaded (a typo there would
    otherwise silently drop the plugin the user asked for)."""
    if not allowed:
        return
    known = {ep.name for ep in entry_points} | set(_module_plugins()) | set(BUILTIN_PLUGINS)
    missing = sorted(allowed - known)
    if missing:
        installed = ", ".join(sorted(known - set(BUILTIN_PLUGINS))) or "none"
        raise PluginError(
            f"TTC_PLUGINS names {', '.join(repr(m) for m in missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed; installed third-party "
            f"plugins: {installed}",
            plugin=missing[0],
            hint="fix TTC_PLUGINS (comma-separated entry-point names), or install the plugin",
        )


def build_plugin_manager() -> tuple[pluggy.PluginManager, dict[str, PluginInfo]]:
    """Load built-ins, entry points and `TTC_PLUGIN_MODULES` into a fresh manager."""
    pm = pluggy.PluginManager("ttc")
    pm.add_hookspecs(hookspecs)
    infos: dict[str, PluginInfo] = {}

    def load(name: str, loader: Callable[[], Any], dist: str, version: str, builtin: bool):
        if name in infos:
            return
        try:
            module = loader()
        except Exception as exc:  # any import-time failure of third-party code
            raise PluginImportError(
                f"plugin '{name}' failed to import: {type(exc).__name__}: {exc}",
                plugin=name,
                hint=f"fix or uninstall the package '{dist or name}', "
                f"or exclude it with TTC_PLUGINS",
            ) from exc
        pm.register(module, name=name)
        infos[name] = PluginInfo(name, version, dist, builtin)

    for name, module_name in BUILTIN_PLUGINS.items():
        load(name, functools.partial(importlib.import_module, module_name), "ttc",
             _own_version(), True)  # fmt: skip

    allowed = _allowed_third_party()
    entry_points = list(md.entry_points(group=ENTRY_POINT_GROUP))
    _check_allowed(allowed, entry_points)
    for ep in entry_points:
        if ep.name in BUILTIN_PLUGINS or (allowed is not None and ep.name not in allowed):
            continue
        dist = ep.dist.name if ep.dist is not None else ""
        version = ep.dist.version if ep.dist is not None else "unknown"
        load(ep.name, ep.load, dist, version, False)

    for module_name in os.environ.get("TTC_PLUGIN_MODULES", "").split(","):
        module_name = module_name.strip()
        if not module_name or (allowed is not None and module_name not in allowed):
            continue
        dist, version = _distribution_of(module_name)
        version = version if dist else "local"
        load(module_name, functools.partial(importlib.import_module, module_name), dist,
             version, False)  # fmt: skip

    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        plugin = getattr(exc, "plugin", None)
        pname = pm.get_name(plugin) if plugin is not None else "?"
        raise HookSpecError(
            f"plugin '{pname}' implements a hook that does not exist: {exc}",
            plugin=pname or "?",
            hint="check the hook name against ttc.hookspecs (docs/plugins.md lists them)",
        ) from exc
    return pm, infos


def _own_version() -> str:
    from ttc import __version__

    return __version__


def build_registry() -> Registry:
    pm, infos = build_plugin_manager()
    registry = Registry(pm, infos)
    for hook_name, kind in KIND_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = impl.plugin_name

            def register(cls: Any, config_cls: Any, *, _k: str = kind, _p: str = plugin) -> None:
                registry._add(_k, _p, cls, config_cls)

            impl.function(register=register)
    for impl in pm.hook.register_configs.get_hookimpls():

        def register_node(group: str, name: str, node: Any, *, _p: str = impl.plugin_name):
            registry.config_nodes.append((group, name, node, _p))

        impl.function(register=register_node)
    return registry


_lock = threading.Lock()
_registry: Registry | None = None
_stored = False


def get_registry() -> Registry:
    """The registry of this process, built on first use."""
    global _registry
    with _lock:
        if _registry is None:
            _registry = build_registry()
        return _registry


def reset_registry() -> None:
    """Forget the loaded plugins (tests change TTC_PLUGINS or install plugins)."""
    global _registry, _stored
    with _lock:
        _registry = None
        _stored = False


def _has_yaml(group: str, name: str) -> bool:
    try:
        return (importlib.resources.files("ttc.conf") / group / f"{name}.yaml").is_file()
    except (ModuleNotFoundError, FileNotFoundError):
        return False


def store_configs(registry: Registry | None = None) -> None:
    """Put every registered schema into Hydra's ConfigStore (once per registry).

    Each implementation's schema is stored as `<group>/base_<name>`; one without a YAML
    file in ttc.conf is also stored as `<group>/<name>` so that `<group>=<name>` works.
    """
    global _stored
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    from ttc.config import RewardConfig, RootConfig, StoreConfig

    registry = registry or get_registry()
    if _stored:
        return
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=RootConfig)
    cs.store(group="store", name="base_store", node=StoreConfig)
    cs.store(group="reward", name="base_none", node=RewardConfig(name="none"))
    for kind, entries in registry.entries.items():
        for name, reg in entries.items():
            cs.store(group=kind, name=f"base_{name}", node=reg.config_cls)
            if not _has_yaml(kind, name):
                node = OmegaConf.structured(reg.config_cls)
                node.name = name
                cs.store(group=kind, name=name, node=node)
    for group, name, node, _plugin in registry.config_nodes:
        cs.store(group=group, name=name, node=node)
    _stored = True
