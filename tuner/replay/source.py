"""Where builds read their schedules: the records, opened once, and a schedule chosen per task.

    with open_schedules(db) as source:      # a `tune export` JSON file, a database URL or
        choice = source.choose(task, target) # file, or None for the user's default database

`tuner.build`, `tuner.compile_model`, `tune build` and the package writer all read records
through this module and no other: a build of a model's 50 tasks opens its database once and
asks it for each task's best records by task, not the whole table per task.

`choose` picks, for a task on this target: the best stored record of this target; else, only
if the caller allows it, the best record of another target (a schedule is plain data and
compiles anywhere, but its speed was measured elsewhere); else the default schedule, with a
`NoRecordWarning` and `choice.tuned == False` for a build to check. Records whose schedule no
longer applies to its task (tuner/ir/lowered.py) are passed over for the next best. The
`Choice` carries the schedule's loop nest, lowered once here, to every consumer: the JIT, the
library and its header, a package's graph.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from records import Record, RecordsError, RecordStore, read_best, resolve_db_url
from tuner.errors import TunerError
from tuner.ir.lowered import lowered, schedule_applies
from tuner.ir.schedule import LoopNest, Step, schedule_from_json
from tuner.ir.target import Target
from tuner.ir.task import Task
from tuner.search.default import default_lowered


class NoRecordWarning(UserWarning):
    """No tuned record matches: the default schedule is built instead."""


@dataclass(frozen=True)
class Choice:
    task: Task
    target: Target
    steps: tuple[Step, ...]
    tuned: bool
    source: str          # where the schedule came from, for messages and headers
    gflops: float | None  # as measured when tuned (None for the default schedule)
    record_target: Target | None
    nest: LoopNest = field(compare=False, repr=False)  # `steps` lowered on the task


class ScheduleSource:
    """The best records of each task per target, from one JSON file or one open database."""

    def __init__(self, name: str, best_by_target: Callable[[Task], list[Record]],
                 tasks: Callable[[Target], list[Task]],
                 close: Callable[[], None] = lambda: None):
        self.name = name
        self._best_by_target = best_by_target
        self._tasks = tasks
        self._close = close

    def __enter__(self) -> "ScheduleSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._close()

    def best_by_target(self, task: Task) -> list[Record]:
        """The best record of `task` on every target that has one whose schedule applies."""
        return self._best_by_target(task)

    def tasks(self, target: Target) -> list[Task]:
        """The tasks `tune build --all` builds: a database's with a usable record on
        `target`; every task of a JSON file (a file is exported for the targets it names)."""
        return self._tasks(target)

    def choose(self, task: Task, target: Target, allow_foreign_target: bool = False) -> Choice:
        """The schedule to build for `task` on `target` (see the module's docstring)."""
        records = self.best_by_target(task)
        same = [r for r in records if r.target.key == target.key and r.result.ok]
        others = [r for r in records if r.result.ok]
        if same or others:
            best = max(same or others, key=lambda r: r.gflops)
            if not same and not allow_foreign_target:
                raise TunerError(
                    f"the only records of {task.key} in {self.name} were tuned on another "
                    f"target ({best.target.cpu}, {best.target.threads} threads, key "
                    f"{best.target.key}); this is {target.cpu} with {target.threads} threads "
                    f"({target.key}). Tune here, or pass allow_foreign_target=True "
                    f"(--allow-foreign-target) to use it anyway")
            return Choice(task, target, schedule_from_json(best.schedule_json), True, self.name,
                          best.gflops, best.target, lowered(task, best.schedule_json))
        warnings.warn(f"no tuned record of {task.key} for {target.key} in {self.name}; "
                      f"building the default schedule", NoRecordWarning, stacklevel=2)
        steps, nest = default_lowered(task.dag(), target)
        return Choice(task, target, steps, False, self.name, None, None, nest)


def open_schedules(db: str | Path | None) -> ScheduleSource:
    """The records at `db`: a best-schedules JSON file (`tune export`), a database URL or
    file, or None for the user's default database (where no file yet means no records; a
    named file that does not exist is an error, not an empty log)."""
    if db is not None and str(db).endswith(".json"):
        records = read_best(db)
        by_task: dict[str, list[Record]] = {}
        for r in records:
            if schedule_applies(r):
                by_task.setdefault(r.task.key, []).append(r)
        return ScheduleSource(str(db), lambda task: by_task.get(task.key, []),
                              lambda target: [r.task for r in records])
    url = resolve_db_url(None if db is None else str(db))
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///"):])
        if not path.exists():
            if db is not None:
                raise RecordsError(f"no records database at {db}")
            return ScheduleSource(url, lambda task: [], lambda target: [])
    store = RecordStore(url)
    return ScheduleSource(
        store.display_url, lambda task: store.best_by_target(task, schedule_applies),
        lambda target: [r.task for r in store.best_per_task(target, schedule_applies)],
        store.close)
