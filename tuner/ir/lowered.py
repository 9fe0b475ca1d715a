"""A stored schedule on its task: the loop nest it makes today, built once per process.

A schedule is kept as JSON steps; its loop nest is derived from the task's compute definition
(`apply_steps`). Compute definitions evolve (a pointwise convolution got a pixel axis), so a
stored schedule may no longer apply to its task: `schedule_applies` is the test every reader of
the best records passes to the store, which then skips such a record and serves the next best
(the record itself stays in the log). The nest the test built is kept, so that the build that
chose the record (a callable, a library and its header, a package's graph) lowers it no
second time.
"""

from __future__ import annotations

import functools

from tuner.errors import TunerError
from tuner.ir.schedule import LoopNest, apply_steps, schedule_from_json
from tuner.ir.task import Task


def lower_stored(task: Task, schedule_json: str) -> LoopNest | None:
    """The loop nest of a stored schedule on its task, or None if it no longer applies;
    built anew (warm start lowers thousands of records once each: caching them would only
    evict the nests builds keep)."""
    try:
        return apply_steps(task.dag(), schedule_from_json(schedule_json))
    except (TunerError, KeyError, TypeError, ValueError):  # as `tune import` checks them
        return None


# a candidate with its nest holds ~9 kB: enough for every task of a large model, bounded
# for a long process
@functools.lru_cache(maxsize=256)
def lowered(task: Task, schedule_json: str) -> LoopNest | None:
    """`lower_stored`, kept: a build checks a record's schedule, then uses its nest."""
    return lower_stored(task, schedule_json)


def schedule_applies(record) -> bool:
    """Whether a stored record's schedule applies to its task's compute definition today."""
    return lowered(record.task, record.schedule_json) is not None
