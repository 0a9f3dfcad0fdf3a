"""A request's strategy, parameters and budget, validated with `ttc run`'s schemas.

The strategy comes from `ttc.strategy` (the request's `extra_body={"ttc": {...}}`), else
from a model name `<prefix>/<strategy>`, else the run's strategy. Every other key of
`ttc` except `budget` is a parameter of that strategy; `n`, `temperature`, `top_p` and
`max_tokens` of the OpenAI request fill the strategy's parameters of the same name (a
`ttc` value wins). The budget is the run's `budget` node with the request's units laid
over it, under the server's ceilings (`serve.max_budget`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ttc.budget import UNITS, Budget
from ttc.config import BudgetConfig, instantiate_config
from ttc.errors import ConfigError
from ttc.registry import Registry
from ttc.serve.config import ServeConfig

OPENAI_SAMPLING = {
    "n": "n",
    "temperature": "temperature",
    "top_p": "top_p",
    "max_tokens": "max_tokens",
    "max_completion_tokens": "max_tokens",
}
"""OpenAI request fields and the strategy parameter each one fills, when it has one."""

RESERVED = ("strategy", "budget")


class RequestError(Exception):
    """A request the gateway refuses: `status` is the HTTP status, `message` one line
    naming the bad key and what it may be."""

    def __init__(self, message: str, *, status: int = 400, key: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.key = key


@dataclass(frozen=True)
class RequestPlan:
    strategy: str
    config: Any
    """The strategy's config dataclass, checked against its schema."""
    params: dict[str, Any]
    """The parameters the request set (ttc keys and mapped OpenAI fields)."""
    budget: Budget
    stop: tuple[str, ...] = ()
    seed: int | None = None
    named: bool = False
    """The request named its strategy (`ttc.strategy` or the model name): an allocator's
    plan keeps it instead of choosing another."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready summary (kept with the problem in the store)."""
        return {"strategy": self.strategy, "params": self.params, "budget": self.budget.limits()}


