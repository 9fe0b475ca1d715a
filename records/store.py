"""RecordStore: the measurement log behind a SQLAlchemy URL (SQLite by default).

Follows Optuna's RDB storage: typed models, one session context manager that commits, rolls
back and translates errors into `RecordsError`, a schema version checked on open, and frozen
dataclasses for callers. SQLite runs in WAL mode with a busy timeout and takes its write lock
at BEGIN (`BEGIN IMMEDIATE`), so several tuning processes can append to one file without
deadlocking on lock upgrades. A file that is not ours (another application's database, or not
a database at all) is refused before anything is written to it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from records.models import SCHEMA_VERSION, Base, MetaRow, RecordRow, TargetRow, TaskRow
from tuner.errors import TunerError
from tuner.result import ErrorKind, MeasureResult
from tuner.target import Target
from tuner.task import Task

BUSY_TIMEOUT_MS = 30_000


class RecordsError(TunerError):
    """The database cannot be used: foreign, corrupt, too new, or unreachable."""


def canonical_json(schedule_json: str) -> str:
    return json.dumps(json.loads(schedule_json), sort_keys=True, separators=(",", ":"))


def schedule_hash(schedule_json: str) -> str:
    return hashlib.sha1(canonical_json(schedule_json).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class NewRecord:
    """What the tuner appends: one measured candidate."""
    schedule_json: str
    result: MeasureResult
    trial: int
    predicted: float | None = None
    strategy: str | None = None


@dataclass(frozen=True, slots=True)
class Record:
    id: int
    task: Task
    target: Target
    trial: int
    schedule_json: str
    result: MeasureResult
    flops: float
    predicted: float | None
    strategy: str | None
    tuner_version: str

    @property
    def gflops(self) -> float:
        return self.result.gflops(self.flops)


def _check_sqlite_file(path: Path) -> None:
    """Refuses, without writing, a file that is not an empty or tuner SQLite database."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        header = f.read(16)
    if header != b"SQLite format 3\x00":
        raise RecordsError(f"{path} is not a SQLite database (it starts with {header[:8]!r}); "
                           f"pass another --db")
    try:
        # immutable: no locks, no -wal or -shm files next to a file we may refuse
        con = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            if "tuner_meta" in tables:
                version = con.execute("SELECT value FROM tuner_meta "
                                      "WHERE key='schema_version'").fetchone()
                _check_version(str(path), version[0] if version else None)
            elif tables:
                raise RecordsError(f"{path} is a SQLite database of another application "
                                   f"(tables: {', '.join(sorted(tables)[:5])}); pass another --db")
        finally:
            con.close()
    except sqlite3.DatabaseError as err:
        raise RecordsError(f"{path} is a corrupt SQLite database: {err}") from None


