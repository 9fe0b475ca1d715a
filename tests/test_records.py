"""The measurement log: one contract suite over an in-memory and a file database, real
concurrent writer processes, interruption by SIGINT and SIGKILL, refusal of files that are not
ours (left byte-for-byte untouched), and the best-schedules JSON file."""

import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import records_helpers as h

from records import (NewRecord, Record, RecordsError, RecordStore, read_best, resolve_db_url,
                     schedule_hash)
from records.claims import owner_is_gone, owner_key
from records.models import SCHEMA_VERSION
from tuner.measure.result import ErrorKind
from tuner.ir.target import Target
from tuner.ir.task import Task

SPAWN = multiprocessing.get_context("spawn")
POSTGRES_URL, scratch_database = h.POSTGRES_URL, h.scratch_database


@pytest.fixture(params=["memory", "file"] + (["postgresql"] if POSTGRES_URL else []))
def store(request, tmp_path):
    with contextlib.ExitStack() as stack:
        if request.param == "memory":
            url = "sqlite://"
        elif request.param == "file":
            url = resolve_db_url(str(tmp_path / "r.db"))
        else:
            url = stack.enter_context(scratch_database(POSTGRES_URL))
        yield stack.enter_context(RecordStore(url))


def add(store, task, n, result, trial, target=h.TARGET, **kw) -> Record:
    return store.add(task, target, h.schedule(n), result, flops=h.flops(task), trial=trial,
                     tuner_version=h.VERSION, **kw)


def without_ids(records):
    return [dataclasses.replace(r, id=0) for r in records]


# ----------------------------------------------------------------------------- contract
def test_an_empty_store_answers_every_query(store):
    assert store.best(h.MATMUL, h.TARGET) is None
    assert store.top_k(h.MATMUL, h.TARGET, 3) == store.history(h.MATMUL, h.TARGET) == []
    assert store.measured_hashes(h.MATMUL, h.TARGET) == set()
    assert store.next_trial(h.MATMUL, h.TARGET) == 0
    assert store.count() == store.count(h.MATMUL) == 0
    assert store.tasks() == store.targets() == store.best_per_task() == store.summary() == []


def test_what_is_added_is_what_is_read_back(store):
    added = add(store, h.MATMUL, 1, h.ok(2e-3, 3e-3, 1e-3), 0, predicted=0.5,
                strategy="evolutionary")
    assert added.task == h.MATMUL and added.target == h.TARGET and added.trial == 0
    assert added.result == h.ok(2e-3, 3e-3, 1e-3) and added.flops == h.flops(h.MATMUL)
    assert (added.predicted, added.strategy, added.tuner_version) == \
        (0.5, "evolutionary", h.VERSION)
    assert added.gflops == pytest.approx(h.flops(h.MATMUL) / 2e-3 / 1e9)
    assert store.history(h.MATMUL, h.TARGET) == [added]
    assert store.tasks() == [h.MATMUL] and store.targets() == [h.TARGET]
    # booleans stay booleans: the task the store rebuilds serializes like the original
    assert store.tasks()[0].to_json() == h.MATMUL.to_json()
    assert hash(added) == hash(store.best(h.MATMUL, h.TARGET))
    with pytest.raises(dataclasses.FrozenInstanceError):
        added.trial = 3


