"""Tidy access to the run store: runs, results, nodes and calls as pandas DataFrames.

`load(store_url, runs=...)` reads the selected runs once and returns `Tables`:

- `runs`: one row per run, its resolved config flattened into dotted columns
  (`strategy.name`, `strategy.n`, `reward.name`, `backend.model`, `budget.tokens`, ...),
  plus `config_key` (the configuration compared: everything but the budget and the run's
  bookkeeping), `label` (a short name for tables and plots), `family` (the label without
  the parameters that scale compute, `SIZE_KEYS`: one curve) and `budget_label`.
- `results`: one row per problem of a run, with its spending in every unit of
  `COST_UNITS` (`total_tokens` = prompt + generated; `eflops` computed from FLOPs and bytes
  moved with the default hardware profile when the store has no such column).
- `nodes`: the samples, i.e. finished branches (all branches with `leaves_only=False`;
  probe samples of the `difficulty` allocator are leaves too, flagged `probe`), each
  graded against its problem's reference (`correct`) and keyed for voting (`vote`, the
  task's normalised answer).
- `calls`: every backend and reward call.

Node fields are read through `node_fields`, one accessor that takes scores and answers
from their columns and falls back to the node's `extra` JSON, so the layer follows the
store as the schema evolves.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Text, select, type_coerce

from ttc.errors import ConfigError, RunNotFoundError

COST_UNITS = (
    "samples",
    "tokens",
    "total_tokens",
    "prefill_tokens",
    "reward_tokens",
    "flops",
    "eflops",
    "bytes",
    "seconds",
)
"""Units a cost axis can be drawn in (mean per problem): sampled sequences, generated
tokens, prompt + generated tokens, prefilled tokens net of prefix-cache hits, reward-model
tokens, model FLOPs, Kinetics effective FLOPs, bytes moved, wall seconds."""

SAMPLING_STRATEGIES = frozenset(
    {"best_of_n", "self_consistency", "best_of_majority", "adaptive_consistency"}
)
"""Strategies whose leaves are independent samples (pass@k and friends apply)."""

CONFIG_GROUPS = ("strategy", "reward", "backend", "task", "allocator")
SIZE_KEYS = ("strategy.n", "strategy.beam_width", "strategy.particles", "strategy.n_beams")
"""Strategy parameters that scale its compute: runs differing only in these (and the
budget) form one accuracy-cost curve (a configuration `family`)."""
"""Config groups that identify a configuration (the budget is its cost axis)."""

_RESULT_COLUMNS = (
    "id",
    "run_id",
    "problem_id",
    "problem_index",
    "status",
    "answer",
    "reference",
    "correct",
    "pass_at_1",
    "majority_correct",
    "oracle_correct",
    "n_branches",
    "n_leaves",
    "samples",
    "tokens",
    "prompt_tokens",
    "cached_prompt_tokens",
    "prefill_tokens",
    "reward_tokens",
    "reward_calls",
    "flops",
    "bytes",
    "seconds",
    "refused_calls",
    "budget",
)


@dataclass
class Tables:
    """The selected runs of one store, as DataFrames (see the module docstring)."""

    store_url: str
    runs: pd.DataFrame
    results: pd.DataFrame
    nodes: pd.DataFrame
    calls: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    """Caveats found while loading (e.g. a task that could not be built for grading)."""

    @property
    def run_ids(self) -> list[str]:
        return list(self.runs["id"])


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`; lists are kept as JSON text."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        elif isinstance(v, list | tuple):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


def _label(flat: dict[str, Any], varying: Sequence[str]) -> str:
    """`best_of_n(n=8, reward=prm)`: the strategy and the config keys that vary."""
    name = str(flat.get("strategy.name", "?"))
    parts = []
    for key in varying:
        if key == "strategy.name" or key not in flat:
            continue
        short = key.removeprefix("strategy.")
        if short.endswith(".name"):
            short = short.removesuffix(".name")
        parts.append(f"{short}={flat[key]}")
    return f"{name}({', '.join(parts)})" if parts else name


def node_fields(row: dict[str, Any]) -> dict[str, Any]:
    """Score, answer and probe flag of one stored node, wherever the schema keeps them."""
    extra = row.get("extra") or {}
    if isinstance(extra, str):
        extra = json.loads(extra)
    score = row.get("score")
    if score is None or score != score:  # missing (None or NaN)
        score = extra.get("score")
    answer = row.get("answer")
    if not isinstance(answer, str):
        answer = extra.get("answer")
    probe = row.get("probe")
    if probe is None:
        probe = bool(extra.get("probe", False))
    return {"score": score, "answer": answer, "probe": bool(probe)}


def select_runs(
    store: Any,
    runs: Iterable[str] | None = None,
    *,
    sweep: str | None = None,
    task: str | None = None,
    where: dict[str, str] | None = None,
    status: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The stored runs a selection names: ids (unique prefixes), a sweep, a task, and
    `where` filters on flattened config keys (`strategy=beam_search` matches
    `strategy.name`; `strategy.n=4` a parameter)."""
    from ttc.store.models import Run

    with store.session() as s:
        q = select(Run).order_by(Run.created_at)
        if sweep:
            q = q.where(Run.sweep == sweep)
        if task:
            q = q.where(Run.task == task)
        rows = [_as_dict(r) for r in s.scalars(q)]
    if runs:
        wanted = list(runs)
        picked = []
        for rid in wanted:
            hits = [r for r in rows if r["id"] == rid] or [
                r for r in rows if r["id"].startswith(rid)
            ]
            if len(hits) != 1:
                raise RunNotFoundError(rid)
            picked.append(hits[0])
        rows = picked
    if status:
        rows = [r for r in rows if r["status"] in status]
    for key, value in (where or {}).items():
        rows = [r for r in rows if _matches(r, key, value)]
    return rows


