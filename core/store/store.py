"""The run store: opening (with migrations), writing runs and problems, reading them back."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Integer,
    bindparam,
    case,
    cast,
    create_engine,
    delete,
    event,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from ttc.errors import AmbiguousRunIdError, RunNotFoundError, StoreError
from ttc.store.liveness import is_live, owner_id
from ttc.store.models import Call, Node, Result, Run
from ttc.store.secrets import mask_config, mask_url, scrub
from ttc.types import Branch, CallRecord, ProblemResult

TOTAL_KEYS = (
    "problems",
    "errors",
    "accuracy",
    "pass_at_1",
    "majority",
    "oracle_pass_at_n",
    "samples",
    "tokens",
    "prefill_tokens",
    "cached_prompt_tokens",
    "reward_tokens",
    "flops",
    "wall_s",
    "mean_latency_s",
    "refused_calls",
)
"""Run totals: counts, mean accuracies over problems, summed spending, the run's wall time
(from the first problem's start to the last one's end) and the mean latency of a problem
(problems overlap, so their latencies add up to more than the wall time)."""
_MEANS = ("accuracy", "pass_at_1", "majority", "oracle_pass_at_n")


def _now() -> datetime:
    return datetime.now(UTC)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cur = dbapi_connection.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute(f"PRAGMA busy_timeout={_busy_timeout_ms()}")
    cur.close()


SQLITE_SYNCHRONOUS = ("full", "normal")


def make_engine(
    url: str,
    *,
    echo: bool = False,
    create: bool = True,
    pool_size: int | None = None,
    sqlite_synchronous: str = "full",
) -> Engine:
    """An engine for the store at `url`; `create=False`: a SQLite file must already exist
    (read commands never create an empty store from a mistyped path). `pool_size`: the
    connections a server database (PostgreSQL) keeps open for this process, with as many
    again allowed in bursts; each worker of a Ray run sizes it to its own writers, so that
    many workers stay under the server's `max_connections`.

    `sqlite_synchronous` (SQLite only): `full` syncs the database file at every commit (a
    committed problem survives a power loss); `normal`, SQLite's documented trade for WAL
    mode, syncs only at checkpoints: a commit is then a write to the OS, never lost when
    the process is killed, never half-applied, but the last commits before a power loss
    or an OS crash may roll back."""
    if sqlite_synchronous not in SQLITE_SYNCHRONOUS:
        raise ValueError(f"sqlite_synchronous={sqlite_synchronous!r}: not in {SQLITE_SYNCHRONOUS}")
    options: dict[str, Any] = {}
    if pool_size is not None and not url.startswith("sqlite"):
        options = {"pool_size": pool_size, "max_overflow": pool_size, "pool_pre_ping": True}
    try:
        engine = create_engine(url, echo=echo, **options)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise StoreError(
            f"cannot open the store at '{mask_url(url)}': {scrub(str(exc))}",
            hint="store.url takes a SQLAlchemy URL, e.g. sqlite:///runs/ttc.db or "
            "postgresql+psycopg://user@host/db (pip install 'ttc[postgres]')",
        ) from exc
    if engine.dialect.name == "sqlite":
        db = engine.url.database
        if db and db != ":memory:" and not db.startswith("file:"):
            prepare_sqlite_path(Path(db), create=create)
        event.listen(engine, "connect", _sqlite_pragmas)
        if sqlite_synchronous != "full":
            event.listen(engine, "connect", _synchronous(sqlite_synchronous))
        event.listen(engine, "begin", _sqlite_begin)
    return engine


def _synchronous(level: str) -> Any:
    def pragma(dbapi_connection: Any, _record: Any) -> None:
        cur = dbapi_connection.cursor()
        cur.execute(f"PRAGMA synchronous={level.upper()}")
        cur.close()

    return pragma


def _sqlite_begin(conn: Any) -> None:
    """Make a migration one transaction on SQLite.

    pysqlite opens transactions itself, but not before DDL: a migration killed half-way
    left tables without their revision, a store no later process could open. For a
    migration we take the transaction over (SQLAlchemy's recipe: no driver transactions,
    our own BEGIN), IMMEDIATE so that two processes opening a new store at once wait for
    each other's lock instead of both reading "no schema yet". Other work keeps pysqlite's
    transactions, which begin at the first write (a read-then-write transaction begun at
    its read would fail on a busy store instead of waiting).
    """
    if conn.get_execution_options().get("ttc_migrating", False):
        conn.connection.dbapi_connection.isolation_level = None
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", "ttc.store:migrations")
    # Alembic's config is a ConfigParser: a literal `%` (a percent-encoded password, a file
    # called `100%.db`) must be doubled, or reading the option back interpolates and fails.
    url = engine.url.render_as_string(hide_password=False).replace("%", "%%")
    cfg.set_main_option("sqlalchemy.url", url)
    return cfg


@contextlib.contextmanager
def _migrating(engine: Engine) -> Iterator[Connection]:
    """A connection whose transaction holds a whole migration (see `_sqlite_begin`)."""
    with engine.connect().execution_options(ttc_migrating=True) as conn:
        try:
            yield conn
        finally:
            if engine.dialect.name == "sqlite":  # back to pysqlite's own transactions
                conn.connection.dbapi_connection.isolation_level = ""  # type: ignore[union-attr]


def upgrade(engine: Engine, revision: str = "head", *, attempts: int = 5) -> None:
    """Bring the store's schema to `revision` (Alembic).

    The whole upgrade is one transaction (on SQLite too, see `_sqlite_pragmas`), so a
    process killed during it leaves the store as it was. Several processes may open a new
    store at once (the jobs of a sweep): one migrates, the others wait for its lock; one
    that still finds tables another is creating waits and tries again.
    """
    from alembic import command

    cfg = alembic_config(engine)
    for attempt in range(attempts):
        try:
            with _migrating(engine) as conn, conn.begin():
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
            return
        except DBAPIError as exc:
            racing = "already exists" in str(exc.orig) or "locked" in str(exc.orig)
            if racing and attempt + 1 < attempts:
                time.sleep(0.2 * (attempt + 1))
                continue
            raise store_error(engine.url, exc) from exc
        except Exception as exc:  # alembic's CommandError: an unknown revision
            raise migration_error(engine, revision, exc) from exc


# -- open/connect errors as one line --------------------------------------------------------

SQLITE_BUSY_TIMEOUT_MS = 30_000
"""How long SQLite waits for another writer's lock (TTC_SQLITE_BUSY_TIMEOUT_MS overrides)."""


