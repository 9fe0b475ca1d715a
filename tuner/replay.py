"""Replaying the log in builds: the best kernel per task, as a Python callable or a library.

    kernel = tuner.build("conv2d", shape=(1, 64, 56, 56, 64, 3, 3), stride=1, pad=1,
                         db="records.db")            # or a best-schedules JSON file
    out = kernel(data, weight)                        # or kernel.bind(weight=w)(data)

`tuner.build` (tuner/__init__.py) wires the records in: it reads a task's best records with
`records.best_records` and hands them to `select_schedule` here, so this module, like the
rest of tuner/, never imports records/.

`select_schedule` picks, for a task on this target: the best stored record of this target;
else, only if the caller allows it, the best record of another target (a schedule is plain
data and compiles anywhere, but its speed was measured elsewhere); else the default schedule,
with a warning and `kernel.tuned == False` for a build to check. Compiled kernels are cached
in the process by (task, schedule, target, tuner version): replaying a log twice compiles once.
Machine code is never cached on disk: a cache file would be code loaded from a file.

Every reader of the best records passes `schedule_applies` (tuner/lowered.py) to the store:
a record whose schedule no longer applies to its task is skipped for the next best.

`tuner.aot.build_library` writes, for any number of tasks, one object file, one shared
library and one C header. (This module is not `tuner/build.py`: that name would shadow the
`tuner.build` function every caller uses.)
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from tuner.version import __version__
from tuner.default import default_schedule
from tuner.errors import TunerError
from tuner.jit import Kernel
from tuner.pseudo import pseudo_code
from tuner.schedule import Step, apply_steps, schedule_from_json, schedule_to_json
from tuner.target import Target
from tuner.task import Task


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


def select_schedule(task: Task, target: Target, records: list, source: str,
                    allow_foreign_target: bool = False) -> Choice:
    """The schedule to build for `task` on `target`, from the task's best `records` (per
    target) read from `source` (records.best_records reads them from a database or file)."""
    same = [r for r in records if r.target.key == target.key and r.result.ok]
    if same:
        best = max(same, key=lambda r: r.gflops)
        return Choice(task, target, schedule_from_json(best.schedule_json), True, source,
                      best.gflops, best.target)
    others = [r for r in records if r.result.ok]
    if others:
        best = max(others, key=lambda r: r.gflops)
        if not allow_foreign_target:
            raise TunerError(
                f"the only records of {task.key} in {source} were tuned on another target "
                f"({best.target.cpu}, {best.target.threads} threads, key {best.target.key}); "
                f"this is {target.cpu} with {target.threads} threads ({target.key}). Tune here, "
                f"or pass allow_foreign_target=True (--allow-foreign-target) to use it anyway")
        return Choice(task, target, schedule_from_json(best.schedule_json), True, source,
                      best.gflops, best.target)
    warnings.warn(f"no tuned record of {task.key} for {target.key} in {source}; "
                  f"building the default schedule", NoRecordWarning, stacklevel=3)
    return Choice(task, target, default_schedule(task.dag(), target), False, source, None,
                  None)


_CACHE: dict[tuple[str, str, str, str], Kernel] = {}


def compile_cached(task: Task, steps: tuple[Step, ...], target: Target) -> Kernel:
    key = (task.key, schedule_to_json(steps), target.key, __version__)
    kernel = _CACHE.get(key)
    if kernel is None:
        kernel = Kernel(apply_steps(task.dag(), steps), target)
        _CACHE[key] = kernel
    return kernel


class BuiltKernel:
    """What `build` returns: a callable kernel and how it was chosen."""

    def __init__(self, kernel: Kernel, choice: Choice):
        self.kernel, self.choice = kernel, choice
        self.tuned = choice.tuned
        self.task, self.target = choice.task, choice.target

    def __call__(self, *inputs):
        return self.kernel(*inputs)

    def bind(self, **constants):
        return self.kernel.bind(**constants)

    def pseudo_code(self) -> str:
        return pseudo_code(self.kernel.nest)


def build_choice(choice: Choice) -> BuiltKernel:
    return BuiltKernel(compile_cached(choice.task, choice.steps, choice.target), choice)