def _check_version(where: str, found: str | None) -> None:
    if found is None:
        raise RecordsError(f"{where} has a tuner_meta table without a schema version")
    if int(found) > SCHEMA_VERSION:
        raise RecordsError(f"{where} has record schema version {found}, newer than the "
                           f"{SCHEMA_VERSION} this tuner reads; upgrade with "
                           f"`pip install --upgrade tuner`")
    if int(found) < SCHEMA_VERSION:
        raise RecordsError(f"{where} has record schema version {found}; this tuner reads "
                           f"{SCHEMA_VERSION} and has no upgrade path from it yet")


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    dbapi_connection.isolation_level = None  # transactions are begun by _begin_immediate
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _begin_immediate(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE")


class RecordStore:
    def __init__(self, url: str):
        self.url = url
        try:
            parsed = make_url(url)
        except SQLAlchemyError as err:
            raise RecordsError(f"not a database URL: {url!r} ({err})") from None
        sqlite = parsed.get_backend_name() == "sqlite"
        memory = sqlite and parsed.database in (None, "", ":memory:")
        if sqlite and not memory:
            _check_sqlite_file(Path(parsed.database))
        kwargs = {}
        if memory:
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        try:
            self._engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError) as err:
            raise RecordsError(f"cannot open {url}: {err}") from None
        if sqlite:
            event.listen(self._engine, "connect", _sqlite_pragmas)
            event.listen(self._engine, "begin", _begin_immediate)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._init_schema()
        self._task_ids: dict[str, int] = {}
        self._target_ids: dict[str, int] = {}

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _session(self):
        session: Session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as err:
            session.rollback()
            raise RecordsError(f"database error on {self._safe_url}: {err}") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @property
    def _safe_url(self) -> str:
        return make_url(self.url).render_as_string(hide_password=True)

    def _init_schema(self) -> None:
        try:
            tables = set(inspect(self._engine).get_table_names())
        except SQLAlchemyError as err:
            raise RecordsError(f"cannot open {self._safe_url}: {err}") from None
        if "tuner_meta" in tables:
            with self._session() as s:
                row = s.get(MetaRow, "schema_version")
                _check_version(self._safe_url, row.value if row else None)
            return
        with self._session() as s:
            Base.metadata.create_all(s.connection())
            s.merge(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _get_or_create(self, session, model, key: str, cache: dict, make):
        if key in cache:
            return cache[key]
        row = session.scalar(select(model).where(model.key == key))
        if row is None:
            try:
                with session.begin_nested():
                    row = make()
                    session.add(row)
            except IntegrityError:  # another process created it in the meantime
                row = session.scalar(select(model).where(model.key == key))
        session.flush()
        cache[key] = row.id
        return row.id

    def _task_id(self, session, task: Task) -> int:
        return self._get_or_create(
            session, TaskRow, task.key, self._task_ids,
            lambda: TaskRow(key=task.key, op=task.op, shape_json=json.dumps(list(task.shape)),
                            attrs_json=json.dumps({k: int(v) for k, v in task.attrs}),
                            dtype=task.dtype))

    def _target_id(self, session, target: Target) -> int:
        return self._get_or_create(
            session, TargetRow, target.key, self._target_ids,
            lambda: TargetRow(key=target.key, triple=target.triple, cpu=target.cpu,
                              features=target.features, threads=target.threads))

    def _find_ids(self, session, task: Task, target: Target) -> tuple[int, int] | None:
        task_id = session.scalar(select(TaskRow.id).where(TaskRow.key == task.key))
        target_id = session.scalar(select(TargetRow.id).where(TargetRow.key == target.key))
        if task_id is None or target_id is None:
            return None
        return task_id, target_id

    # ------------------------------------------------------------------ conversion
    @staticmethod
    def _task(row: TaskRow) -> Task:
        try:
            return Task.create(row.op, json.loads(row.shape_json), row.dtype,
                               **json.loads(row.attrs_json))
        except (TunerError, ValueError, TypeError) as err:
            raise RecordsError(f"task row {row.id} ({row.key!r}) is not a valid task: {err}") \
                from None

    @staticmethod
    def _target(row: TargetRow) -> Target:
        return Target(row.triple, row.cpu, row.features, row.threads)

    def _record(self, row: RecordRow, task: Task, target: Target) -> Record:
        result = MeasureResult(ErrorKind(row.error_kind), row.error_detail,
                               tuple(json.loads(row.costs_json)), row.number, row.compile_s,
                               row.timestamp)
        return Record(row.id, task, target, row.trial, row.schedule_json, result, row.flops,
                      row.predicted, row.strategy, row.tuner_version)

    def _records(self, session, query, task: Task | None = None,
                 target: Target | None = None) -> list[Record]:
        tasks: dict[int, Task] = {}
        targets: dict[int, Target] = {}
        out = []
        for row in session.scalars(query):
            if row.task_id not in tasks:
                tasks[row.task_id] = task or self._task(session.get(TaskRow, row.task_id))
            if row.target_id not in targets:
                targets[row.target_id] = target or self._target(
                    session.get(TargetRow, row.target_id))
            out.append(self._record(row, tasks[row.task_id], targets[row.target_id]))
        return out

    # ------------------------------------------------------------------ writing
    def add_many(self, task: Task, target: Target, entries: list[NewRecord],
                 tuner_version: str | None = None) -> list[Record]:
        """Appends a batch in one transaction: committed, or (on error) not at all."""
        if tuner_version is None:
            from tuner import __version__ as tuner_version
        flops = task.dag().flops
        with self._session() as s:
            task_id, target_id = self._task_id(s, task), self._target_id(s, target)
            rows = []
            for e in entries:
                r = e.result
                text = canonical_json(e.schedule_json)
                rows.append(RecordRow(
                    task_id=task_id, target_id=target_id, trial=e.trial,
                    schedule_json=text, schedule_hash=schedule_hash(text),
                    error_kind=r.error.value, error_detail=r.detail,
                    costs_json=json.dumps(list(r.costs_s)), number=r.number,
                    median_s=r.median_s if r.ok else None, min_s=r.min_s if r.ok else None,
                    compile_s=r.compile_s, flops=flops, gflops=r.gflops(flops),
                    predicted=e.predicted, strategy=e.strategy, tuner_version=tuner_version,
                    timestamp=r.timestamp))
            s.add_all(rows)
            s.flush()
            return [self._record(row, task, target) for row in rows]

    def add(self, task: Task, target: Target, entry: NewRecord, **kw) -> Record:
        return self.add_many(task, target, [entry], **kw)[0]

    # ------------------------------------------------------------------ reading
    def history(self, task: Task, target: Target) -> list[Record]:
        """Every record of the task on the target, errors included, in trial order."""
        with self._session() as s:
            ids = self._find_ids(s, task, target)
            if ids is None:
                return []
            q = select(RecordRow).where(RecordRow.task_id == ids[0],
                                        RecordRow.target_id == ids[1]) \
                .order_by(RecordRow.trial, RecordRow.id)
            return self._records(s, q, task, target)

    def top_k(self, task: Task, target: Target, k: int) -> list[Record]:
        with self._session() as s:
            ids = self._find_ids(s, task, target)
            if ids is None:
                return []
            q = select(RecordRow).where(RecordRow.task_id == ids[0],
                                        RecordRow.target_id == ids[1],
                                        RecordRow.error_kind == ErrorKind.NONE.value) \
                .order_by(RecordRow.median_s, RecordRow.id).limit(k)
            return self._records(s, q, task, target)

    def best(self, task: Task, target: Target) -> Record | None:
        top = self.top_k(task, target, 1)
        return top[0] if top else None

    def measured_hashes(self, task: Task, target: Target) -> set[str]:
        with self._session() as s:
            ids = self._find_ids(s, task, target)
            if ids is None:
                return set()
            return set(s.scalars(select(RecordRow.schedule_hash).where(
                RecordRow.task_id == ids[0], RecordRow.target_id == ids[1])))

    def next_trial(self, task: Task, target: Target) -> int:
        with self._session() as s:
            ids = self._find_ids(s, task, target)
            if ids is None:
                return 0
            last = s.scalar(select(func.max(RecordRow.trial)).where(
                RecordRow.task_id == ids[0], RecordRow.target_id == ids[1]))
            return 0 if last is None else last + 1

    def count(self) -> int:
        with self._session() as s:
            return s.scalar(select(func.count(RecordRow.id)))

    def tasks(self) -> list[Task]:
        with self._session() as s:
            return [self._task(r) for r in s.scalars(select(TaskRow).order_by(TaskRow.id))]

    def targets(self) -> list[Target]:
        with self._session() as s:
            return [self._target(r) for r in s.scalars(select(TargetRow).order_by(TargetRow.id))]

    def records_on_target(self, target: Target, exclude: Task | None = None,
                          limit: int = 5000) -> list[Record]:
        """Recent successful records of every task on a target (to warm-start a model)."""
        with self._session() as s:
            target_id = s.scalar(select(TargetRow.id).where(TargetRow.key == target.key))
            if target_id is None:
                return []
            q = select(RecordRow).where(RecordRow.target_id == target_id)
            if exclude is not None:
                task_id = s.scalar(select(TaskRow.id).where(TaskRow.key == exclude.key))
                if task_id is not None:
                    q = q.where(RecordRow.task_id != task_id)
            q = q.order_by(RecordRow.id.desc()).limit(limit)
            return self._records(s, q, target=target)

    def summary(self) -> list[tuple[Task, Target, int, int, Record | None]]:
        """(task, target, records, failed records, best) for every pair in the log."""
        with self._session() as s:
            pairs = s.execute(select(RecordRow.task_id, RecordRow.target_id,
                                     func.count(RecordRow.id))
                              .group_by(RecordRow.task_id, RecordRow.target_id)
                              .order_by(RecordRow.task_id, RecordRow.target_id)).all()
            out = []
            for task_id, target_id, n in pairs:
                task = self._task(s.get(TaskRow, task_id))
                target = self._target(s.get(TargetRow, target_id))
                failed = s.scalar(select(func.count(RecordRow.id)).where(
                    RecordRow.task_id == task_id, RecordRow.target_id == target_id,
                    RecordRow.error_kind != ErrorKind.NONE.value))
                best = self._records(s, select(RecordRow).where(
                    RecordRow.task_id == task_id, RecordRow.target_id == target_id,
                    RecordRow.error_kind == ErrorKind.NONE.value)
                    .order_by(RecordRow.median_s, RecordRow.id).limit(1), task, target)
                out.append((task, target, n, failed, best[0] if best else None))
            return out

    def best_by_target(self, task: Task) -> list[Record]:
        """The best record of `task` on every target that measured it."""
        return [best for t, _, _, _, best in self.summary()
                if best is not None and t.key == task.key]

    def best_per_task(self, target: Target | None = None) -> list[Record]:
        return [best for _, t, _, _, best in self.summary()
                if best is not None and (target is None or t.key == target.key)]