def test_best_is_the_fastest_correct_record(store):
    store.add_many(h.MATMUL, h.TARGET, [
        NewRecord(h.schedule(1), h.ok(2e-3), 0, strategy="random"),
        NewRecord(h.schedule(2), h.failed(ErrorKind.WRONG_RESULT), 1),  # fast but wrong
        NewRecord(h.schedule(3), h.ok(1e-3, 9e-3, 1e-3), 2),
        NewRecord(h.schedule(4), h.failed(ErrorKind.CRASH), 3),
        NewRecord(h.schedule(5), h.ok(4e-3), 4),
    ], flops=h.flops(h.MATMUL), tuner_version=h.VERSION)
    add(store, h.MATMUL, 6, h.ok(1e-9), 0, target=h.OTHER_TARGET)  # another target's
    add(store, h.CONV, 7, h.ok(5e-4), 0)

    best = store.best(h.MATMUL, h.TARGET)
    assert best.schedule_json == h.schedule(3) and best.result.median_s == 1e-3
    assert [r.schedule_json for r in store.top_k(h.MATMUL, h.TARGET, 2)] == \
        [h.schedule(3), h.schedule(1)]
    assert len(store.top_k(h.MATMUL, h.TARGET, 10)) == 3 and store.top_k(h.MATMUL, h.TARGET, 0) \
        == []
    per_pair = {(r.task, r.target): r.schedule_json for r in store.best_per_task()}
    assert per_pair == {(h.MATMUL, h.TARGET): h.schedule(3),
                        (h.MATMUL, h.OTHER_TARGET): h.schedule(6),
                        (h.CONV, h.TARGET): h.schedule(7)}
    assert {r.task for r in store.best_per_task(h.OTHER_TARGET)} == {h.MATMUL}
    assert [(t, g, n, bad, b.schedule_json) for t, g, n, bad, b in store.summary()] == [
        (h.MATMUL, h.TARGET, 5, 2, h.schedule(3)),
        (h.MATMUL, h.OTHER_TARGET, 1, 0, h.schedule(6)), (h.CONV, h.TARGET, 1, 0, h.schedule(7))]


def test_best_skips_what_the_caller_cannot_use(store):
    """`usable` (the tuner's "the schedule still applies") passes over records, however many
    are faster: the best is the fastest it accepts, per pair too, and a pair with none has
    no best."""
    store.add_many(h.MATMUL, h.TARGET, [NewRecord(h.schedule(n), h.ok(1e-3 * (n + 1)), n)
                                        for n in range(40)],
                   flops=h.flops(h.MATMUL), tuner_version=h.VERSION)
    add(store, h.CONV, 50, h.ok(1e-4), 0)
    usable = {h.schedule(n) for n in (37, 39)}.__contains__

    def accepts(record):
        return usable(record.schedule_json)
    assert store.best(h.MATMUL, h.TARGET, accepts).schedule_json == h.schedule(37)
    assert store.best(h.MATMUL, h.TARGET).schedule_json == h.schedule(0)
    assert [r.schedule_json for r in store.best_per_task(usable=accepts)] == [h.schedule(37)]
    assert [r.schedule_json for r in store.best_by_target(h.CONV, accepts)] == []
    assert store.best(h.CONV, h.TARGET, accepts) is None


def test_claims_keep_processes_off_each_others_schedules(store):
    """A schedule is this process's to measure unless it is measured, listed twice, or
    claimed by another owner who is alive and within the lease; committing the measured
    records drops their claims; releasing drops the rest (or the schedules named)."""
    other = owner_key(os.getppid())  # a live process that is not this one
    j = [h.schedule(n) for n in range(6)]
    add(store, h.MATMUL, 0, h.ok(1e-3), 0)
    assert store.claim(h.MATMUL, h.TARGET, [j[1]], lease_s=60, owner=other) == [True]
    assert store.claim(h.MATMUL, h.TARGET, [j[2]], lease_s=60, owner=other,
                       now=time.time() - 120) == [True]  # its lease has run out
    assert store.claim(h.MATMUL, h.TARGET, [j[0], j[1], j[2], j[3], j[3], j[4]],
                       lease_s=60) == [False, False, True, True, False, True]
    assert store.claim(h.MATMUL, h.TARGET, [j[3]], lease_s=60) == [True]  # ours already
    mine = {c[0] for c in store.claims(h.MATMUL, h.TARGET) if c[1] == owner_key()}
    assert mine == {schedule_hash(j[n]) for n in (2, 3, 4)}
    store.add_many(h.MATMUL, h.TARGET, [NewRecord(j[2], h.ok(1e-3), 7)],
                   flops=h.flops(h.MATMUL), tuner_version=h.VERSION)
    assert {c[0] for c in store.claims(h.MATMUL, h.TARGET)} == \
        {schedule_hash(j[n]) for n in (1, 3, 4)}
    assert store.release_claims(h.MATMUL, h.TARGET, [j[4], j[1]]) == 1  # j[1] is not ours
    assert {c[0] for c in store.claims(h.MATMUL, h.TARGET)} == \
        {schedule_hash(j[n]) for n in (1, 3)}
    assert store.release_claims(h.MATMUL, h.TARGET) == 1
    assert [c[1] for c in store.claims(h.MATMUL, h.TARGET)] == [other]
    assert store.claim(h.MATMUL, h.TARGET, [j[1], j[5]], lease_s=60, owner=other) == \
        [True, True]


