"""RecordStore: the measurement log behind a SQLAlchemy URL (SQLite by default).

Modelled on Optuna's RDB storage: typed models, one session context manager that commits,
rolls back and translates database errors into `RecordsError`, a schema version checked when
the store opens, and frozen dataclasses for callers. The search commits each batch with one
`add_many` before it starts the next, so an interrupted run loses at most the batch in flight,
and a resumed one skips what `measured_hashes` lists. Queries use only portable SQL (window
functions included), so any SQLAlchemy database works; SQLite details live in
`records.sqlite`.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from sqlalchemy import case, create_engine, delete, event, func, inspect, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

from records import sqlite
from records.exchange import read_best, write_best
from records.claims import owner_is_gone, owner_key
from records.models import (SCHEMA_VERSION, UPGRADES, Base, ClaimRow, MachineRow, MetaRow,
                            RecordRow, TargetRow, TaskRow)
from records.record import (NewRecord, Record, RecordsError, canonical_schedule, make_task,
                            schedule_hash)
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.ir.target import Target
from tuner.ir.task import Task

_OK = ErrorKind.NONE.value


def _check_version(where: str, found: str | None) -> None:
    if found is None:
        raise RecordsError(f"{where} has a {sqlite.META_TABLE} table without a schema version")
    if not found.isdigit():
        raise RecordsError(f"{where} has an unreadable schema version {found!r}")
    if int(found) > SCHEMA_VERSION:
        raise RecordsError(f"{where} has records schema version {found}, newer than version "
                           f"{SCHEMA_VERSION} that this tuner supports; upgrade it with "
                           f"`pip install --upgrade tuner`")
    if int(found) < min(UPGRADES, default=SCHEMA_VERSION):
        raise RecordsError(f"{where} has records schema version {found}; this tuner supports "
                           f"version {SCHEMA_VERSION} and cannot upgrade it")


class RecordStore:
    """The log of every measured candidate. Owns a SQLAlchemy engine: `close()` it, or use
    the store as a context manager."""

    def __init__(self, url: str):
        self.url = url
        try:
            parsed = make_url(url)
        except (SQLAlchemyError, ValueError) as err:
            raise RecordsError(f"not a database URL: {url!r} ({err}); a plain file path goes "
                               f"through resolve_db_url first") from None
        self.display_url = parsed.render_as_string(hide_password=True)
        is_sqlite = parsed.get_backend_name() == "sqlite"
        memory = is_sqlite and parsed.database in (None, "", ":memory:")
        kwargs = {}
        if is_sqlite and not memory:
            path = Path(parsed.database)
            if not path.parent.is_dir():
                raise RecordsError(f"cannot create {path}: folder {path.parent} does not exist")
            found = sqlite.read_schema_version(path)
            if found is not None:
                _check_version(str(path), found)
        if memory:  # one shared connection, or every session would see its own empty database
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        try:
            self._engine = create_engine(url, **kwargs)
        except (SQLAlchemyError, ImportError) as err:
            raise RecordsError(f"cannot open {self.display_url}: {err}") from None
        if is_sqlite:
            event.listen(self._engine, "connect", sqlite.on_connect)
            event.listen(self._engine, "begin", sqlite.on_begin)
        self._is_sqlite = is_sqlite
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        try:
            self._init_schema()
        except RecordsError:
            self._engine.dispose()
            raise


    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> "RecordStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ plumbing
    @contextlib.contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """A transaction: committed if the block ends normally, rolled back otherwise
        (KeyboardInterrupt included). Database errors come out as RecordsError."""
        session = self._sessions()
        try:
            self._begin(session, write)
            yield session
            session.commit()
        except SQLAlchemyError as err:
            session.rollback()
            detail = err.orig if isinstance(err, DBAPIError) else err
            text = " ".join(str(detail).split())  # drivers' messages span lines; the CLI's don't
            raise RecordsError(f"database error on {self.display_url}: "
                               f"{type(detail).__name__}: {text}") from None
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _begin(self, session: Session, write: bool) -> None:
        """Opens the session's transaction; on SQLite, again while the file answers "database
        is locked" where its busy timeout does not apply (records/sqlite.py). Nothing has been
        read or written yet, so beginning again is safe."""
        options = {sqlite.WRITE_OPTION: write}
        if not self._is_sqlite:
            session.connection(execution_options=options)
            return

        def begin() -> None:
            try:
                session.connection(execution_options=options)
            except DBAPIError:
                session.rollback()
                raise
        sqlite.retry_while_locked(begin)

    def _init_schema(self) -> None:
        """Checks the version of an existing log; creates the tables in a new one."""
        for attempt in (1, 2):
            with self._session() as s:
                tables = set(inspect(s.connection()).get_table_names())
                if sqlite.META_TABLE in tables:
                    row = s.get(MetaRow, "schema_version")
                    _check_version(self.display_url, row.value if row else None)
                    if int(row.value) == SCHEMA_VERSION:
                        return
            if sqlite.META_TABLE in tables:
                self._upgrade()
                return
            if self._is_sqlite and tables:  # another program made tables since the file check
                raise RecordsError(f"{self.display_url} is a SQLite database of another "
                                   f"application; pass another --db or set TUNER_DB")
            try:
                with self._session(write=True) as s:
                    Base.metadata.create_all(s.connection(), checkfirst=True)
                    s.add(MetaRow(key="schema_version", value=str(SCHEMA_VERSION)))
                return
            except RecordsError:
                # A server lets two new processes create the tables at once and fails one
                # (SQLite's BEGIN IMMEDIATE queues them): the loser finds them made.
                if attempt == 2:
                    raise

    def _upgrade(self) -> None:
        """Brings an older log to this schema version: UPGRADES only add tables."""
        with self._session(write=True) as s:
            row = s.get(MetaRow, "schema_version", with_for_update=True)
            if int(row.value) < SCHEMA_VERSION:  # not done by another process meanwhile
                Base.metadata.create_all(s.connection(), checkfirst=True)
                row.value = str(SCHEMA_VERSION)

    @staticmethod
    def _find_id(s: Session, model, key: str) -> int | None:
        return s.scalar(select(model.id).where(model.key == key))

    def _get_or_create(self, s: Session, model, key: str, make) -> int:
        found = self._find_id(s, model, key)
        if found is not None:
            return found
        try:
            with s.begin_nested():  # a savepoint: a concurrent insert must not end the batch
                row = make()
                s.add(row)
            return row.id
        except IntegrityError:
            found = self._find_id(s, model, key)
            if found is None:  # not a concurrent insert of the same key: a real violation
                raise
            return found  # another process inserted the same key since the select

    def _task_id(self, s: Session, task: Task) -> int:
        if list(task.attrs) != sorted(task.attrs):  # its key would not match the task read back
            raise RecordsError(f"task attributes must be in sorted order, as Task.create makes "
                               f"them, got {task.attrs!r}")
        return self._get_or_create(s, TaskRow, task.key, lambda: TaskRow(
            key=task.key, op=task.op, shape_json=json.dumps(list(task.shape)),
            attrs_json=json.dumps(dict(task.attrs), sort_keys=True), dtype=task.dtype))

    def _target_id(self, s: Session, target: Target) -> int:
        return self._get_or_create(s, TargetRow, target.key, lambda: TargetRow(
            key=target.key, triple=target.triple, cpu=target.cpu, features=target.features,
            threads=target.threads))

    def _claims_filter(self, s: Session, task: Task, target: Target):
        """WHERE clauses selecting a pair's claims; None when the pair is unknown."""
        task_id = self._find_id(s, TaskRow, task.key)
        target_id = self._find_id(s, TargetRow, target.key)
        if task_id is None or target_id is None:
            return None
        return ClaimRow.task_id == task_id, ClaimRow.target_id == target_id

    def _pair_filter(self, s: Session, task: Task | None, target: Target | None):
        """WHERE clauses selecting a task and/or target; None when one of them is unknown."""
        clauses = []
        if task is not None:
            task_id = self._find_id(s, TaskRow, task.key)
            if task_id is None:
                return None
            clauses.append(RecordRow.task_id == task_id)
        if target is not None:
            target_id = self._find_id(s, TargetRow, target.key)
            if target_id is None:
                return None
            clauses.append(RecordRow.target_id == target_id)
        return clauses

    def _records(self, query, task: Task | None = None, target: Target | None = None
                 ) -> list[Record]:
        """Records of `query(where)`, a select of RecordRow given the WHERE clauses that pick
        the task and/or target, in its order."""
        with self._session() as s:
            where = self._pair_filter(s, task, target)
            if where is None:
                return []
            rows = s.execute(query(where).add_columns(TaskRow, TargetRow, MachineRow.machine)
                             .join(TaskRow, TaskRow.id == RecordRow.task_id)
                             .join(TargetRow, TargetRow.id == RecordRow.target_id)
                             .outerjoin(MachineRow, MachineRow.record_id == RecordRow.id)).all()
            tasks: dict[int, Task] = {}
            targets: dict[int, Target] = {}
            out = []
            for row, task_row, target_row, machine in rows:
                if task_row.id not in tasks:
                    tasks[task_row.id] = _task(task_row)
                if target_row.id not in targets:
                    targets[target_row.id] = _target(target_row)
                out.append(_record_of(row, tasks[task_row.id], targets[target_row.id],
                                      machine or ""))
            return out

    # ------------------------------------------------------------------ writing
    def add(self, task: Task, target: Target, schedule_json: str, result: MeasureResult, *,
            flops: float, trial: int, tuner_version: str, predicted: float | None = None,
            strategy: str | None = None) -> Record:
        """Appends one record, committed before returning."""
        return self.add_many(task, target, [NewRecord(schedule_json, result, trial, predicted,
                                                      strategy)],
                             flops=flops, tuner_version=tuner_version)[0]

    def add_many(self, task: Task, target: Target, entries: Sequence[NewRecord], *,
                 flops: float | None = None, tuner_version: str | None = None,
                 number_trials: bool = False) -> list[Record]:
        """Appends a batch of one task on one target in one transaction: all committed before
        returning, or (on any error, Ctrl-C included) none. This process's claims on the
        batch's schedules (`claim`) go in the same transaction.

        With `number_trials`, the entries' trials are replaced by the next free numbers of
        the pair, taken inside the transaction, so processes sharing the log never number two
        records alike. `flops` defaults to the task template's count and `tuner_version` to
        the running tuner's."""
        if flops is None:  # the only use of the templates in records/: avoid it, pass flops
            flops = task.dag().flops
        if tuner_version is None:
            from tuner.version import __version__ as tuner_version
        rows = [_row(e, flops, tuner_version) for e in entries]
        if not rows:
            return []
        with self._session(write=True) as s:
            task_id, target_id = self._lock_pair(s, task, target)
            if number_trials:
                first = s.scalar(select(func.coalesce(func.max(RecordRow.trial) + 1, 0)).where(
                    RecordRow.task_id == task_id, RecordRow.target_id == target_id))
                for i, row in enumerate(rows):
                    row.trial = first + i
            for row in rows:
                row.task_id, row.target_id = task_id, target_id
            s.add_all(rows)
            s.execute(delete(ClaimRow).where(
                ClaimRow.task_id == task_id, ClaimRow.target_id == target_id,
                ClaimRow.owner == owner_key(),
                ClaimRow.schedule_hash.in_([row.schedule_hash for row in rows])))
            s.flush()
            machines = [MachineRow(record_id=row.id, machine=e.result.machine[:128])
                        for row, e in zip(rows, entries) if e.result.machine]
            if machines:
                s.add_all(machines)
                s.flush()
            return [_record_of(row, task, target, e.result.machine[:128])
                    for row, e in zip(rows, entries)]

    def _lock_pair(self, s: Session, task: Task, target: Target) -> tuple[int, int]:
        """The pair's ids, with the task's row locked to the end of the transaction on a
        server (SQLite's BEGIN IMMEDIATE already serializes writers): numbering trials and
        claiming schedules read, then write, what another process may be writing."""
        task_id, target_id = self._task_id(s, task), self._target_id(s, target)
        s.execute(select(TaskRow.id).where(TaskRow.id == task_id).with_for_update())
        return task_id, target_id

    def claim(self, task: Task, target: Target, schedule_jsons: Sequence[str], *,
              lease_s: float, owner: str | None = None, now: float | None = None) -> list[bool]:
        """Claims schedules for measuring (records/claims.py), for `lease_s` seconds; returns
        which are this process's to measure: not those already measured, claimed by another
        owner who is alive and within the lease, or listed twice."""
        owner = owner or owner_key()
        now = time.time() if now is None else now
        hashes = [schedule_hash(canonical_schedule(j)) for j in schedule_jsons]
        if not hashes:
            return []
        with self._session(write=True) as s:
            task_id, target_id = self._lock_pair(s, task, target)
            pair = (ClaimRow.task_id == task_id, ClaimRow.target_id == target_id)
            measured = set(s.scalars(select(RecordRow.schedule_hash).where(
                RecordRow.task_id == task_id, RecordRow.target_id == target_id,
                RecordRow.schedule_hash.in_(hashes))))
            claims = {c.schedule_hash: c for c in s.scalars(select(ClaimRow).where(
                *pair, ClaimRow.schedule_hash.in_(hashes)))}
            out, seen = [], set()
            for h in hashes:
                c = claims.get(h)
                taken = c is not None and c.owner != owner and c.expires > now \
                    and not owner_is_gone(c.owner)
                if h in measured or h in seen or taken:
                    out.append(False)
                    continue
                seen.add(h)
                if c is None:
                    s.add(ClaimRow(task_id=task_id, target_id=target_id, schedule_hash=h,
                                   owner=owner, expires=now + lease_s))
                else:
                    c.owner, c.expires = owner, now + lease_s
                out.append(True)
        return out

    def release_claims(self, task: Task, target: Target,
                       schedule_jsons: Sequence[str] | None = None,
                       owner: str | None = None) -> int:
        """Drops the owner's (this process's) claims on a pair, or only those on
        `schedule_jsons` (schedules it claimed but did not measure); returns how many."""
        with self._session(write=True) as s:
            pair = self._claims_filter(s, task, target)
            if pair is None:
                return 0
            which = () if schedule_jsons is None else (ClaimRow.schedule_hash.in_(
                [schedule_hash(j) for j in schedule_jsons]),)
            return s.execute(delete(ClaimRow).where(
                *pair, *which, ClaimRow.owner == (owner or owner_key()))).rowcount

    def claims(self, task: Task, target: Target) -> list[tuple[str, str, float]]:
        """(schedule hash, owner, expires) of every claim on a pair."""
        with self._session() as s:
            pair = self._claims_filter(s, task, target)
            if pair is None:
                return []
            return [(c.schedule_hash, c.owner, c.expires)
                    for c in s.scalars(select(ClaimRow).where(*pair).order_by(ClaimRow.id))]

    def import_records(self, records: Iterable[Record]) -> tuple[int, int]:
        """Merges records from elsewhere in one transaction, skipping any whose (task, target,
        schedule) is already stored; returns (added, already present). Trials are kept."""
        added = present = 0
        with self._session(write=True) as s:
            seen: dict[tuple[int, int], set[str]] = {}
            for r in records:
                ids = self._task_id(s, r.task), self._target_id(s, r.target)
                if ids not in seen:
                    seen[ids] = set(s.scalars(select(RecordRow.schedule_hash).where(
                        RecordRow.task_id == ids[0], RecordRow.target_id == ids[1])))
                row = _row(NewRecord(r.schedule_json, r.result, r.trial, r.predicted,
                                     r.strategy), r.flops, r.tuner_version)
                if row.schedule_hash in seen[ids]:
                    present += 1
                    continue
                row.task_id, row.target_id = ids
                s.add(row)
                if r.result.machine:
                    s.flush()
                    s.add(MachineRow(record_id=row.id, machine=r.result.machine[:128]))
                seen[ids].add(row.schedule_hash)
                added += 1
        return added, present

    # ------------------------------------------------------------------ reading
    def history(self, task: Task, target: Target, after_id: int = 0) -> list[Record]:
        """Every record of the task on the target, failures included, in trial order; with
        `after_id`, only those stored after the record of that id (a tuner that has read
        the history once reads what others added since)."""
        return self._records(lambda where: select(RecordRow)
                             .where(*where, RecordRow.id > after_id)
                             .order_by(RecordRow.trial, RecordRow.id), task, target)

    def top_k(self, task: Task, target: Target, k: int) -> list[Record]:
        """The k fastest successful records (by median), fastest first."""
        return self._records(lambda where: select(RecordRow)
                             .where(*where, RecordRow.error_kind == _OK)
                             .order_by(RecordRow.median_s, RecordRow.id).limit(max(k, 0)),
                             task, target)

    def best(self, task: Task, target: Target,
             usable: Callable[[Record], bool] | None = None) -> Record | None:
        """The fastest record whose result is correct; never a failed or wrong one. With
        `usable`, the fastest that `usable` accepts (the tuner passes "its schedule still
        applies to the task": a record written for an older compute definition stays in the
        log, and the next best is used)."""
        k = 1
        while True:
            top = self.top_k(task, target, k)
            found = next((r for r in top if usable is None or usable(r)), None)
            if found is not None or len(top) < k:
                return found
            k *= 16

    def best_per_task(self, target: Target | None = None,
                      usable: Callable[[Record], bool] | None = None,
                      task: Task | None = None) -> list[Record]:
        """The best record of every (task, target) pair, optionally of one target or one task
        only; with `usable`, the best it accepts (see `best`), and no pair with none."""
        best = self._first_per_pair(target, task)
        if usable is None:
            return best
        found = (r if usable(r) else self.best(r.task, r.target, usable) for r in best)
        return [r for r in found if r is not None]

    def _first_per_pair(self, target: Target | None, task: Task | None = None
                        ) -> list[Record]:
        def query(where):
            rank = func.row_number().over(partition_by=(RecordRow.task_id, RecordRow.target_id),
                                          order_by=(RecordRow.median_s, RecordRow.id))
            ranked = select(RecordRow.id, rank.label("rank")) \
                .where(*where, RecordRow.error_kind == _OK).subquery()
            return select(RecordRow).join(ranked, ranked.c.id == RecordRow.id) \
                .where(ranked.c.rank == 1).order_by(RecordRow.task_id, RecordRow.target_id)
        return self._records(query, task=task, target=target)

    def best_by_target(self, task: Task,
                       usable: Callable[[Record], bool] | None = None) -> list[Record]:
        """The best record of `task` on every target that measured it (for replay)."""
        return self.best_per_task(usable=usable, task=task)

    def records_on_target(self, target: Target, exclude: Task | None = None,
                          limit: int = 5000, after_id: int = 0) -> list[Record]:
        """The most recent successful records of every task on a target, newest first (to
        warm-start a cost model from other tasks); with `after_id`, only those stored after
        the record of that id."""
        def query(where):
            q = select(RecordRow).where(*where, RecordRow.error_kind == _OK,
                                        RecordRow.id > after_id)
            if exclude is not None:
                q = q.where(RecordRow.task_id.not_in(
                    select(TaskRow.id).where(TaskRow.key == exclude.key)))
            return q.order_by(RecordRow.id.desc()).limit(limit)
        return self._records(query, target=target)

    def measured_hashes(self, task: Task, target: Target) -> set[str]:
        """Schedule hashes (see `schedule_hash`) already measured for the task on the target."""
        with self._session() as s:
            where = self._pair_filter(s, task, target)
            if where is None:
                return set()
            return set(s.scalars(select(RecordRow.schedule_hash).where(*where)))

    def next_trial(self, task: Task, target: Target) -> int:
        """One past the highest trial stored for the task on the target (0 for none)."""
        with self._session() as s:
            where = self._pair_filter(s, task, target)
            last = None if where is None else s.scalar(
                select(func.max(RecordRow.trial)).where(*where))
            return 0 if last is None else last + 1

    def count(self, task: Task | None = None, target: Target | None = None, *,
              ok_only: bool = False) -> int:
        """Number of records, of one task and/or target if given, successful ones if ok_only."""
        with self._session() as s:
            where = self._pair_filter(s, task, target)
            if where is None:
                return 0
            if ok_only:
                where.append(RecordRow.error_kind == _OK)
            return s.scalar(select(func.count(RecordRow.id)).where(*where))

    def tasks(self) -> list[Task]:
        with self._session() as s:
            return [_task(r) for r in s.scalars(select(TaskRow).order_by(TaskRow.id))]

    def targets(self) -> list[Target]:
        with self._session() as s:
            return [_target(r) for r in s.scalars(select(TargetRow).order_by(TargetRow.id))]

    def summary(self) -> list[tuple[Task, Target, int, int, Record | None]]:
        """(task, target, records, failed records, best or None) for every pair in the log."""
        with self._session() as s:
            failed = func.sum(case((RecordRow.error_kind == _OK, 0), else_=1))
            rows = s.execute(select(TaskRow, TargetRow, func.count(RecordRow.id), failed)
                             .join(TaskRow, TaskRow.id == RecordRow.task_id)
                             .join(TargetRow, TargetRow.id == RecordRow.target_id)
                             .group_by(TaskRow.id, TargetRow.id)
                             .order_by(TaskRow.id, TargetRow.id)).all()
        best = {(r.task.key, r.target.key): r for r in self.best_per_task()}
        return [(_task(tk), _target(tg), n, int(bad), best.get((tk.key, tg.key)))
                for tk, tg, n, bad in rows]

    def machines(self) -> dict[tuple[str, str], dict[str, int]]:
        """(task key, target key) -> cluster worker -> records it measured, for the pairs
        that cluster workers measured (`tune show`)."""
        with self._session() as s:
            rows = s.execute(select(TaskRow.key, TargetRow.key, MachineRow.machine,
                                    func.count(RecordRow.id))
                             .join(RecordRow, RecordRow.id == MachineRow.record_id)
                             .join(TaskRow, TaskRow.id == RecordRow.task_id)
                             .join(TargetRow, TargetRow.id == RecordRow.target_id)
                             .group_by(TaskRow.key, TargetRow.key, MachineRow.machine)).all()
        out: dict[tuple[str, str], dict[str, int]] = {}
        for task_key, target_key, machine, count in rows:
            out.setdefault((task_key, target_key), {})[machine] = count
        return out

    # ------------------------------------------------------------------ the JSON file
    def export_best(self, path: str | Path, target: Target | None = None,
                    usable: Callable[[Record], bool] | None = None) -> int:
        """Writes the best record of each (task, target) pair (that `usable` accepts) to a
        best-schedules JSON file (see `records.exchange`); returns how many."""
        records = self.best_per_task(target, usable)
        write_best(records, path)
        return len(records)

    def import_json(self, path: str | Path) -> tuple[int, int]:
        """Merges a best-schedules JSON file; returns (added, already present)."""
        return self.import_records(read_best(path))


