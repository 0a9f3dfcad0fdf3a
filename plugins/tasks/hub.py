"""Benchmark tasks: gsm8k, math500, aime24, amc23 (from the hub, through `datasets`), and
`jsonl`.

Each benchmark loads its hub copy by default, or a local JSON Lines file in the hub's
field layout with `task.data_files=path.jsonl` (the way to run offline). `jsonl` reads any
user file with a field mapping (`question_field`, `answer_field`, `id_field`).

Loading from the hub first checks in a few seconds that the hub answers: `datasets`
itself retries an unreachable host for about half a minute before it fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

from ttc.errors import ConfigError, DataError
from ttc.plugins.tasks.base import Item, PromptedTask, PromptedTaskConfig
from ttc.plugins.tasks.few_shot import Shot, final_line

HUB_PROBE_TIMEOUT_S = 5.0
_OFFLINE_HINT = "pass task.data_files=<local jsonl> (or set HF_HUB_OFFLINE=1 to use a cached copy)"


@dataclass
class HubTaskConfig(PromptedTaskConfig):
    path: str = ""
    """Hub dataset id (each task sets its own default)."""
    subset: str | None = None
    """Hub config name (e.g. `main` for openai/gsm8k)."""
    split: str = "test"
    data_files: str | None = None
    """A local JSON Lines file in the hub's field layout; used instead of the hub."""
    few_shot_split: str | None = None
    """Hub split the `few_shot` solved examples come from (None: the task has none)."""
    few_shot_files: str | None = None
    """A local JSON Lines file of solved examples in the same layout (instead of the
    hub split); a row's `solution` field is its worked solution when it has one."""


@dataclass
class Gsm8kTaskConfig(HubTaskConfig):
    path: str = "openai/gsm8k"
    subset: str | None = "main"
    few_shot_split: str | None = "train"


@dataclass
class Math500TaskConfig(HubTaskConfig):
    path: str = "HuggingFaceH4/MATH-500"


@dataclass
class Aime24TaskConfig(HubTaskConfig):
    path: str = "HuggingFaceH4/aime_2024"
    split: str = "train"


@dataclass
class Amc23TaskConfig(HubTaskConfig):
    path: str = "math-ai/amc23"


@dataclass
class JsonlTaskConfig(PromptedTaskConfig):
    data_files: str | None = None
    """The JSON Lines file to read (required)."""
    question_field: str = "question"
    answer_field: str | None = "answer"
    """Field holding the reference answer (None: ungraded problems)."""
    id_field: str | None = None
    """Field holding a unique problem id (None: the line number)."""
    few_shot_files: str | None = None
    """A JSON Lines file of solved examples with the same fields (for `few_shot`); a
    row's `solution` field is its worked solution when it has one."""


# -- loading ------------------------------------------------------------------------------


def _hub_reachable() -> bool:
    """Whether the hub endpoint accepts a TCP connection within HUB_PROBE_TIMEOUT_S.

    The probe runs in a daemon thread because name resolution has no timeout of its own.
    """
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    host, port = (
        url.hostname or "huggingface.co",
        url.port or (443 if url.scheme == "https" else 80),
    )
    ok: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_TIMEOUT_S).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True, name="ttc-hub-probe")
    thread.start()
    thread.join(HUB_PROBE_TIMEOUT_S)
    return bool(ok)