def test_the_claim_of_a_process_that_is_gone_lapses_at_once(store):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = owner_key(sleeper.pid)
    assert not owner_is_gone(gone)
    assert store.claim(h.MATMUL, h.TARGET, [h.schedule(1)], lease_s=3600, owner=gone) == [True]
    assert store.claim(h.MATMUL, h.TARGET, [h.schedule(1)], lease_s=60) == [False]
    sleeper.kill()
    sleeper.wait()
    assert owner_is_gone(gone)
    assert store.claim(h.MATMUL, h.TARGET, [h.schedule(1)], lease_s=60) == [True]
    assert not owner_is_gone("another-machine/1/1")  # cannot be known here: its lease ends it


def test_the_store_numbers_trials_after_the_last(store):
    add(store, h.MATMUL, 0, h.ok(1e-3), 5)
    batch = [NewRecord(h.schedule(n), h.ok(1e-3), 0) for n in (1, 2, 3)]
    added = store.add_many(h.MATMUL, h.TARGET, batch, flops=h.flops(h.MATMUL),
                           tuner_version=h.VERSION, number_trials=True)
    assert [r.trial for r in added] == [6, 7, 8]
    assert [r.trial for r in store.history(h.MATMUL, h.TARGET)] == [5, 6, 7, 8]
    first = store.add_many(h.CONV, h.TARGET, batch[:1], flops=h.flops(h.CONV),
                           tuner_version=h.VERSION, number_trials=True)
    assert first[0].trial == 0


def test_a_task_whose_records_all_failed_has_no_best(store):
    add(store, h.MATMUL, 1, h.failed(ErrorKind.TIMEOUT), 0)
    assert store.best(h.MATMUL, h.TARGET) is None and store.best_per_task() == []
    assert store.summary()[0][2:] == (1, 1, None)


def test_history_is_in_trial_order_with_failures(store):
    for trial, n in ((2, 10), (0, 11), (1, 12), (1, 13)):
        result = h.ok(1e-3) if n % 2 else h.failed(ErrorKind.COMPILE_ERROR)
        add(store, h.MATMUL, n, result, trial)
    history = store.history(h.MATMUL, h.TARGET)
    assert [(r.trial, r.schedule_json) for r in history] == \
        [(0, h.schedule(11)), (1, h.schedule(12)), (1, h.schedule(13)), (2, h.schedule(10))]
    assert history[1].result == h.failed(ErrorKind.COMPILE_ERROR) and history[1].gflops == 0
    assert store.next_trial(h.MATMUL, h.TARGET) == 3
    assert store.next_trial(h.CONV, h.TARGET) == 0


def test_measured_hashes_ignore_formatting(store):
    add(store, h.MATMUL, 1, h.ok(1e-3), 0)
    store.add(h.MATMUL, h.TARGET, h.schedule(2, spaced=True), h.failed(ErrorKind.CRASH),
              flops=1.0, trial=1, tuner_version=h.VERSION)
    assert store.measured_hashes(h.MATMUL, h.TARGET) == \
        {schedule_hash(h.schedule(1)), schedule_hash(h.schedule(2, spaced=True))}
    assert schedule_hash(h.schedule(2)) == schedule_hash(h.schedule(2, spaced=True))
    # stored canonically, so equal schedules are equal strings
    assert store.history(h.MATMUL, h.TARGET)[1].schedule_json == h.schedule(2)
    assert store.measured_hashes(h.MATMUL, h.OTHER_TARGET) == set()