def _busy_timeout_ms() -> int:
    raw = os.environ.get("TTC_SQLITE_BUSY_TIMEOUT_MS", "")
    return int(raw) if raw.strip().isdigit() else SQLITE_BUSY_TIMEOUT_MS


def prepare_sqlite_path(db: Path, *, create: bool) -> None:
    """Check a SQLite store's path before SQLite sees it (its own errors name no file)."""
    if db.is_dir():
        raise StoreError(
            f"the store path '{db}' is a directory, not a SQLite file",
            hint="give a file path, e.g. --store sqlite:///runs/ttc.db (store.url=...)",
        )
    for parent in db.parents:
        if parent.exists():
            if not parent.is_dir():
                raise StoreError(
                    f"cannot create the store '{db}': '{parent}' is a file, not a folder",
                    hint="choose another store path (store.url or --store)",
                )
            break
    if not create:
        if not db.is_file():
            raise StoreError(
                f"no store at '{db}' (the file does not exist)",
                hint="check --store / TTC_STORE_URL (relative paths start at "
                f"{Path.cwd()}); `ttc run` creates a store",
            )
        return
    try:
        db.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create the folder of the store '{db}': {exc.strerror}",
            hint="choose a writable store path (store.url or --store)",
        ) from exc


def store_error(url: Any, exc: BaseException) -> StoreError:
    """One line for a database error met while opening or reading a store (the URL is
    shown with its password hidden)."""
    from sqlalchemy.engine import make_url

    try:
        shown_url = make_url(str(url)) if not hasattr(url, "render_as_string") else url
        shown = shown_url.render_as_string(hide_password=True)
        db = shown_url.database if shown_url.get_backend_name() == "sqlite" else None
    except Exception:
        shown, db = "<store.url>", None
    orig = getattr(exc, "orig", None) or exc
    text = scrub((str(orig).strip().splitlines() or [type(orig).__name__])[0])
    low = text.lower()
    where = f"'{db}'" if db else f"at {shown}"
    if "not a database" in low or "malformed" in low or "disk image" in low:
        return StoreError(
            f"the store file {where} is not a SQLite database or is damaged ({text})",
            hint="point --store / store.url at a ttc store; the file was left untouched "
            "(move it away to start a new store there)",
        )
    if "locked" in low or "busy" in low:
        return StoreError(
            f"the store {where} is locked by another program ({text}) for longer than "
            f"the busy timeout ({_busy_timeout_ms()} ms)",
            hint="wait for the other program to finish, or raise TTC_SQLITE_BUSY_TIMEOUT_MS",
        )
    if "readonly" in low or "read-only" in low:
        return StoreError(
            f"the store {where} is read-only ({text})",
            hint="make the file writable, or choose another store.url",
        )
    if "value too long" in low or "too long" in low:
        return StoreError(
            f"a value is longer than its column in the store {where} ({text})",
            hint="shorten run.name (at most 200 characters) or the task's problem ids",
        )
    if db is not None:
        return StoreError(
            f"cannot open the store {where}: {text}",
            hint="check store.url (or --store): a SQLite file in a writable folder",
        )
    return StoreError(
        f"cannot use the store at {shown}: {text}",
        hint="check store.url (or --store / TTC_STORE_URL) and that the database server "
        "is reachable",
    )