def _matches(run: dict[str, Any], key: str, value: str) -> bool:
    flat = flatten(run["config"] or {})
    if key in CONFIG_GROUPS or key == "budget":
        key = f"{key}.name"
    if key not in flat:
        return False
    return str(flat[key]).lower() == str(value).lower()


def parse_where(items: Sequence[str]) -> dict[str, str]:
    """`["strategy=beam_search", "strategy.n=4"]` -> a filter dict (bad items raise)."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"--where takes KEY=VALUE, got '{item}'",
                key="where",
                value=item,
                hint="e.g. --where strategy=beam_search or --where strategy.n=4",
            )
        out[key.strip()] = value.strip()
    return out


def _as_dict(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}


def load(
    store_url: str,
    runs: Iterable[str] | None = None,
    *,
    sweep: str | None = None,
    task: str | None = None,
    where: dict[str, str] | None = None,
    status: Sequence[str] | None = ("finished", "interrupted", "failed", "running"),
    leaves_only: bool = True,
    text: bool = False,
    calls: bool = True,
) -> Tables:
    """Read the selected runs of a store into DataFrames (see `Tables`)."""
    from ttc.store import Store

    store = Store(store_url)
    try:
        picked = select_runs(store, runs, sweep=sweep, task=task, where=where, status=status)
        if not picked:
            raise RunNotFoundError("(selection)")
        with store.engine.connect() as conn:
            results = _results_frame(conn, [r["id"] for r in picked])
            # A run stopped before its first problem was stored has nothing to analyse.
            stored = set(results["run_id"])
            notes = [
                f"run {r['id']} has no stored problems ({r['status']}); left out"
                for r in picked
                if r["id"] not in stored
            ]
            picked = [r for r in picked if r["id"] in stored]
            if not picked:
                raise ConfigError(
                    "the selected runs have no stored problems: nothing to analyse",
                    key="runs",
                    hint="select runs with finished problems (`ttc runs list`)",
                )
            run_df = _runs_frame(picked)
            ids = list(run_df["id"])
            nodes = _nodes_frame(conn, ids, leaves_only=leaves_only, text=text)
            call_df = _calls_frame(conn, ids) if calls else pd.DataFrame()
    finally:
        store.close()
    tables = Tables(store_url, run_df, results, nodes, call_df, notes=notes)
    _grade(tables)
    return tables


def _wall_s(totals: Any) -> float:
    """The run's wall-clock seconds from its stored totals (NaN before it finished)."""
    if isinstance(totals, str):
        totals = json.loads(totals)
    value = (totals or {}).get("wall_s") if isinstance(totals, dict) else None
    return math.nan if value is None else float(value)