def test_counts_and_warm_start_records(store):
    for i in range(3):
        add(store, h.MATMUL, i, h.ok(1e-3), i)
    add(store, h.MATMUL, 9, h.failed(ErrorKind.OUT_OF_MEMORY), 3)
    add(store, h.CONV, 1, h.ok(1e-3), 0)
    add(store, h.CONV, 2, h.ok(1e-3), 0, target=h.OTHER_TARGET)
    assert store.count() == 6 and store.count(h.MATMUL) == 4
    assert store.count(h.MATMUL, h.TARGET, ok_only=True) == 3
    assert store.count(target=h.OTHER_TARGET) == 1
    others = store.records_on_target(h.TARGET, exclude=h.MATMUL)
    assert [(r.task, r.target) for r in others] == [(h.CONV, h.TARGET)]
    assert len(store.records_on_target(h.TARGET)) == 4
    assert [r.trial for r in store.records_on_target(h.TARGET, limit=2)] == [0, 2]  # newest


@pytest.mark.parametrize("entry, message", [
    (NewRecord("not json", h.ok(1e-3), 1), "a schedule is JSON text"),
    (NewRecord('{"kind": "split"}', h.ok(1e-3), 1), "a JSON list of steps"),
    (NewRecord(h.schedule(1), h.ok(), 1), "must have costs"),
    (NewRecord(h.schedule(1), h.ok(1e-3), -1), "trial must be a non-negative integer"),
    (NewRecord(h.schedule(1), h.ok(1e-3), None), "trial must be a non-negative integer"),
])
def test_a_bad_entry_fails_the_whole_batch(store, entry, message):
    add(store, h.MATMUL, 0, h.ok(1e-3), 0)
    with pytest.raises(RecordsError, match=message):
        store.add_many(h.CONV, h.TARGET, [NewRecord(h.schedule(5), h.ok(1e-3), 0), entry],
                       flops=1.0, tuner_version=h.VERSION)
    assert store.count() == 1 and store.tasks() == [h.MATMUL]


def test_the_schema_refuses_what_it_constrains_and_the_store_goes_on(store):
    no_threads = Target("x86_64-unknown-linux-gnu", "znver4", "+avx", 0)
    with pytest.raises(RecordsError, match="database error on .*(CHECK|check constraint)"):
        add(store, h.MATMUL, 1, h.ok(1e-3), 0, target=no_threads)
    assert add(store, h.MATMUL, 1, h.ok(1e-3), 0).trial == 0 and store.targets() == [h.TARGET]


def test_a_task_with_unsorted_attributes_is_refused(store):
    unsorted = Task("matmul", (8, 8, 8), (("relu", False), ("bias", False)))
    with pytest.raises(RecordsError, match="task attributes must be in sorted order"):
        add(store, unsorted, 1, h.ok(1e-3), 0)
    assert store.tasks() == []


# ----------------------------------------------------------------------------- JSON file
def test_export_then_import_round_trips_exactly(store, tmp_path):
    add(store, h.MATMUL, 1, h.ok(2e-3, 1e-3, 3e-3), 0, predicted=0.25, strategy="random")
    add(store, h.MATMUL, 2, h.ok(1e-3, 1.5e-3, 1e-3), 1, strategy="evolutionary")
    add(store, h.MATMUL, 3, h.failed(ErrorKind.WRONG_RESULT), 2)
    add(store, h.CONV, 4, h.ok(1e-4), 5)
    add(store, h.CONV, 5, h.ok(1e-5), 0, target=h.OTHER_TARGET)
    first = tmp_path / "best.json"
    assert store.export_best(first) == 3
    best = store.best_per_task()

    data = json.loads(first.read_text())
    assert data["format"] == "tuner-best-schedules" and data["version"] == 1
    assert data["records"][0]["schedule"] == json.loads(h.schedule(2))  # JSON, not a string
    assert data["records"][0]["gflops"] == pytest.approx(best[0].gflops)
    assert without_ids(read_best(first)) == without_ids(best)  # no database needed

    with RecordStore("sqlite://") as fresh:
        assert fresh.import_json(first) == (3, 0)
        assert fresh.import_json(first) == (0, 3)  # merging twice adds nothing
        assert without_ids(fresh.best_per_task()) == without_ids(best)
        second = tmp_path / "again.json"
        fresh.export_best(second)
    assert second.read_bytes() == first.read_bytes()


