"""The best-schedules JSON file: a few kilobytes a project keeps next to its code.

`RecordStore.export_best` writes the best record per (task, target); the build step reads the
file with `read_best` in place of a database, and `RecordStore.import_json` merges one into a
database. The file holds schedules as JSON steps (not strings, so that it diffs well) and
measured figures, never code, and names its format and version so that a foreign or future
file is refused with a message instead of being half-read.

    {"format": "tuner-best-schedules", "version": 1, "records": [
      {"task": {...}, "target": {...}, "schedule": [...], "result": {...}, "flops": ...,
       "gflops": ..., "trial": ..., "predicted": ..., "strategy": ..., "tuner_version": ...}]}

`gflops` is for readers of the file; it is derived from the result and flops when read.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from records.record import Record, RecordsError, canonical_schedule, make_task
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.ir.target import Target

FORMAT = "tuner-best-schedules"
VERSION = 1


def export_best(store, path: str | Path, target: Target | None = None,
                usable: Callable[[Record], bool] | None = None) -> int:
    """`store.export_best(path, target, usable)`, as `tuner/cli.py` spells it."""
    return store.export_best(path, target, usable)


def record_to_json(r: Record) -> dict:
    res = r.result
    return {"task": r.task.to_json(), "target": r.target.to_json(),
            "schedule": json.loads(r.schedule_json), "trial": r.trial,
            "result": {"error": res.error.value, "detail": res.detail,
                       "costs_s": list(res.costs_s), "number": res.number,
                       "compile_s": res.compile_s, "timestamp": res.timestamp,
                       "machine": res.machine},
            "flops": r.flops, "gflops": r.gflops, "predicted": r.predicted,
            "strategy": r.strategy, "tuner_version": r.tuner_version}


def write_best(records: Iterable[Record], path: str | Path) -> None:
    """Writes the file whole or not at all: an interrupted export leaves the old file."""
    path = Path(path)
    data = {"format": FORMAT, "version": VERSION,
            "records": [record_to_json(r) for r in records]}
    text = json.dumps(data, indent=1, sort_keys=True) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as err:
        raise RecordsError(f"cannot write {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as err:
        raise RecordsError(f"cannot write {path}: {err.strerror}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_best(path: str | Path) -> list[Record]:
    """The records of a best-schedules file, without a database (ids: positions in the file)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise RecordsError(f"cannot read {path}: {err.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RecordsError(f"{path} is not a JSON file: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordsError(f"{path} is not a tuner best-schedules file (it has no "
                           f"\"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise RecordsError(f"{path} has best-schedules format version "
                           f"{data.get('version')!r}; this tuner reads version {VERSION}")
    items = data.get("records")
    if not isinstance(items, list):
        raise RecordsError(f"{path}: \"records\" must be a list, got {type(items).__name__}")
    out = []
    for i, item in enumerate(items):
        try:
            out.append(_record_from_json(i, item))
        except KeyError as err:
            raise RecordsError(f"{path}: record {i} has no field {err}") from None
        except (TypeError, ValueError, AttributeError, RecordsError) as err:
            raise RecordsError(f"{path}: record {i} is malformed: {err}") from None
    return out


def _record_from_json(i: int, item: dict) -> Record:
    t, res = item["task"], item["result"]
    task = make_task(t["op"], t["shape"], t.get("attrs", {}), t.get("dtype", "float32"))
    g = item["target"]
    if not all(isinstance(g[k], str) for k in ("triple", "cpu", "features")) \
            or type(g["threads"]) is not int:
        raise TypeError(f"target must have string triple, cpu, features and integer threads, "
                        f"got {g!r}")
    target = Target(g["triple"], g["cpu"], g["features"], g["threads"])
    result = MeasureResult(ErrorKind(res["error"]), str(res.get("detail", "")),
                           tuple(_number(c) for c in res["costs_s"]), _integer(res["number"]),
                           _number(res["compile_s"]), _number(res["timestamp"]),
                           str(res.get("machine", "")))
    if result.ok and not result.costs_s:
        raise ValueError("a successful result without costs")
    predicted, strategy = item.get("predicted"), item.get("strategy")
    return Record(i, task, target, canonical_schedule(json.dumps(item["schedule"])), result,
                  _number(item["flops"]), str(item["tuner_version"]),
                  None if predicted is None else _number(predicted),
                  None if strategy is None else str(strategy), _integer(item["trial"]))


def _integer(x) -> int:
    if type(x) is not int:
        raise TypeError(f"expected an integer, got {x!r}")
    return x


def _number(x) -> float:
    if type(x) not in (int, float):
        raise TypeError(f"expected a number, got {x!r}")
    return float(x)
