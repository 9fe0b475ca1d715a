"""The values the record store hands out and takes in, and the identity of a schedule.

Callers never see ORM rows (as in Optuna's storage): a `Record` is a frozen dataclass built
from plain `Task`, `Target` and `MeasureResult` values, so it can cross process boundaries,
be compared in tests and outlive the session that read it. A schedule is JSON text the store
does not interpret; it keeps it in canonical form (sorted keys, no spaces), so that equal
schedules are equal strings, the SHA-1 of that text identifies "already measured", and the
exported JSON file round-trips byte for byte.

Tasks are rebuilt here directly from their stored parts rather than through `Task.create`:
validating a shape is the templates' job and must not decide whether old records can be read.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from tuner.errors import TunerError
from tuner.measure.result import MeasureResult, NewRecord  # noqa: F401 (NewRecord: re-exported)
from tuner.ir.target import Target
from tuner.ir.task import Task


class RecordsError(TunerError):
    """The log or a records file cannot be used: foreign, corrupt, too new, unreachable, or
    a value that does not fit the schema. The message names the database or file."""


def canonical_schedule(schedule_json: str) -> str:
    """The canonical text of a schedule (a JSON list of step objects)."""
    try:
        steps = json.loads(schedule_json)
    except (TypeError, json.JSONDecodeError) as err:
        raise RecordsError(f"a schedule is JSON text, got {str(schedule_json)[:60]!r}: {err}") \
            from None
    if not isinstance(steps, list):
        raise RecordsError(f"a schedule is a JSON list of steps, got {type(steps).__name__}")
    return json.dumps(steps, sort_keys=True, separators=(",", ":"))


def schedule_hash(schedule_json: str) -> str:
    """SHA-1 of the canonical text: equal for schedules that differ only in formatting."""
    return hashlib.sha1(canonical_schedule(schedule_json).encode()).hexdigest()


def make_task(op, shape, attrs, dtype) -> Task:
    """A Task from stored parts, type-checked but not validated by the operator's template.

    Attributes are put in sorted order, the canonical order `Task.create` uses."""
    if not isinstance(op, str) or not isinstance(dtype, str):
        raise TypeError(f"op and dtype must be strings, got {op!r} and {dtype!r}")
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise TypeError(f"shape must be a list of integers, got {shape!r}")
    if not isinstance(attrs, dict) or not all(isinstance(k, str) and type(v) in (int, bool)
                                              for k, v in attrs.items()):
        raise TypeError(f"attrs must map names to integers or booleans, got {attrs!r}")
    return Task(op, tuple(shape), tuple(sorted(attrs.items())), dtype)


@dataclass(frozen=True, slots=True)
class Record:
    """One measured candidate as stored. `id` is the database's (a position in the file for
    records read from a best-schedules file)."""
    id: int
    task: Task
    target: Target
    schedule_json: str          # canonical
    result: MeasureResult
    flops: float                # floating-point operations of one run of the task
    tuner_version: str          # the tuner that measured it
    predicted: float | None
    strategy: str | None
    trial: int                  # position in the search of its (task, target)

    @property
    def gflops(self) -> float:
        """0 for a failed candidate."""
        return self.result.gflops(self.flops)