def test_import_keeps_the_better_record_of_each_pair(store, tmp_path):
    add(store, h.MATMUL, 1, h.ok(1e-3), 0)
    path = tmp_path / "best.json"
    store.export_best(path)
    with RecordStore("sqlite://") as other:
        add(other, h.MATMUL, 1, h.ok(1e-3), 0)   # the same schedule: not duplicated
        add(other, h.MATMUL, 2, h.ok(5e-4), 1)   # faster than the file's
        add(other, h.CONV, 3, h.ok(1e-3), 0)
        assert other.import_json(path) == (0, 1)
        assert other.count() == 3
        assert other.best(h.MATMUL, h.TARGET).schedule_json == h.schedule(2)
        other.export_best(path)
    assert store.import_json(path) == (2, 0)
    assert store.best(h.MATMUL, h.TARGET).schedule_json == h.schedule(2)
    assert store.count() == 3


BAD_FILES = [
    (b"\x89PNG\r\n\x1a\n\x00\x00", "is not a JSON file"),
    (b"not json", "is not a JSON file"),
    (b"[1, 2]", "is not a tuner best-schedules file"),
    (b'{"records": []}', "is not a tuner best-schedules file"),
    (b'{"format": "tuner-best-schedules", "version": 99, "records": []}',
     "format version 99; this tuner reads version 1"),
    (b'{"format": "tuner-best-schedules", "version": 1, "records": {}}',
     '"records" must be a list'),
]


def _file_with(tmp_path, change) -> Path:
    with RecordStore("sqlite://") as s:
        add(s, h.MATMUL, 1, h.ok(1e-3), 0)
        path = tmp_path / "best.json"
        s.export_best(path)
    data = json.loads(path.read_text())
    change(data["records"][0])
    path.write_text(json.dumps(data))
    return path


BAD_RECORDS = [
    (lambda r: r.pop("schedule"), "has no field 'schedule'"),
    (lambda r: r["task"].update(shape=["64", 64, 64]), "shape must be a list of integers"),
    (lambda r: r.update(schedule={"kind": "split"}), "a JSON list of steps"),
    (lambda r: r["result"].update(error="exploded"), "'exploded' is not a valid ErrorKind"),
    (lambda r: r["result"].update(costs_s=[]), "a successful result without costs"),
    (lambda r: r["target"].update(threads="2"), "integer threads"),
    (lambda r: r.update(trial=1.5), "expected an integer, got 1.5"),
    (lambda r: r.update(task=[]), "is malformed: list indices must be integers"),
]


@pytest.mark.parametrize("content, message", BAD_FILES)
def test_a_foreign_or_malformed_file_is_refused(tmp_path, content, message):
    path = tmp_path / "best.json"
    path.write_bytes(content)
    with pytest.raises(RecordsError, match=f"^{path}.*{message}"):
        read_best(path)
    with RecordStore("sqlite://") as s, pytest.raises(RecordsError, match=message):
        s.import_json(path)


@pytest.mark.parametrize("change, message", BAD_RECORDS)
def test_a_malformed_record_is_refused_with_its_position(tmp_path, change, message):
    path = _file_with(tmp_path, change)
    with pytest.raises(RecordsError, match=f"^{path}: record 0 .*{message}"):
        read_best(path)


def test_a_missing_file_is_refused(tmp_path):
    with pytest.raises(RecordsError, match="cannot read .*missing.json: No such file"):
        read_best(tmp_path / "missing.json")


# ----------------------------------------------------------------------------- opening
def _snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}


def _foreign(path: Path, wal: bool) -> None:
    con = sqlite3.connect(path)
    if wal:
        con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()