def _varies(key: str, flats: list[dict[str, Any]]) -> bool:
    """Whether a config key tells the selected runs apart. A strategy's own parameter
    counts only where it differs between runs of one strategy: the fields that other
    strategies lack do not name a configuration."""
    if key.startswith("strategy.") and key != "strategy.name":
        seen: dict[str, set[str]] = {}
        for f in flats:
            if key in f:
                seen.setdefault(str(f.get("strategy.name")), set()).add(
                    json.dumps(f[key], default=str)
                )
        return any(len(values) > 1 for values in seen.values())
    return len({json.dumps(f.get(key), default=str) for f in flats}) > 1


def _runs_frame(picked: list[dict[str, Any]]) -> pd.DataFrame:
    flats = []
    for r in picked:
        flat = flatten({k: v for k, v in (r["config"] or {}).items() if k in CONFIG_GROUPS})
        budget = {f"budget.{k}": v for k, v in ((r["config"] or {}).get("budget") or {}).items()}
        flats.append((r, flat, budget))
    keys = sorted({k for _, f, _ in flats for k in f})
    varying = [k for k in keys if _varies(k, [f for _, f, _ in flats])]
    # The label names what differs between configurations, but never the budget.
    rows = []
    for r, flat, budget in flats:
        key = json.dumps(flat, sort_keys=True, default=str)
        limits = {k.removeprefix("budget."): v for k, v in budget.items() if v is not None}
        rows.append(
            {
                "id": r["id"],
                "name": r["name"],
                "status": r["status"],
                "sweep": r["sweep"],
                "created_at": r["created_at"],
                "strategy": r["strategy"],
                "model": r["model"],
                "task": r["task"],
                "reward": r["reward"],
                "backend": r["backend"],
                "n_problems": r["n_problems"],
                "wall_s": _wall_s(r.get("totals")),
                "config_key": key,
                "config": r["config"] or {},
                "label": _label(flat, varying),
                "family": _label(flat, [k for k in varying if k not in SIZE_KEYS]),
                "budget_label": ", ".join(f"{k}={v}" for k, v in sorted(limits.items()))
                or "unlimited",
                **flat,
                **budget,
            }
        )
    df = pd.DataFrame(rows)
    df["config_id"] = pd.factorize(df["config_key"])[0]
    return df


def _results_frame(conn: Any, ids: list[str]) -> pd.DataFrame:
    from ttc.store.models import Result

    cols = [getattr(Result, c) for c in _RESULT_COLUMNS if hasattr(Result, c)]
    extra_cols = [c for c in ("eflops",) if hasattr(Result, c)]
    cols += [getattr(Result, c) for c in extra_cols]
    rows = conn.execute(select(*cols).where(Result.run_id.in_(ids))).all()
    df = pd.DataFrame(rows, columns=[c.key for c in cols])
    df = df.rename(columns={"id": "result_id"})
    df["total_tokens"] = df["prompt_tokens"] + df["tokens"]
    if "eflops" not in df.columns:
        from ttc.cost import DEFAULT_HARDWARE, HARDWARE

        df["eflops"] = df["flops"] + HARDWARE[DEFAULT_HARDWARE].intensity * df["bytes"]
    df["budget"] = [b if isinstance(b, dict) else json.loads(b or "{}") for b in df["budget"]]
    df["difficulty"] = [_stored_difficulty(b) for b in df["budget"]]
    for c in ("correct", "majority_correct", "oracle_correct"):
        df[c] = df[c].astype("float64")
    return df.sort_values(["run_id", "problem_index"], ignore_index=True)


def _stored_difficulty(budget: dict[str, Any]) -> float:
    policy = budget.get("policy") if isinstance(budget, dict) else None
    if isinstance(policy, dict) and policy.get("difficulty") is not None:
        return float(policy["difficulty"])
    return math.nan