def migration_error(engine: Engine, revision: str, exc: BaseException) -> StoreError:
    """One line for a migration that Alembic refused (usually an unknown revision)."""
    from alembic.script import ScriptDirectory

    if isinstance(exc, StoreError):
        return exc
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    try:
        script = ScriptDirectory.from_config(alembic_config(engine))
        known = [r.revision for r in script.walk_revisions()]
    except Exception:
        known = []
    valid = ", ".join(["head", "base", *reversed(known)])
    return StoreError(
        f"cannot migrate the store to revision '{revision}': {text}",
        hint=f"valid revisions: {valid} (`ttc db upgrade` goes to head)",
    )


@contextlib.contextmanager
def store_errors(url: Any) -> Iterator[None]:
    """Turn database errors inside the block into a one-line `StoreError`."""
    try:
        yield
    except DBAPIError as exc:
        raise store_error(url, exc) from exc


def open_store(url: str, *, create: bool = True, echo: bool = False) -> Store:
    """Open (and migrate) the store at `url`, any database error as one line;
    `create=False` for commands that only read: a missing SQLite file is an error."""
    if not create:
        make_engine(url, create=False).dispose()
    with store_errors(url):
        return Store(url, echo=echo)


def _new_run_id() -> str:
    """Twelve hex digits with at least one letter other than `e`: an id of digits only,
    or digits around one `e`, would be read back as a number by `resume=<id>`."""
    while True:
        run_id = uuid.uuid4().hex[:12]
        if any(c in "abcdf" for c in run_id):
            return run_id