def _offline() -> bool:
    return any(
        os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
        for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def load_jsonl_rows(data_files: str) -> list[dict[str, Any]]:
    """Rows of a local JSON Lines file, one JSON object a line (blank lines skipped).

    Read line by line rather than through `datasets`' loader, which fills a field that a
    row lacks with None (a question without its answer would go silently ungraded) and
    reports a broken line without its number.
    """
    path = Path(data_files).expanduser()
    hint = "check task.data_files; give a path to a JSON Lines file, one problem a line"
    if path.is_dir():
        raise DataError(f"data file '{data_files}' is a directory, not a file", hint=hint)
    if not path.is_file():
        raise DataError(
            f"data file '{data_files}' does not exist "
            f"(relative paths are resolved against {Path.cwd()})",
            hint=hint,
        )
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(
            f"data file '{data_files}' is not text (not UTF-8 at byte {exc.start})",
            hint="task.data_files must be a JSON Lines file, one JSON object a line",
        ) from exc
    except OSError as exc:
        raise DataError(f"cannot read data file '{data_files}': {exc.strerror}", hint=hint) from exc
    rows: list[dict[str, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"data file '{data_files}', line {number}: not valid JSON ({exc.msg})",
                hint="each line must be one JSON object, e.g. "
                '{"question": "...", "answer": "..."} (CSV is not read: convert it)',
            ) from exc
        if not isinstance(row, dict):
            raise DataError(
                f"data file '{data_files}', line {number}: a JSON {type(row).__name__}, "
                "not an object",
                hint='each line must be one JSON object, e.g. {"question": "...", "answer": "..."}',
            )
        rows.append(row)
    if not rows:
        raise DataError(
            f"data file '{data_files}' is empty (no problems in it)",
            hint="task.data_files needs one JSON object a line",
        )
    return rows


@contextlib.contextmanager
def _quiet(datasets: Any) -> Iterator[None]:
    """Hide `datasets`' per-split progress bars (ttc shows its own progress), then restore
    whatever the caller had."""
    was_disabled = datasets.is_progress_bar_enabled() is False
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_disabled:
            datasets.enable_progress_bars()


def load_hub_rows(path: str, *, subset: str | None, split: str) -> list[dict[str, Any]]:
    """Rows of one split of a hub dataset; a clear `DataError` when it cannot be reached."""
    import datasets

    name = f"{path}" + (f" ({subset})" if subset else "") + f", split {split}"
    if not _offline() and not _hub_reachable():
        raise DataError(f"cannot reach the Hugging Face Hub to load {name}", hint=_OFFLINE_HINT)
    try:
        with _quiet(datasets):
            dataset = datasets.load_dataset(path, subset, split=split)
    except Exception as exc:  # connection, missing cache, unknown split or id
        hint = "pass task.data_files=<local jsonl>" if _offline() else _OFFLINE_HINT
        raise DataError(
            f"cannot load {name} from the hub: {type(exc).__name__}: {exc}", hint=hint
        ) from exc
    return list(dataset)


def _require(row: dict[str, Any], field: str | None, source: str, hint: str) -> Any:
    if field is None:
        return None
    if field not in row:
        raise DataError(
            f"{source} has no field '{field}' (fields: {', '.join(sorted(row)) or 'none'})",
            hint=hint,
        )
    return row[field]


MAX_ID_CHARS = 200
"""Longest problem id the store keeps (its column; PostgreSQL refuses longer ones)."""


def row_item(
    row: dict[str, Any],
    where: str,
    *,
    index: int,
    fields: tuple[str, str | None, str | None],
    hints: tuple[str, str, str],
) -> tuple[str, str, Any]:
    """(id, question, raw answer) of one row, refusing null or empty questions, null
    answers (unless no answer field is configured) and null or over-long ids."""
    question_field, answer_field, id_field = fields
    question = _require(row, question_field, where, hints[0])
    answer = _require(row, answer_field, where, hints[1])
    raw_id = _require(row, id_field, where, hints[2])
    if question is None or (isinstance(question, str) and not question.strip()):
        raise DataError(
            f"{where}: the question field '{question_field}' is "
            f"{'null' if question is None else 'empty'}",
            hint="give every row a question (or remove the row)",
        )
    if answer_field is not None and answer is None:
        raise DataError(
            f"{where}: the answer field '{answer_field}' is null, so the problem could not "
            "be graded",
            hint="give every row an answer, or pass task.answer_field=null for a file of "
            "ungraded problems",
        )
    if id_field is not None and raw_id is None:
        raise DataError(f"{where}: the id field '{id_field}' is null", hint=hints[2])
    problem_id = str(raw_id if raw_id is not None else index)
    if len(problem_id) > MAX_ID_CHARS:
        raise DataError(
            f"{where}: the problem id is {len(problem_id)} characters long; the store keeps "
            f"at most {MAX_ID_CHARS}",
            hint="use shorter ids (or task.id_field=null to number the rows)",
        )
    return problem_id, str(question), answer


def _as_text(value: Any) -> str | None:
    """A reference as text; whole floats lose their `.0` (amc23 stores 27.0 for 27)."""
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


# -- tasks --------------------------------------------------------------------------------


class HubTask(PromptedTask):
    """A benchmark in a fixed field layout, from the hub or a local copy."""

    config: HubTaskConfig
    question_field: ClassVar[str] = "problem"
    answer_field: ClassVar[str] = "answer"
    id_field: ClassVar[str | None] = None
    metadata_fields: ClassVar[tuple[str, ...]] = ()
    """Fields copied into `Problem.metadata` when a row has them."""

    def rows(self) -> tuple[list[dict[str, Any]], str]:
        if self.config.data_files:
            files = self.config.data_files
            return load_jsonl_rows(files), f"data file '{files}'"
        return (
            load_hub_rows(self.config.path, subset=self.config.subset, split=self.config.split),
            f"hub dataset '{self.config.path}'",
        )

    def items(self) -> list[Item]:
        rows, source = self.rows()
        hint = (
            f"this data is not in the {self.name} layout; use task=jsonl with "
            "task.question_field=... task.answer_field=... for other files"
        )
        items = []
        for index, row in enumerate(rows):
            where = f"{source}, row {index}"
            problem_id, question, answer = row_item(
                row,
                where,
                index=index,
                fields=(self.question_field, self.answer_field, self.id_field),
                hints=(hint, hint, hint),
            )
            items.append(
                Item(
                    id=problem_id,
                    question=question,
                    reference=self.reference_in(answer, where),
                    metadata=self.metadata_of(row),
                )
            )
        return items

    def reference_in(self, answer: Any, where: str) -> str | None:
        """The reference answer, from the answer field's value in row `where`."""
        return _as_text(answer)

    def metadata_of(self, row: dict[str, Any]) -> dict[str, Any]:
        return {f: row[f] for f in self.metadata_fields if f in row}

    def shots(self, item: Item, k: int, evaluated: frozenset[str]) -> list[Shot]:
        c = self.config
        if c.few_shot_files:
            rows, source = load_jsonl_rows(c.few_shot_files), f"data file '{c.few_shot_files}'"
        elif c.few_shot_split:
            rows = load_hub_rows(c.path, subset=c.subset, split=c.few_shot_split)
            source = f"hub dataset '{c.path}', split {c.few_shot_split}"
        else:
            return super().shots(item, k, evaluated)
        fields = (self.question_field, self.answer_field, None)
        return _draw_shots(self, rows, source, k, evaluated, fields=fields)

    def solution_of(self, row: dict[str, Any], reference: str) -> str:
        """A solved example's worked solution, ending in the answer format's final line."""
        return row_solution(row, reference, self.config.answer_format)


class Gsm8kTask(HubTask):
    """Grade-school math word problems; the reference is what follows `####`."""

    name = "gsm8k"
    question_field = "question"

    def reference_in(self, answer: Any, where: str) -> str | None:
        text = str(answer)
        if "####" not in text:
            raise DataError(
                f"{where}: the answer has no '#### <number>' line",
                hint="gsm8k answers end with '#### <final answer>'; for other files use task=jsonl",
            )
        return text.rsplit("####", 1)[1].strip().replace(",", "")

    def metadata_of(self, row: dict[str, Any]) -> dict[str, Any]:
        # The worked solution (with <<calculator>> annotations) helps inspecting runs.
        return {"solution": row.get("answer")}

    def solution_of(self, row: dict[str, Any], reference: str) -> str:
        # The reasoning before '####', without the <<48/2=24>> calculator annotations.
        reasoning = re.sub(r"<<[^>]*>>", "", str(row["answer"]).rsplit("####", 1)[0]).strip()
        return f"{reasoning}\n{final_line(reference, self.config.answer_format)}"


class Math500Task(HubTask):
    """The 500-problem MATH subset of "Let's Verify Step by Step"."""

    name = "math500"
    id_field = "unique_id"
    metadata_fields = ("subject", "level", "solution")


class Aime24Task(HubTask):
    """AIME 2024 (30 problems, integer answers 0-999)."""

    name = "aime24"
    id_field = "id"
    metadata_fields = ("solution", "url")


class Amc23Task(HubTask):
    """AMC 2023 (40 problems, numeric answers)."""

    name = "amc23"
    id_field = "id"
    metadata_fields = ("url",)


class JsonlTask(PromptedTask):
    """Any JSON Lines file, with the question, answer and id fields named in the config."""

    name = "jsonl"
    config: JsonlTaskConfig

    def items(self) -> list[Item]:
        files = self.config.data_files
        if not files:
            raise ConfigError(
                "task=jsonl needs a file to read",
                key="task.data_files",
                hint="pass task.data_files=path/to/problems.jsonl",
            )
        rows = load_jsonl_rows(files)
        items = []
        for index, row in enumerate(rows):
            where = f"data file '{files}', row {index}"
            c = self.config
            problem_id, question, answer = row_item(
                row,
                where,
                index=index,
                fields=(c.question_field, c.answer_field, c.id_field),
                hints=(_field_hint("question"), _field_hint("answer"), _field_hint("id")),
            )
            items.append(
                Item(
                    id=problem_id,
                    question=question,
                    reference=_as_text(answer),
                )
            )
        return items

    def shots(self, item: Item, k: int, evaluated: frozenset[str]) -> list[Shot]:
        c = self.config
        if not c.few_shot_files or c.answer_field is None:
            raise ConfigError(
                f"task.few_shot={k} needs a file of solved examples with answers",
                key="task.few_shot_files",
                hint="pass task.few_shot_files=examples.jsonl (same fields as data_files)",
            )
        rows = load_jsonl_rows(c.few_shot_files)
        fields = (c.question_field, c.answer_field, None)
        return _draw_shots(
            self, rows, f"data file '{c.few_shot_files}'", k, evaluated, fields=fields
        )

    def solution_of(self, row: dict[str, Any], reference: str) -> str:
        return row_solution(row, reference, self.config.answer_format)


def row_solution(row: dict[str, Any], reference: str, answer_format: str) -> str:
    """A row's `solution` field (when it has one) ending in the answer format's final
    line; just that line for a row without a worked solution."""
    answer_line = final_line(reference, answer_format)
    solution = row.get("solution")
    if isinstance(solution, str) and solution.strip():
        if answer_format == "boxed" and "\\boxed" in solution:
            return solution.strip()
        return f"{solution.strip()}\n{answer_line}"
    return answer_line


def _draw_shots(
    task: HubTask | JsonlTask,
    rows: list[dict[str, Any]],
    source: str,
    k: int,
    evaluated: frozenset[str],
    *,
    fields: tuple[str, str | None, None],
) -> list[Shot]:
    """`k` rows drawn (seeded by `task.seed`) among those whose question is not being
    evaluated, as solved examples; the same ones for every problem, so prompts share a
    prefix."""
    key = (source, k, evaluated)
    cache: dict[Any, list[Shot]] = task.__dict__.setdefault("_shot_cache", {})
    if key in cache:
        return cache[key]
    hint = "check task.few_shot_files (or the hub split): it must have the task's fields"
    pool = []
    for index, row in enumerate(rows):
        _, question, answer = row_item(
            row, f"{source}, row {index}", index=index, fields=fields, hints=(hint, hint, hint)
        )
        if question not in evaluated:
            reference = task.reference_in(answer, source) if isinstance(task, HubTask) else None
            pool.append(Shot(question, task.solution_of(row, reference or _as_text(answer) or "")))
    if len(pool) < k:
        raise ConfigError(
            f"task.few_shot={k}: {source} has only {len(pool)} solved examples that are not "
            "being evaluated",
            key="task.few_shot",
            value=k,
            hint="use fewer examples (task.few_shot) or a larger file of examples",
        )
    shots = random.Random(f"few-shot:{task.config.seed}").sample(pool, k)
    cache[key] = shots
    return shots


def _field_hint(kind: str) -> str:
    extra = f" (or task.{kind}_field=null)" if kind in {"answer", "id"} else ""
    return f"set task.{kind}_field=<the field that holds the {kind}>{extra}"