def _nodes_frame(conn: Any, ids: list[str], *, leaves_only: bool, text: bool) -> pd.DataFrame:
    from ttc.store.models import Node, Result

    base = [
        Result.run_id,
        Result.problem_id,
        Node.result_id,
        Node.node_id,
        Node.parent_id,
        Node.step,
        Node.n_tokens,
        Node.cum_logprob,
        Node.score,
        Node.finished,
        Node.answer,
        Node.selected,
        type_coerce(Node.extra, Text).label("extra"),  # raw JSON: parsed only where needed
    ]
    if text:
        base.append(Node.text)
    q = select(*base).join(Result, Node.result_id == Result.id).where(Result.run_id.in_(ids))
    if leaves_only:
        q = q.where(Node.finished.is_(True))
    rows = conn.execute(q).all()
    df = pd.DataFrame(rows, columns=list(q.selected_columns.keys()))
    # the accessor fills score / answer / probe from `extra` where the columns lack them
    raw = df.pop("extra")
    has = raw.notna() & (raw != "null")
    need = has & (df["score"].isna() | df["answer"].isna() | raw.str.contains('"probe"', na=False))
    probe = pd.Series(False, index=df.index)
    for i in np.flatnonzero(need.to_numpy()):
        row = df.iloc[i]
        got = node_fields(
            {"score": row["score"], "answer": row["answer"], "extra": json.loads(raw.iat[i])}
        )
        df.iat[i, df.columns.get_loc("score")] = got["score"]
        df.iat[i, df.columns.get_loc("answer")] = got["answer"]
        probe.iat[i] = got["probe"]
    df["probe"] = probe
    df["score"] = pd.to_numeric(df["score"], errors="coerce").astype("float64")
    return df.sort_values(["run_id", "problem_id", "node_id"], ignore_index=True)


def _calls_frame(conn: Any, ids: list[str]) -> pd.DataFrame:
    from ttc.store.models import Call, Result

    cols = [c for c in Call.__table__.columns if c.key != "id"]
    q = (
        select(Result.run_id, Result.problem_id, *cols)
        .join(Result, Call.result_id == Result.id)
        .where(Result.run_id.in_(ids))
    )
    rows = conn.execute(q).all()
    return pd.DataFrame(rows, columns=["run_id", "problem_id", *(c.key for c in cols)])


def _grade(tables: Tables) -> None:
    """Grade every sample against its problem's reference with the run's task (cached per
    distinct answer), and key it for voting with the task's normalisation."""
    nodes, results = tables.nodes, tables.results
    if nodes.empty:
        nodes["correct"] = pd.Series(dtype="float64")
        nodes["vote"] = pd.Series(dtype="object")
        return
    ref = results.set_index("result_id")["reference"]
    nodes["reference"] = nodes["result_id"].map(ref)
    task_of = tables.runs.set_index("id")["task"]
    cfg_of = {r["id"]: r for r in tables.runs.to_dict("records")}
    graders: dict[str, Any] = {}
    for run_id in nodes["run_id"].unique():
        name = str(task_of[run_id])
        if name not in graders:
            graders[name] = _task_for(name, cfg_of[run_id], tables.notes)
    correct = []
    votes = []
    cache: dict[tuple[str, str | None, str | None], tuple[float, str | None]] = {}
    for run_id, reference, answer in zip(
        nodes["run_id"], nodes["reference"], nodes["answer"], strict=True
    ):
        name = str(task_of[run_id])
        # missing values come back from pandas as NaN, not None
        reference = reference if isinstance(reference, str) else None
        answer = answer if isinstance(answer, str) else None
        key = (name, reference, answer)
        hit = cache.get(key)
        if hit is None:
            hit = _grade_one(graders[name], reference, answer)
            cache[key] = hit
        correct.append(hit[0])
        votes.append(hit[1])
    nodes["correct"] = pd.Series(correct, index=nodes.index, dtype="float64")
    nodes["vote"] = pd.Series(votes, index=nodes.index, dtype="object")


def _task_for(name: str, run: dict[str, Any], notes: list[str]) -> Any:
    from ttc.config import instantiate_config
    from ttc.registry import get_registry

    cfg = dict((run.get("config") or {}).get("task") or {"name": name})
    try:
        reg = get_registry().get("task", name)
        return reg.cls(instantiate_config(reg.config_cls, cfg, "task"))
    except Exception as exc:  # any plugin failure: fall back to exact matching
        notes.append(
            f"task '{name}' could not be built for grading ({exc}); "
            "samples are graded by exact match"
        )
        return None


def _grade_one(task: Any, reference: str | None, answer: str | None) -> tuple[float, str | None]:
    if answer is None:
        return (math.nan if reference is None else 0.0), None
    if task is None:
        vote = answer.strip()
        ok = math.nan if reference is None else float(vote == str(reference).strip())
        return ok, vote
    from ttc.types import Problem

    vote = task.normalize(answer)
    if reference is None:
        return math.nan, vote
    verdict = task.is_correct(answer, Problem(id="graded", reference=reference))
    return (math.nan if verdict is None else float(bool(verdict))), vote