class Store:
    """A run store at a SQLAlchemy URL. Opening it applies pending migrations."""

    def __init__(
        self,
        url: str,
        *,
        echo: bool = False,
        migrate: bool = True,
        pool_size: int | None = None,
        sqlite_synchronous: str = "full",
    ) -> None:
        self.url = url
        self.engine = make_engine(
            url, echo=echo, pool_size=pool_size, sqlite_synchronous=sqlite_synchronous
        )
        if migrate:
            upgrade(self.engine)
        self._session = sessionmaker(self.engine, expire_on_commit=False)

    def session(self) -> Session:
        return self._session()

    def close(self) -> None:
        self.engine.dispose()

    # -- runs -------------------------------------------------------------------------
    def create_run(
        self,
        *,
        config: dict[str, Any],
        strategy: str,
        backend: str,
        model: str,
        task: str,
        reward: str,
        versions: dict[str, Any],
        hardware: dict[str, Any],
        name: str | None = None,
        sweep: str | None = None,
        n_problems: int = 0,
        fingerprint: str | None = None,
    ) -> str:
        run_id = _new_run_id()
        now = _now()
        with self.session() as s, s.begin():
            s.add(
                Run(
                    id=run_id,
                    name=name,
                    status="running",
                    created_at=now,
                    updated_at=now,
                    finished_at=None,
                    strategy=strategy,
                    backend=backend,
                    model=model,
                    task=task,
                    reward=reward,
                    sweep=sweep,
                    n_problems=n_problems,
                    config=config,
                    versions=versions,
                    hardware=hardware,
                    totals=None,
                    heartbeat_at=now,
                    owner=owner_id(),
                    fingerprint=fingerprint,
                )
            )
        return run_id

    def claim(self, run_id: str, *, force: bool = False) -> dict[str, Any]:
        """Take over a run to continue it: mark it `running` by this process.

        Refused (`StoreError`) while another process is still running it (a fresh
        heartbeat), unless `force`. Two processes claiming at once: one wins."""
        with self.session() as s, s.begin():
            run = self._run(s, run_id)
            seen_owner = run.owner
            if not force:
                _refuse_if_live(run)
            now = _now()
            claimed = s.execute(
                update(Run)
                .where(
                    Run.id == run.id,
                    Run.owner.is_(None) if seen_owner is None else Run.owner == seen_owner,
                )
                .values(
                    status="running",
                    owner=owner_id(),
                    heartbeat_at=now,
                    updated_at=now,
                    error=None,
                    finished_at=None,
                )
                .execution_options(synchronize_session=False)
            )
            if getattr(claimed, "rowcount", 1) != 1:
                raise StoreError(
                    f"run {run.id} was just taken over by another process",
                    hint="see `ttc runs list`",
                )
        return self.get_run(run_id)

    def refuse_if_live(self, run_id: str, *, force: bool = False) -> None:
        """Raise `StoreError` when another process is still running the run."""
        if not force:
            with self.session() as s:
                _refuse_if_live(self._run(s, run_id))

    def heartbeat(self, run_id: str) -> None:
        """A sign of life of the process that owns the run."""
        with self.session() as s, s.begin():
            s.execute(
                update(Run)
                .where(Run.id == run_id, Run.owner == owner_id())
                .values(heartbeat_at=_now())
                .execution_options(synchronize_session=False)
            )

    def _run(self, s: Session, run_id: str) -> Run:
        run = s.get(Run, run_id)
        if run is None:
            # allow unique prefixes, like git
            rows = s.scalars(
                select(Run).where(Run.id.startswith(run_id, autoescape=True)).limit(6)
            ).all()
            if not run_id or not rows:
                raise RunNotFoundError(run_id)
            if len(rows) > 1:
                raise AmbiguousRunIdError(run_id, [r.id for r in rows])
            run = rows[0]
        return run

    def resolve_id(self, run_id: str) -> str:
        with self.session() as s:
            return self._run(s, run_id).id

    def get_run(self, run_id: str) -> dict[str, Any]:
        """A run as plain data; a `running` run nobody runs any more shows as `stale`."""
        with self.session() as s:
            return _run_row(self._run(s, run_id))

    def list_runs(self, *, limit: int = 50, status: str | None = None) -> list[dict[str, Any]]:
        with self.session() as s:
            q = select(Run).order_by(Run.created_at.desc())
            if status in ("running", "stale"):  # stored as running; told apart by liveness
                rows = [_run_row(r) for r in s.scalars(q.where(Run.status == "running"))]
                return [r for r in rows if r["status"] == status][:limit]
            if status:
                q = q.where(Run.status == status)
            return [_run_row(r) for r in s.scalars(q.limit(limit))]

    def set_status(self, run_id: str, status: str, *, error: str | None = None) -> None:
        with self.session() as s, s.begin():
            run = self._run(s, run_id)
            run.status = status
            run.updated_at = _now()
            run.error = error
            if status in ("finished", "failed"):
                run.finished_at = _now()

    def finish_run(self, run_id: str, status: str, *, error: str | None = None) -> dict[str, Any]:
        """Store the run's status and its totals (computed from the stored problems)."""
        totals = self.totals(run_id)
        with self.session() as s, s.begin():
            run = self._run(s, run_id)
            run.totals = totals
            run.status = status
            run.error = error
            run.updated_at = run.finished_at = _now()
        return totals

    # -- problems ---------------------------------------------------------------------
    def finished_problem_ids(self, run_id: str) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Result.problem_id).where(Result.run_id == run_id)))

    def problem_statuses(self, run_id: str) -> dict[str, str]:
        """Stored problem id -> its status (`ok`, `error`)."""
        with self.session() as s:
            q = select(Result.problem_id, Result.status).where(Result.run_id == run_id)
            return {pid: status for pid, status in s.execute(q)}

    def record_problem(self, run_id: str, r: ProblemResult, *, replace_error: bool = False) -> bool:
        """Write one finished problem with its tree and calls in one transaction.

        Returns False (and writes nothing) when the problem is already stored, unless
        `replace_error` and the stored row is an error: then the new result replaces it in
        the same transaction (a retried problem is never missing, never twice)."""
        return self.record_problems(run_id, [r], replace_error=replace_error)[0]

    def record_problems(
        self, run_id: str, results: Sequence[ProblemResult], *, replace_error: bool = False
    ) -> list[bool]:
        """Write finished problems with their trees and calls, all in one transaction
        (one commit, one sync of the database file, for many problems: group commit).

        Per problem, as `record_problem`: True when written, False when it was already
        stored (or appears earlier in `results`). When the batch meets a problem that
        another writer stored meanwhile (a unique-key clash), the batch is rolled back and
        its problems are written one transaction each, so none is lost or stored twice.
        Any other database error rolls the whole batch back and is raised: nothing of it
        is written."""
        if not results:
            return []
        try:
            with self.engine.begin() as conn:
                return _insert_problems(conn, run_id, results, replace_error=replace_error)
        except IntegrityError:
            if len(results) == 1:
                return [False]
        return [self.record_problem(run_id, r, replace_error=replace_error) for r in results]

    def totals(self, run_id: str) -> dict[str, Any]:
        R = Result
        with self.session() as s:
            run_id = self._run(s, run_id).id
            row = s.execute(
                select(
                    func.count(R.id),
                    func.sum(case((R.status == "error", 1), else_=0)),
                    func.avg(_as_rate(R.correct)),
                    func.avg(R.pass_at_1),
                    func.avg(_as_rate(R.majority_correct)),
                    func.avg(_as_rate(R.oracle_correct)),
                    func.sum(R.samples),
                    func.sum(R.tokens),
                    func.sum(R.prefill_tokens),
                    func.sum(R.cached_prompt_tokens),
                    func.sum(R.reward_tokens),
                    func.sum(R.flops),
                    func.avg(R.seconds),  # placeholder of wall_s, computed below
                    func.avg(R.seconds),
                    func.sum(R.refused_calls),
                ).where(R.run_id == run_id)
            ).one()
            spans = s.execute(select(R.created_at, R.seconds).where(R.run_id == run_id)).all()
        totals: dict[str, Any] = {}
        for k, v in zip(TOTAL_KEYS, row, strict=True):
            if k == "wall_s":
                totals[k] = round(_wall_seconds(spans), 6)
            elif k in _MEANS:
                totals[k] = None if v is None else round(float(v), 6)
            elif k in ("flops", "mean_latency_s"):
                totals[k] = round(float(v or 0.0), 6)
            else:
                totals[k] = int(v or 0)
        return totals

    def results(self, run_id: str) -> list[dict[str, Any]]:
        with self.session() as s:
            run_id = self._run(s, run_id).id
            q = select(Result).where(Result.run_id == run_id).order_by(Result.problem_index)
            return [_row(r) for r in s.scalars(q)]

    def nodes(self, run_id: str, problem_id: str) -> list[dict[str, Any]]:
        with self.session() as s:
            run_id = self._run(s, run_id).id
            q = (
                select(Node)
                .join(Result, Node.result_id == Result.id)
                .where(Result.run_id == run_id, Result.problem_id == problem_id)
                .order_by(Node.node_id)
            )
            return [_row(n) for n in s.scalars(q)]

    def calls(self, run_id: str, problem_id: str | None = None) -> list[dict[str, Any]]:
        with self.session() as s:
            run_id = self._run(s, run_id).id
            q = (
                select(Call, Result.problem_id)
                .join(Result, Call.result_id == Result.id)
                .where(Result.run_id == run_id)
                .order_by(Result.problem_index, Call.seq)
            )
            if problem_id is not None:
                q = q.where(Result.problem_id == problem_id)
            return [{**_row(c), "problem_id": pid} for c, pid in s.execute(q)]

    # -- export -----------------------------------------------------------------------
    def export(self, run_id: str, out: IO[str], *, fmt: str = "jsonl") -> int:
        """Write one row per problem (JSON Lines or CSV); return the row count."""
        rows = self.results(run_id)
        if fmt == "jsonl":
            for row in rows:
                out.write(json.dumps(row, default=str) + "\n")
        elif fmt == "csv":
            if rows:
                writer = csv.DictWriter(out, fieldnames=list(rows[0]))
                writer.writeheader()
                for row in rows:
                    writer.writerow(
                        {
                            k: json.dumps(v) if isinstance(v, dict | list) else v
                            for k, v in row.items()
                        }
                    )
        else:
            raise StoreError(f"unknown export format '{fmt}'; valid choices: jsonl, csv")
        return len(rows)