# ---------------------------------------------------------------------- rows <-> values
def _row(e: NewRecord, flops: float, tuner_version: str) -> RecordRow:
    r = e.result
    if not isinstance(r.error, ErrorKind):
        raise RecordsError(f"result.error must be an ErrorKind, got {r.error!r}")
    if r.ok and not r.costs_s:
        raise RecordsError("a successful result must have costs (seconds per call)")
    if type(e.trial) is not int or e.trial < 0:
        raise RecordsError(f"trial must be a non-negative integer, got {e.trial!r}")
    schedule = canonical_schedule(e.schedule_json)
    return RecordRow(
        trial=e.trial, schedule_json=schedule, schedule_hash=schedule_hash(schedule),
        error_kind=r.error.value, error_detail=r.detail, costs_json=json.dumps(list(r.costs_s)),
        number=r.number, median_s=r.median_s if r.ok else None,
        min_s=r.min_s if r.ok else None, compile_s=r.compile_s, flops=float(flops),
        gflops=r.gflops(flops), predicted=e.predicted, strategy=e.strategy,
        tuner_version=tuner_version, timestamp=r.timestamp)


def _task(row: TaskRow) -> Task:
    try:
        return make_task(row.op, json.loads(row.shape_json), json.loads(row.attrs_json),
                         row.dtype)
    except (TypeError, ValueError) as err:
        raise RecordsError(f"task row {row.id} ({row.key!r}) is unreadable: {err}") from None


def _target(row: TargetRow) -> Target:
    return Target(row.triple, row.cpu, row.features, row.threads)


def _record_of(row: RecordRow, task: Task, target: Target, machine: str = "") -> Record:
    result = MeasureResult(ErrorKind(row.error_kind), row.error_detail,
                           tuple(json.loads(row.costs_json)), row.number, row.compile_s,
                           row.timestamp, machine)
    return Record(row.id, task, target, row.schedule_json, result, row.flops,
                  row.tuner_version, row.predicted, row.strategy, row.trial)
