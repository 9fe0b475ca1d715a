"""The best-schedules JSON file: a few kilobytes a project keeps next to its code.

`tune export` writes the best record per (task, target); `tune build` and `tuner.build` read it
in place of a database, and `import_best` merges one into a database. The file holds schedules
as JSON steps and measured figures, never code.
"""

from __future__ import annotations

import json
from pathlib import Path

from records.store import NewRecord, Record, RecordsError, RecordStore, schedule_hash
from tuner.errors import TunerError
from tuner.result import ErrorKind, MeasureResult
from tuner.target import Target
from tuner.task import Task

FORMAT = "tuner-best-schedules"
VERSION = 1


def _record_json(r: Record) -> dict:
    res = r.result
    return {"task": r.task.to_json(), "target": r.target.to_json(),
            "schedule": json.loads(r.schedule_json), "trial": r.trial,
            "result": {"error": res.error.value, "detail": res.detail,
                       "costs_s": list(res.costs_s), "number": res.number,
                       "compile_s": res.compile_s, "timestamp": res.timestamp},
            "flops": r.flops, "gflops": r.gflops, "predicted": r.predicted,
            "strategy": r.strategy, "tuner_version": r.tuner_version}


def export_best(store: RecordStore, path: str | Path, target: Target | None = None) -> int:
    records = store.best_per_task(target)
    data = {"format": FORMAT, "version": VERSION, "records": [_record_json(r) for r in records]}
    Path(path).write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return len(records)


def read_best(path: str | Path) -> list[Record]:
    """Records of a best-schedules file, without a database (ids are positions in the file)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as err:
        raise RecordsError(f"cannot read {path}: {err.strerror}") from None
    except json.JSONDecodeError as err:
        raise RecordsError(f"{path} is not JSON: {err}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecordsError(f"{path} is not a tuner best-schedules file "
                           f"(no \"format\": \"{FORMAT}\")")
    if data.get("version") != VERSION:
        raise RecordsError(f"{path} has version {data.get('version')!r}; this tuner reads "
                           f"{VERSION}")
    out = []
    for i, item in enumerate(data.get("records", [])):
        try:
            res = item["result"]
            result = MeasureResult(ErrorKind(res["error"]), str(res.get("detail", "")),
                                   tuple(float(c) for c in res["costs_s"]), int(res["number"]),
                                   float(res["compile_s"]), float(res["timestamp"]))
            out.append(Record(i, Task.from_json(item["task"]), Target.from_json(item["target"]),
                              int(item["trial"]), json.dumps(item["schedule"], sort_keys=True,
                                                             separators=(",", ":")),
                              result, float(item["flops"]), item.get("predicted"),
                              item.get("strategy"), str(item["tuner_version"])))
        except (KeyError, TypeError, ValueError, TunerError) as err:
            raise RecordsError(f"{path}: record {i} is malformed: {err}") from None
    return out


def import_best(store: RecordStore, path: str | Path) -> tuple[int, int]:
    """Merges a best-schedules file into the store; returns (added, already present)."""
    added = skipped = 0
    for r in read_best(path):
        if schedule_hash(r.schedule_json) in store.measured_hashes(r.task, r.target):
            skipped += 1
            continue
        store.add(r.task, r.target, NewRecord(r.schedule_json, r.result,
                                              store.next_trial(r.task, r.target), r.predicted,
                                              r.strategy), tuner_version=r.tuner_version)
        added += 1
    return added, skipped
