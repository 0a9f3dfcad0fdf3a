"""The per-difficulty policy table: which strategy, parameters and budget each
difficulty bin gets.

`ttc analyze policy` writes such a table from stored runs; `allocator=difficulty` with
`allocator.policy=<file>` reads it back. One YAML or JSON document (format version 1):

```yaml
ttc_policy: 1
measure: agreement                 # agreement | entropy | score
probe: {samples: 4, max_tokens: 256}   # optional
bins:                              # increasing up_to; the first with difficulty <= up_to
  - name: easy
    up_to: 0.25
    strategy: {name: best_of_n, n: 4}  # name + overrides of that strategy's schema
    budget: {tokens: 800}              # any Budget unit; others keep the run's budget
  - name: hard
    up_to: .inf
    strategy: {name: beam_search, beam_width: 4}
    budget: {tokens: 4000}
source: {store: "...", runs: ["..."], fitted_on: oracle}   # informational
```

`load_policy` validates everything a run would trip over later (unknown measure, unit,
strategy name or parameter, unordered bins) and names the offending key in one line;
`dump_policy` writes the same format (the two round-trip).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ttc.budget import UNITS
from ttc.errors import ConfigError

FORMAT_VERSION = 1
MEASURES = ("agreement", "entropy", "score")


@dataclass(frozen=True)
class PolicyBin:
    """One difficulty bin of a policy table."""

    name: str
    up_to: float
    strategy: dict[str, Any] = field(default_factory=dict)
    """`name` plus parameter overrides; empty: the run's own strategy."""
    budget: dict[str, float] = field(default_factory=dict)
    """Limits by unit; units not given keep the run's top-level budget."""


@dataclass(frozen=True)
class Policy:
    """A parsed, validated policy table."""

    measure: str
    bins: tuple[PolicyBin, ...]
    probe: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    def bin_for(self, difficulty: float) -> PolicyBin:
        """The first bin whose `up_to` holds `difficulty` (the last one past them all)."""
        for b in self.bins:
            if difficulty <= b.up_to:
                return b
        return self.bins[-1]

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ttc_policy": FORMAT_VERSION, "measure": self.measure}
        if self.probe:
            out["probe"] = dict(self.probe)
        out["bins"] = [
            {
                "name": b.name,
                "up_to": b.up_to,
                **({"strategy": dict(b.strategy)} if b.strategy else {}),
                **({"budget": dict(b.budget)} if b.budget else {}),
            }
            for b in self.bins
        ]
        if self.source:
            out["source"] = dict(self.source)
        return out


def _fail(where: str, problem: str, hint: str | None = None) -> ConfigError:
    return ConfigError(f"policy file {where}: {problem}", key="allocator.policy", hint=hint)


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, str) and value.strip().lower() in (".inf", "inf", "+inf"):
        return math.inf
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, f"{key} must be a number, got {value!r}")
    return float(value)


def parse_policy(data: Any, *, where: str = "<policy>") -> Policy:
    """Validate a loaded document (a mapping) into a `Policy`."""
    if not isinstance(data, Mapping):
        raise _fail(where, f"expected a mapping at the top, got {type(data).__name__}")
    version = data.get("ttc_policy")
    if version != FORMAT_VERSION:
        raise _fail(
            where,
            f"ttc_policy must be {FORMAT_VERSION}, got {version!r}",
            hint="write it with `ttc analyze policy` (format version 1)",
        )
    measure = data.get("measure", "agreement")
    if measure not in MEASURES:
        raise _fail(where, f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    probe = data.get("probe") or {}
    if not isinstance(probe, Mapping) or set(probe) - {"samples", "max_tokens", "temperature"}:
        raise _fail(where, f"probe takes samples, max_tokens, temperature; got {probe!r}")
    raw_bins = data.get("bins")
    if not isinstance(raw_bins, list) or not raw_bins:
        raise _fail(where, "bins must be a non-empty list")
    bins: list[PolicyBin] = []
    for i, raw in enumerate(raw_bins):
        key = f"bins[{i}]"
        if not isinstance(raw, Mapping):
            raise _fail(where, f"{key} must be a mapping, got {raw!r}")
        unknown = set(raw) - {"name", "up_to", "strategy", "budget"}
        if unknown:
            raise _fail(where, f"{key} has unknown keys {sorted(unknown)}")
        up_to = _number(raw.get("up_to", math.inf), where, f"{key}.up_to")
        strategy = dict(raw.get("strategy") or {})
        if strategy and not isinstance(strategy.get("name"), str):
            raise _fail(where, f"{key}.strategy needs a name, got {strategy!r}")
        budget: dict[str, float] = {}
        for unit, value in dict(raw.get("budget") or {}).items():
            if unit not in UNITS:
                raise _fail(where, f"{key}.budget.{unit} is not a unit; units: {', '.join(UNITS)}")
            budget[unit] = _number(value, where, f"{key}.budget.{unit}")
        bins.append(PolicyBin(str(raw.get("name", f"bin{i}")), up_to, strategy, budget))
    bounds = [b.up_to for b in bins]
    if bounds != sorted(bounds):
        raise _fail(where, f"bins must be in increasing up_to order, got {bounds}")
    return Policy(measure, tuple(bins), dict(probe), dict(data.get("source") or {}))


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file (YAML, or JSON by its `.json` suffix)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(
            f"cannot read allocator.policy file {str(p)!r}: {exc.strerror or exc}",
            key="allocator.policy",
            hint="write one with `ttc analyze policy`, or give the path of an existing file",
        ) from exc
    import yaml

    try:
        data = json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        kind = "JSON" if p.suffix == ".json" else "YAML"
        first = str(exc).strip().splitlines()[0]
        raise _fail(str(p), f"not valid {kind}: {first}") from exc
    return parse_policy(data, where=str(p))


def dump_policy(policy: Policy, path: str | Path) -> None:
    """Write `policy` as YAML (or JSON for a `.json` path); `load_policy` reads it back."""
    p = Path(path)
    data = policy.to_dict()
    if p.suffix == ".json":
        # JSON has no infinity: write it as the string ".inf", which the reader accepts.
        for b in data["bins"]:
            if math.isinf(b["up_to"]):
                b["up_to"] = ".inf"
        p.write_text(json.dumps(data, indent=2) + "\n")
        return
    import yaml

    p.write_text(yaml.safe_dump(data, sort_keys=False))