class Planner:
    """Turns request bodies into `RequestPlan`s for one serving run."""

    def __init__(
        self,
        cfg: DictConfig,
        registry: Registry,
        serve: ServeConfig,
        strategy_nodes: dict[str, dict[str, Any]],
    ) -> None:
        self.registry = registry
        self.serve = serve
        self.default_strategy = str(cfg.strategy.name)
        self.strategy_nodes = strategy_nodes
        """Each strategy's composed default config (the run's own for its strategy)."""
        base = OmegaConf.to_container(cfg.budget, resolve=True)
        assert isinstance(base, dict)
        self.base_budget: dict[str, Any] = {str(k): v for k, v in base.items()}
        self.has_reward = str(cfg.reward.name) != "none"
        # Validation through OmegaConf costs milliseconds: the checked configs and budgets
        # of recent distinct requests are kept (most requests repeat a few settings).
        self._configs: dict[tuple[str, str], Any] = {}
        self._budgets: dict[str, Budget] = {}

    @property
    def strategies(self) -> list[str]:
        return sorted(self.strategy_nodes)

    def strategy_of(self, model: str | None, ttc: dict[str, Any]) -> str:
        name = ttc.get("strategy")
        if name is not None:
            if not isinstance(name, str) or name not in self.strategy_nodes:
                raise RequestError(
                    f"ttc.strategy={name!r} is not a strategy; valid choices: "
                    + ", ".join(self.strategies),
                    key="ttc.strategy",
                )
            return name
        prefix = self.serve.model_prefix + "/"
        if model and model.startswith(prefix):
            name = model[len(prefix) :]
            if name not in self.strategy_nodes:
                raise RequestError(
                    f"model={model!r} names no strategy; valid models: "
                    + ", ".join(f"{prefix}{s}" for s in self.strategies),
                    key="model",
                    status=404,
                )
            return name
        return self.default_strategy

    def plan(self, body: dict[str, Any]) -> RequestPlan:
        ttc = body.get("ttc")
        if ttc is None:
            ttc = {}
        if not isinstance(ttc, dict):
            raise RequestError(
                f"ttc must be an object, e.g. {{'strategy': 'best_of_n', 'n': 4}}; got {ttc!r}",
                key="ttc",
            )
        model = body.get("model")
        name = self.strategy_of(model if isinstance(model, str) else None, ttc)
        reg = self.registry.get("strategy", name)
        schema = reg.config_cls
        fields = [f.name for f in dataclasses.fields(schema) if f.name != "name"]
        params: dict[str, Any] = {}
        for field_name, param in OPENAI_SAMPLING.items():
            value = body.get(field_name)
            if value is None:
                continue
            if param in fields:
                params[param] = value
            elif field_name == "n" and value != 1:
                raise RequestError(
                    f"n={value!r}: strategy '{name}' has no parameter n (the response holds "
                    f"one choice: the strategy's answer); set its own parameters under "
                    f"ttc: {', '.join(fields)}",
                    key="n",
                )
        for key, value in ttc.items():
            if key in RESERVED:
                continue
            if key not in fields:
                raise RequestError(
                    f"ttc.{key} is not a parameter of strategy '{name}'; valid keys: "
                    + ", ".join([*RESERVED, *fields]),
                    key=f"ttc.{key}",
                )
            params[key] = value
        key = (name, _key(params))
        config = self._configs.get(key)
        if config is None:
            node = {**self.strategy_nodes[name], **params, "name": name}
            try:
                config = instantiate_config(schema, node, "ttc")
            except ConfigError as exc:
                message = _request_words(_one_line(exc.message), body)
                raise RequestError(message, key=exc.key) from None
            _remember(self._configs, key, config)
        config = copy.deepcopy(config)  # each request's strategy owns its config
        if getattr(reg.cls, "uses_reward", True) and not self.has_reward:
            raise RequestError(
                f"ttc.strategy={name}: it ranks with a reward model and this server runs "
                "reward=none; choose a strategy that needs none (e.g. self_consistency)",
                key="ttc.strategy",
            )
        named = "strategy" in ttc or (
            isinstance(model, str) and model.startswith(self.serve.model_prefix + "/")
        )
        return RequestPlan(
            strategy=name,
            named=named,
            config=config,
            params=params,
            budget=self.budget(ttc.get("budget")),
            stop=_stops(body.get("stop")),
            seed=_seed(body.get("seed")),
        )

    def budget(self, asked: Any) -> Budget:
        if asked is None:
            asked = {}
        if not isinstance(asked, dict):
            raise RequestError(
                f"ttc.budget must be an object of limits, e.g. {{'tokens': 4000}}; got {asked!r}",
                key="ttc.budget",
            )
        key = _key(asked)
        cached = self._budgets.get(key)
        if cached is not None:
            return cached  # frozen
        unknown = [k for k in asked if k not in UNITS]
        if unknown:
            raise RequestError(
                f"ttc.budget.{unknown[0]} is not a budget unit; valid units: " + ", ".join(UNITS),
                key=f"ttc.budget.{unknown[0]}",
            )
        try:
            checked = instantiate_config(BudgetConfig, {**self.base_budget, **asked}, "ttc.budget")
        except ConfigError as exc:
            raise RequestError(_one_line(exc.message), key=exc.key) from None
        ceilings = self.serve.max_budget
        limits: dict[str, Any] = {}
        for unit in UNITS:
            value, ceiling = getattr(checked, unit), getattr(ceilings, unit)
            if ceiling is not None:
                if value is None or (unit not in asked and value > ceiling):
                    value = ceiling  # the run's default is held to the ceiling too
                elif value > ceiling:
                    raise RequestError(
                        f"ttc.budget.{unit}={value} is above this server's ceiling; it must "
                        f"be <= {ceiling} (serve.max_budget.{unit})",
                        key=f"ttc.budget.{unit}",
                    )
            limits[unit] = value
        budget = Budget(**limits)
        _remember(self._budgets, key, budget)
        return budget


def _request_words(message: str, body: dict[str, Any]) -> str:
    """A schema message about `ttc.<param>`, naming the OpenAI field when that set it."""
    for field_name, param in OPENAI_SAMPLING.items():
        if body.get(field_name) is not None and message.startswith(f"ttc.{param}="):
            ttc = body.get("ttc") or {}
            if param not in ttc:
                return field_name + message[len(f"ttc.{param}") :]
    return message


CACHE_SIZE = 256


def _key(values: dict[str, Any]) -> str:
    return json.dumps(values, sort_keys=True, default=repr)


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= CACHE_SIZE:
        cache.pop(next(iter(cache)))  # the oldest first
    cache[key] = value


def _one_line(message: str) -> str:
    """OmegaConf's type errors carry its own context lines: keep the first."""
    return message.strip().splitlines()[0]


def _stops(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,) if stop else ()
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 4:
        return tuple(s for s in stop if s)
    raise RequestError("stop must be a string or a list of at most 4 strings", key="stop")


def _seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise RequestError(f"seed={seed!r} must be an integer", key="seed")
    return seed