def _wall_seconds(spans: Any) -> float:
    """Seconds from the first problem's start to the last one's end (a problem is stored
    when it ends, `seconds` after it started)."""
    if not spans:
        return 0.0
    ends = [end for end, _ in spans]
    starts = [end.timestamp() - float(seconds or 0.0) for end, seconds in spans]
    return max(0.0, max(e.timestamp() for e in ends) - min(starts))


def _as_rate(column: Any) -> Any:
    """A nullable boolean as 0.0/1.0 for AVG (PostgreSQL casts bool only to integer)."""
    return cast(cast(column, Integer), Float)


def _row(obj: Any) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns}


def _run_row(run: Run) -> dict[str, Any]:
    row = _row(run)
    row["config"] = mask_config(row["config"])  # runs stored before masking existed
    if run.status == "running" and not is_live(run.owner, run.heartbeat_at):
        row["status"] = "stale"  # marked running, but its process is gone
    return row


def _refuse_if_live(run: Run) -> None:
    if run.status == "running" and is_live(run.owner, run.heartbeat_at):
        raise StoreError(
            f"run {run.id} is still running (process {run.owner}, last heartbeat "
            f"{_ago(run.heartbeat_at)} ago); resuming it now would solve its problems twice",
            hint=f"wait for it or stop it; to take it over anyway: `ttc run resume={run.id} "
            "--force`",
        )