def _damaged(path: Path) -> None:
    with RecordStore(resolve_db_url(str(path))) as s:
        add(s, h.MATMUL, 1, h.ok(1e-3), 0)
    data = bytearray(path.read_bytes())
    data[100:4096] = os.urandom(3996)  # keep the header, wreck the schema page
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("make, message", [
    (lambda p: p.write_bytes(os.urandom(8192)), "is not a SQLite database"),
    (lambda p: p.write_text("id,total\n1,9.5\n"), "is not a SQLite database"),
    (lambda p: _foreign(p, wal=False), "is a SQLite database of another application"),
    (lambda p: _foreign(p, wal=True), "is a SQLite database of another application"),
    (_damaged, "cannot be read as a SQLite database .* may be corrupt"),
], ids=["random-bytes", "csv", "foreign", "foreign-wal", "damaged"])
def test_a_file_that_is_not_ours_is_refused_untouched(tmp_path, make, message):
    folder = tmp_path / "dbs"
    folder.mkdir()
    path = folder / "x.db"
    make(path)
    before = _snapshot(folder)
    with pytest.raises(RecordsError, match=f"^{path} .*{message}"):
        RecordStore(resolve_db_url(str(path)))
    assert _snapshot(folder) == before  # same bytes, and no -wal or -shm files beside it


@pytest.mark.parametrize("version, message", [
    (99, f"schema version 99, newer than version {SCHEMA_VERSION} that this "
         f"tuner supports; upgrade it with `pip install --upgrade tuner`"),
    (0, f"schema version 0; this tuner supports version {SCHEMA_VERSION} and cannot "
        f"upgrade it"),
])
def test_another_schema_version_is_refused(tmp_path, version, message):
    path = tmp_path / "r.db"
    with RecordStore(resolve_db_url(str(path))) as s:
        add(s, h.MATMUL, 1, h.ok(1e-3), 0)
    con = sqlite3.connect(path)
    con.execute("UPDATE tuner_meta SET value = ? WHERE key = 'schema_version'", (str(version),))
    con.commit()
    con.close()
    before = _snapshot(tmp_path)
    with pytest.raises(RecordsError, match=f"^{path} has records {message}"):
        RecordStore(resolve_db_url(str(path)))
    assert _snapshot(tmp_path) == before


def _older_log(path: Path, version: int, missing: tuple[str, ...]) -> None:
    """A log with one record as schema `version` wrote it: without the `missing` tables."""
    with RecordStore(resolve_db_url(str(path))) as s:
        add(s, h.MATMUL, 1, h.ok(1e-3), 0)
    con = sqlite3.connect(path)
    for table in missing:
        con.execute(f"DROP TABLE {table}")
    con.execute(f"UPDATE tuner_meta SET value = '{version}' WHERE key = 'schema_version'")
    con.commit()
    con.close()


def _schema_version(path: Path) -> list:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT value FROM tuner_meta").fetchall()
    finally:
        con.close()


def test_a_log_of_schema_version_1_is_upgraded_in_place(tmp_path):
    """Version 1 had no claims table: opening such a log adds it and keeps every record."""
    path = tmp_path / "v1.db"
    _older_log(path, 1, ("tuner_claims", "tuner_record_machines"))
    with RecordStore(resolve_db_url(str(path))) as s:
        assert s.count() == 1
        assert s.claim(h.MATMUL, h.TARGET, [h.schedule(2)], lease_s=60) == [True]
    assert _schema_version(path) == [(str(SCHEMA_VERSION),)]


def test_a_log_of_schema_version_2_gets_the_machines_table_in_place(tmp_path):
    """Version 2 did not say which cluster worker measured a record: opening such a log adds
    the table and keeps every record; a record measured here has no machine."""
    path = tmp_path / "v2.db"
    _older_log(path, 2, ("tuner_record_machines",))
    with RecordStore(resolve_db_url(str(path))) as s:
        assert [r.result.machine for r in s.history(h.MATMUL, h.TARGET)] == [""]
        add(s, h.MATMUL, 2, dataclasses.replace(h.ok(2e-3), machine="w1"), 1)
        assert s.machines() == {(h.MATMUL.key, h.TARGET.key): {"w1": 1}}
    assert _schema_version(path) == [(str(SCHEMA_VERSION),)]


