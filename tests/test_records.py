"""The measurement log: one contract suite over an in-memory and a file database, real
concurrent writers, interruption, and refusal of databases that are not ours."""

import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from records import (NewRecord, RecordsError, RecordStore, export_best, import_best,
                     read_best, resolve_db_url, schedule_hash)
from tuner.result import ErrorKind, MeasureResult
from tuner.target import Target
from tuner.task import Task

TASK = Task.create("matmul", (32, 32, 32))
OTHER = Task.create("conv2d", (1, 4, 8, 8, 4, 3, 3), pad=1, relu=True)
TARGET = Target("x86_64-test", "testcpu", "+avx,+avx512f", 2)
FOREIGN_TARGET = Target("x86_64-test", "othercpu", "+avx", 2)
WRITER = str(Path(__file__).with_name("records_writer.py"))


def ok(seconds: float, *more: float) -> MeasureResult:
    return MeasureResult(ErrorKind.NONE, "", (seconds,) + more, 3, 0.05, 1_700_000_000.0)


def failed(kind: ErrorKind) -> MeasureResult:
    return MeasureResult(kind, f"{kind.value} detail", (), 0, 0.05, 1_700_000_000.0)


def steps(n: int) -> str:
    """A schedule in canonical form, as the tuner writes and the store keeps them."""
    return json.dumps([{"axis": "i", "factors": [n], "kind": "split"}], separators=(",", ":"))


@pytest.fixture(params=["memory", "file"])
def store(request, tmp_path):
    url = "sqlite://" if request.param == "memory" else f"sqlite:///{tmp_path / 'r.db'}"
    with RecordStore(url) as s:
        yield s


def test_contract(store):
    assert store.best(TASK, TARGET) is None and store.history(TASK, TARGET) == []
    assert store.next_trial(TASK, TARGET) == 0
    added = store.add_many(TASK, TARGET, [
        NewRecord(steps(1), ok(2e-3, 3e-3, 1e-3), 0, predicted=0.5, strategy="random"),
        NewRecord(steps(2), failed(ErrorKind.WRONG_RESULT), 1),   # fast but wrong: never best
        NewRecord(steps(4), ok(1e-3), 2, strategy="evolutionary"),
        NewRecord(steps(8), failed(ErrorKind.CRASH), 3),
        NewRecord(steps(16), ok(4e-3), 4),
    ])
    assert [r.trial for r in added] == [0, 1, 2, 3, 4]
    store.add(OTHER, TARGET, NewRecord(steps(1), ok(5e-4), 0))
    store.add(TASK, FOREIGN_TARGET, NewRecord(steps(32), ok(1e-6), 0))

    best = store.best(TASK, TARGET)
    assert best.schedule_json == steps(4) and best.result.median_s == 1e-3
    assert best.gflops == pytest.approx(2 * 32 ** 3 / 1e-3 / 1e9)
    assert [r.schedule_json for r in store.top_k(TASK, TARGET, 2)] == [steps(4), steps(1)]
    history = store.history(TASK, TARGET)
    assert [r.trial for r in history] == [0, 1, 2, 3, 4]
    assert history[0].predicted == 0.5 and history[0].strategy == "random"
    assert history[0].result.costs_s == (2e-3, 3e-3, 1e-3) and history[0].result.number == 3
    assert history[1].result.error is ErrorKind.WRONG_RESULT
    assert history[1].result.detail == "wrong_result detail" and history[1].gflops == 0
    assert store.measured_hashes(TASK, TARGET) == {schedule_hash(steps(n))
                                                   for n in (1, 2, 4, 8, 16)}
    assert store.next_trial(TASK, TARGET) == 5
    assert {t.key for t in store.tasks()} == {TASK.key, OTHER.key}
    assert {t.key for t in store.targets()} == {TARGET.key, FOREIGN_TARGET.key}
    assert store.count() == 7
    others = store.records_on_target(TARGET, exclude=TASK)
    assert [r.task.key for r in others] == [OTHER.key]
    summary = {(t.key, g.key): (n, bad, b.schedule_json) for t, g, n, bad, b in store.summary()}
    assert summary[(TASK.key, TARGET.key)] == (5, 2, steps(4))
    assert len(store.best_per_task(TARGET)) == 2 and len(store.best_per_task()) == 3


def test_a_failed_batch_is_not_half_written(store):
    store.add(TASK, TARGET, NewRecord(steps(1), ok(1e-3), 0))
    with pytest.raises(RecordsError):  # the second entry has no trial: the schema refuses it
        store.add_many(TASK, TARGET, [NewRecord(steps(2), ok(1e-3), 1),
                                      NewRecord(steps(3), ok(1e-3), None)])
    assert len(store.history(TASK, TARGET)) == 1