def _ago(when: datetime | None) -> str:
    if when is None:
        return "never"
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return f"{(_now() - when).total_seconds():.0f}s"


def _finite(x: float | None) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _jsonable(value: Any) -> Any:
    """Round-trip through JSON so that only plain data reaches the JSON columns."""
    return json.loads(json.dumps(value, default=str))


# Built once: statements reused with new parameters skip SQLAlchemy's construction and
# compile-cache lookups, most of a small transaction's cost.
_TOUCH_RUN = update(Run).where(Run.id == bindparam("run")).values(updated_at=bindparam("now"))
_STORED = select(Result.problem_id, Result.status).where(
    Result.run_id == bindparam("run"), Result.problem_id.in_(bindparam("ids", expanding=True))
)
_DELETE_ERRORS = delete(Result).where(
    Result.run_id == bindparam("run"),
    Result.problem_id.in_(bindparam("ids", expanding=True)),
    Result.status == "error",
)
_INSERT_RESULT, _INSERT_NODES, _INSERT_CALLS = insert(Result), insert(Node), insert(Call)


def _insert_problems(
    conn: Connection, run_id: str, results: Sequence[ProblemResult], *, replace_error: bool
) -> list[bool]:
    """The rows of `results` inserted through `conn` (inside its transaction).

    Core inserts, not the ORM's unit of work: the trees and calls of all problems are
    one multi-row INSERT per table, a small fraction of the ORM's cost per object (this
    runs once per served request)."""
    now = _now()
    # The run's row first: on SQLite this takes the write lock, so what the next query
    # reads stays true until the commit; a run that is not there is an error, not a clash.
    touched = conn.execute(_TOUCH_RUN, {"run": run_id, "now": now})
    if touched.rowcount == 0:
        raise RunNotFoundError(run_id)
    ids = list(dict.fromkeys(r.problem.id for r in results))
    stored: dict[str, str] = {}
    for chunk in range(0, len(ids), 500):  # bound the IN list
        rows = conn.execute(_STORED, {"run": run_id, "ids": ids[chunk : chunk + 500]})
        stored.update({pid: status for pid, status in rows})
    if replace_error:
        errors = [pid for pid, status in stored.items() if status == "error"]
        if errors:  # the nodes and calls go with them (ON DELETE CASCADE)
            conn.execute(_DELETE_ERRORS, {"run": run_id, "ids": errors})
            for pid in errors:
                del stored[pid]
    written: list[bool] = []
    nodes: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for r in results:
        if r.problem.id in stored:
            written.append(False)
            continue
        stored[r.problem.id] = r.status
        key = conn.execute(_INSERT_RESULT, _result_row(run_id, r, now)).inserted_primary_key
        assert key is not None
        result_id = int(key[0])
        nodes.extend(_node_row(result_id, b) for b in r.branches)
        calls.extend(_call_row(result_id, c) for c in r.calls)
        written.append(True)
    if nodes:
        conn.execute(_INSERT_NODES, nodes)
    if calls:
        conn.execute(_INSERT_CALLS, calls)
    return written