def test_the_machine_that_measured_a_record_is_kept_through_export_and_import(store, tmp_path):
    measured = [NewRecord(h.schedule(i), dataclasses.replace(h.ok(1e-3 * (i + 1)),
                                                             machine=m), i)
                for i, m in enumerate(["node-a", "", "node-b", "node-a"])]
    store.add_many(h.MATMUL, h.TARGET, measured, flops=h.flops(h.MATMUL),
                   tuner_version=h.VERSION)
    history = store.history(h.MATMUL, h.TARGET)
    assert [r.result.machine for r in history] == ["node-a", "", "node-b", "node-a"]
    assert store.machines() == {(h.MATMUL.key, h.TARGET.key): {"node-a": 2, "node-b": 1}}
    assert store.best(h.MATMUL, h.TARGET).result.machine == "node-a"
    path = tmp_path / "best.json"
    store.export_best(path)
    (record,) = read_best(path)
    assert record.result.machine == "node-a"
    with RecordStore(resolve_db_url(str(tmp_path / "other.db"))) as other:
        assert other.import_records([record]) == (1, 0)
        assert other.machines() == {(h.MATMUL.key, h.TARGET.key): {"node-a": 1}}


def test_a_new_file_gets_our_schema_in_wal_mode(tmp_path):
    path = tmp_path / "new.db"
    with RecordStore(resolve_db_url(str(path))) as s:
        add(s, h.MATMUL, 1, h.ok(1e-3), 0)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("SELECT value FROM tuner_meta").fetchall() == [(str(SCHEMA_VERSION),)]
    con.close()
    with RecordStore(resolve_db_url(str(path))) as s:  # and opens again
        assert s.count() == 1


def test_urls_and_paths_that_cannot_be_opened():
    with pytest.raises(RecordsError, match="not a database URL: 'records.db'"):
        RecordStore("records.db")
    with pytest.raises(RecordsError, match="cannot open nonsense://: Can't load plugin"):
        RecordStore("nonsense://")
    with pytest.raises(RecordsError, match="folder /nonexistent/folder does not exist"):
        RecordStore("sqlite:////nonexistent/folder/r.db")


def test_db_url_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    env = {"HOME": str(tmp_path / "home")}
    xdg = {**env, "XDG_DATA_HOME": str(tmp_path / "data")}
    assert resolve_db_url(None, xdg) == f"sqlite:///{tmp_path}/data/tuner/records.db"
    assert (tmp_path / "data" / "tuner").is_dir()  # the default's folder is created
    assert resolve_db_url(None, env) == f"sqlite:///{tmp_path}/home/.local/share/tuner/records.db"
    relative_xdg = {**env, "XDG_DATA_HOME": "data"}  # ignored, as the XDG specification says
    assert resolve_db_url(None, relative_xdg) == resolve_db_url(None, env)
    assert resolve_db_url(None, {**xdg, "TUNER_DB": "postgresql://u@h/db"}) == \
        "postgresql://u@h/db"
    assert resolve_db_url(None, {**xdg, "TUNER_DB": "env.db"}) == f"sqlite:///{tmp_path}/env.db"
    assert resolve_db_url("sqlite://", {**xdg, "TUNER_DB": "env.db"}) == "sqlite://"
    assert resolve_db_url("runs/x.db", xdg) == f"sqlite:///{tmp_path}/runs/x.db"
    assert not (tmp_path / "runs").exists()  # a given path's folder is not
    odd = tmp_path / "a?b#c.db"  # characters that mean something in a URL
    with RecordStore(resolve_db_url(str(odd))) as s:
        add(s, h.MATMUL, 1, h.ok(1e-3), 0)
    assert odd.exists()


# ----------------------------------------------------------------------------- processes
@pytest.mark.parametrize("backend", ["file"] + (["postgresql"] if POSTGRES_URL else []))
def test_four_processes_writing_one_database_lose_nothing(tmp_path, backend):
    with contextlib.ExitStack() as stack:
        url = resolve_db_url(str(tmp_path / "shared.db")) if backend == "file" else \
            stack.enter_context(scratch_database(POSTGRES_URL))
        _write_from_four_processes(url)