def test_export_then_import_round_trips_exactly(store, tmp_path):
    store.add_many(TASK, TARGET, [NewRecord(steps(1), ok(2e-3), 0, 0.25, "random"),
                                  NewRecord(steps(2), ok(1e-3), 1, None, "evolutionary")])
    store.add(OTHER, TARGET, NewRecord(steps(3), ok(1e-4), 0))
    path = tmp_path / "best.json"
    assert export_best(store, path) == 2
    from_file = read_best(path)
    with RecordStore("sqlite://") as fresh:
        assert import_best(fresh, path) == (2, 0)
        assert import_best(fresh, path) == (0, 2)  # merging twice adds nothing
        for original in store.best_per_task():
            copy = fresh.best(original.task, original.target)
            assert copy.task == original.task and copy.target == original.target
            assert copy.schedule_json == original.schedule_json
            assert copy.result == original.result and copy.flops == original.flops
            assert (copy.predicted, copy.strategy, copy.tuner_version) == \
                (original.predicted, original.strategy, original.tuner_version)
    assert sorted(r.schedule_json for r in from_file) == [steps(2), steps(3)]


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ('{"records": []}', "is not a tuner best-schedules file"),
    ('{"format": "tuner-best-schedules", "version": 99}', "has version 99"),
    ('{"format": "tuner-best-schedules", "version": 1, "records": [{"task": 1}]}',
     "record 0 is malformed"),
])
def test_malformed_best_files_are_refused(tmp_path, content, message):
    path = tmp_path / "best.json"
    path.write_text(content)
    with pytest.raises(RecordsError, match=message):
        read_best(path)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_corrupt_and_foreign_files_are_refused_untouched(tmp_path):
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(os.urandom(4096))
    foreign = tmp_path / "foreign.db"
    con = sqlite3.connect(foreign)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()
    damaged = tmp_path / "damaged.db"
    with RecordStore(f"sqlite:///{damaged}") as s:
        s.add(TASK, TARGET, NewRecord(steps(1), ok(1e-3), 0))
    for leftover in (Path(f"{damaged}-wal"), Path(f"{damaged}-shm")):
        leftover.unlink(missing_ok=True)
    data = bytearray(damaged.read_bytes())
    data[100:4096] = os.urandom(3996)  # keep the header, wreck the schema page
    damaged.write_bytes(bytes(data))
    for path, message in ((garbage, "is not a SQLite database"),
                          (foreign, "another application"),
                          (damaged, "corrupt")):
        before = _digest(path)
        with pytest.raises(RecordsError, match=message):
            RecordStore(f"sqlite:///{path}")
        assert _digest(path) == before
        assert not Path(str(path) + "-wal").exists()


def test_newer_schema_is_refused(tmp_path):
    path = tmp_path / "new.db"
    RecordStore(f"sqlite:///{path}").close()
    con = sqlite3.connect(path)
    con.execute("UPDATE tuner_meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(RecordsError, match="schema version 99, newer than the 1"):
        RecordStore(f"sqlite:///{path}")


def test_db_url_resolution(tmp_path):
    env = {"XDG_DATA_HOME": str(tmp_path / "data")}
    assert resolve_db_url(None, env) == f"sqlite:///{tmp_path}/data/tuner/records.db"
    assert (tmp_path / "data" / "tuner").is_dir()
    assert resolve_db_url(None, {**env, "TUNER_DB": "postgresql://u@h/db"}) == "postgresql://u@h/db"
    assert resolve_db_url(str(tmp_path / "x.db"), env) == f"sqlite:///{tmp_path}/x.db"
    with pytest.raises(RecordsError, match="not a database URL"):
        RecordStore("::nonsense::")
    with pytest.raises(RecordsError, match="cannot open nonsense://: Can't load plugin"):
        RecordStore("nonsense://")


def test_four_processes_writing_one_file_lose_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    RecordStore(url).close()
    procs = [subprocess.Popen([sys.executable, WRITER, url, "150", str(w)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for w in range(4)]
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    with RecordStore(url) as s:
        assert s.count() == 600
        assert len(s.tasks()) == 2 and len(s.targets()) == 1


def test_sigint_leaves_every_finished_record_readable(tmp_path):
    url = f"sqlite:///{tmp_path / 'interrupted.db'}"
    proc = subprocess.Popen([sys.executable, WRITER, url, "100000", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    committed = 0
    while committed < 50:
        committed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode != 0
    lines = out.split()
    committed = int(lines[-1]) if lines else committed
    with RecordStore(url) as s:
        history = s.history(Task.create("matmul", (16, 16, 16)),
                            Target("x86_64-test", "testcpu", "+avx", 1))
    assert committed <= len(history) <= committed + 1
    assert [r.trial for r in history] == list(range(len(history)))
    con = sqlite3.connect(tmp_path / "interrupted.db")
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