def _result_row(run_id: str, r: ProblemResult, now: datetime) -> dict[str, Any]:
    sp = r.spent
    return {
        "run_id": run_id,
        "problem_id": r.problem.id,
        "problem_index": r.index,
        "status": r.status,
        "answer": r.answer,
        "reference": r.problem.reference,
        "correct": r.correct,
        "pass_at_1": r.pass_at_1,
        "majority_correct": r.majority_correct,
        "oracle_correct": r.oracle_correct,
        "n_branches": max(len(r.branches) - 1, 0),
        "n_leaves": r.n_leaves,
        "samples": int(sp.get("samples", 0)),
        "tokens": int(sp.get("tokens", 0)),
        "prompt_tokens": int(sp.get("prompt_tokens", 0)),
        "cached_prompt_tokens": int(sp.get("cached_prompt_tokens", 0)),
        "prefill_tokens": int(sp.get("prefill_tokens", 0)),
        "reward_tokens": int(sp.get("reward_tokens", 0)),
        "reward_calls": int(sp.get("reward_calls", 0)),
        "flops": float(sp.get("flops", 0.0)),
        "bytes": float(sp.get("bytes", 0.0)),
        "seconds": float(sp.get("seconds", 0.0)),
        "refused_calls": int(sp.get("refused_calls", 0)),
        "budget": r.budget,
        "trace": _jsonable(r.trace),
        "error": r.error,
        "created_at": now,
    }


def _node_row(result_id: int, b: Branch) -> dict[str, Any]:
    extra = {k: v for k, v in b.extra.items() if k != "score"}
    if b.score_error:
        extra["score_error"] = b.score_error
    return {
        "result_id": result_id,
        "node_id": b.id,
        "parent_id": b.parent_id,
        "step": b.step,
        "text": b.step_texts[-1] if b.step_texts else "",
        "n_tokens": b.new_tokens,
        "cum_logprob": b.cum_logprob,
        "step_scores": [_finite(x) for x in b.step_scores],
        "score": _finite(b.score),
        "finished": b.finished,
        "finish_reason": b.finish_reason,
        "answer": b.answer,
        "selected": b.selected,
        "extra": _jsonable(extra) or None,
    }


def _call_row(result_id: int, c: CallRecord) -> dict[str, Any]:
    return {
        "result_id": result_id,
        "seq": c.seq,
        "kind": c.kind,
        "status": c.status,
        "n_requests": c.n_requests,
        "n_sequences": c.n_sequences,
        "batch_size": c.batch_size,
        "prompt_tokens": c.prompt_tokens,
        "cached_prompt_tokens": c.cached_prompt_tokens,
        "completion_tokens": c.completion_tokens,
        "reward_tokens": c.reward_tokens,
        "flops": c.flops,
        "latency_s": c.latency_s,
        "error": c.error,
    }