def _write_from_four_processes(url: str) -> None:
    start = SPAWN.Event()  # the database is new: the writers also race to create the tables
    procs = [SPAWN.Process(target=h.write_one_at_a_time, args=(url, w, 200, start))
             for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    with RecordStore(url) as s:
        assert s.count() == 800
        assert s.count(h.MATMUL) == s.count(h.CONV) == 400
        assert len(s.tasks()) == 2 and s.targets() == [h.TARGET]
        assert len(s.measured_hashes(h.MATMUL, h.TARGET)) == 400


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL], ids=["SIGINT", "SIGKILL"])
def test_an_interrupted_writer_leaves_every_finished_batch(tmp_path, sig):
    path = tmp_path / "interrupted.db"
    url = resolve_db_url(str(path))
    receive, send = SPAWN.Pipe(duplex=False)
    proc = SPAWN.Process(target=h.write_batches_until_stopped, args=(url, send))
    proc.start()
    send.close()
    committed = 0
    while committed < 40:
        assert receive.poll(60), "the writer reported nothing for 60 s"
        committed = receive.recv()
    os.kill(proc.pid, sig)
    proc.join(60)
    assert proc.exitcode == (130 if sig == signal.SIGINT else -signal.SIGKILL)
    while True:  # what it committed before the signal landed
        try:
            committed = receive.recv()
        except EOFError:
            break
    with RecordStore(url) as s:
        history = s.history(h.MATMUL, h.TARGET)
    assert committed <= len(history) <= committed + h.BATCH  # at most the batch in flight
    assert len(history) % h.BATCH == 0  # and never part of one
    assert [r.trial for r in history] == list(range(len(history)))
    assert all(r.schedule_json == h.schedule(r.trial) and r.result == h.ok(1e-3, 2e-3)
               for r in history)
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()


@pytest.mark.parametrize("damage", ["truncated", "leaf_page", "index_page"])
def test_a_damaged_file_is_refused_before_anything_is_written(tmp_path, capsys, damage):
    """A records file that fails PRAGMA quick_check (cut short, a records page or an index
    page overwritten) is refused by the store and by `tune`, `tune show` and `tune best` in
    one line that says what to do, its bytes unchanged."""
    import hashlib
    from tuner.cli import main
    db = tmp_path / "r.db"
    assert main(["matmul", "--shape", "16,16,16", "--trials", "24", "--batch-size", "8",
                 "--threads", "1", "--strategy", "random", "--db", str(db), "--quiet"]) == 0
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    assert len(data) >= 4 * page
    if damage == "truncated":
        data = data[:-1000]
    elif damage == "leaf_page":  # the last page (records): its cell pointers and content
        data[-page + 8:-page + 200] = bytes(range(192))
    else:  # the second page: an index or table page at the start of the file
        data[page + 8:page + 200] = bytes(range(192))
    db.write_bytes(bytes(data))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    with pytest.raises(RecordsError, match="damaged SQLite database|cannot be read"):
        RecordStore(f"sqlite:///{db}")
    capsys.readouterr()
    for argv in (["matmul", "--shape", "16,16,16", "--trials", "2", "--batch-size", "2",
                  "--threads", "1", "--strategy", "random", "--quiet"], ["show"], ["best"]):
        assert main(argv + ["--db", str(db)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(db) in err and "restore it from a copy" in err
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before
    assert not Path(f"{db}-wal").exists() or Path(f"{db}-wal").stat().st_size == 0


def test_sqlite_steps_are_retried_while_the_file_is_locked():
    """What the busy timeout does not cover (a file switching to WAL while other processes
    create its tables; one of four such processes failed in CI) is retried: a step locked
    twice succeeds the third time, another error is raised at once, and a lock that lasts
    past the timeout is raised."""
    import sqlite3

    from records.sqlite import retry_while_locked

    calls = []

    def locked_twice():
        calls.append(1)
        if len(calls) < 3:
            raise sqlite3.OperationalError("database is locked")
        return "done"
    assert retry_while_locked(locked_twice) == "done" and len(calls) == 3

    def broken():
        calls.append(1)
        raise sqlite3.OperationalError("no such table: x")
    calls.clear()
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        retry_while_locked(broken)
    assert len(calls) == 1

    def always_locked():
        raise sqlite3.OperationalError("database is locked")
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        retry_while_locked(always_locked, timeout_s=0.05)
