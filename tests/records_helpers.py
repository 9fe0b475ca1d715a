"""Values and writer loops for tests/test_records.py, in a module of its own so that processes
started with multiprocessing's "spawn" context can import them (they get the parent's
sys.path, which pytest gave this folder)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import uuid

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from records import NewRecord, RecordStore
from tuner.measure.result import ErrorKind, MeasureResult
from tuner.ir.target import Target
from tuner.ir.task import Task

# Tasks are built directly: the store must not need the operators' templates to work.
MATMUL = Task("matmul", (64, 64, 64), (("bias", False), ("relu", False)))
CONV = Task("conv2d", (1, 4, 8, 8, 4, 3, 3),
            (("bias", True), ("dilation", 1), ("groups", 1), ("pad", 1), ("relu", True),
             ("stride", 1)))
TARGET = Target("x86_64-unknown-linux-gnu", "znver4", "+avx,+avx512f,+fma", 2)
OTHER_TARGET = Target("x86_64-unknown-linux-gnu", "znver4", "+avx,+avx512f,+fma", 1)
VERSION = "0.1.0-test"
BATCH = 4

# The contract suite also runs against a PostgreSQL server when given one, e.g.
# postgresql+psycopg://postgres@127.0.0.1:5432/postgres (each test gets a scratch database).
POSTGRES_URL = os.environ.get("TUNER_TEST_POSTGRES_URL")


@contextlib.contextmanager
def scratch_database(server_url: str):
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    name = f"tuner_test_{uuid.uuid4().hex[:12]}"
    with admin.connect() as con:
        con.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as con:
            con.exec_driver_sql(f"DROP DATABASE {name} WITH (FORCE)")
        admin.dispose()


def flops(task: Task) -> float:
    """Stands in for the template's count; 2 flops per multiply-add."""
    n = 1
    for d in task.shape:
        n *= d
    return 2.0 * n


def schedule(n: int, spaced: bool = False) -> str:
    """A distinct schedule per n, in canonical form, or (`spaced`) as a person would write it."""
    steps = [{"kind": "split", "axis": "i", "factors": [n, 16]},
             {"kind": "vectorize", "loop": "j.1"}]
    if spaced:
        return json.dumps(steps, indent=1)
    return json.dumps(steps, sort_keys=True, separators=(",", ":"))


def ok(*costs_s: float) -> MeasureResult:
    return MeasureResult(ErrorKind.NONE, "", costs_s, 7, 0.05, 1_700_000_000.25)


def failed(kind: ErrorKind) -> MeasureResult:
    return MeasureResult(kind, f"{kind.value}: detail", (), 0, 0.05, 1_700_000_000.5)


def write_one_at_a_time(url: str, writer: int, count: int, start) -> None:
    """`count` records, each in its own transaction, as fast as possible."""
    start.wait(60)
    task = MATMUL if writer % 2 == 0 else CONV
    with RecordStore(url) as store:
        for i in range(count):
            store.add(task, TARGET, schedule(writer * 100_000 + i), ok(1e-3 * (1 + i % 7)),
                      flops=flops(task), trial=writer * 100_000 + i, tuner_version=VERSION)


def write_batches_until_stopped(url: str, conn) -> None:
    """Batches of BATCH records, reporting the number committed after each, until a signal
    stops the process; Ctrl-C ends it with the shell's exit status 130. SIGINT raises
    KeyboardInterrupt here even where the test runs with it ignored (a shell ignores it in
    background jobs, and children inherit that)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with RecordStore(url) as store:
            trial = 0
            while True:
                store.add_many(MATMUL, TARGET, [
                    NewRecord(schedule(trial + i), ok(1e-3, 2e-3), trial + i, 0.5, "random")
                    for i in range(BATCH)], flops=flops(MATMUL), tuner_version=VERSION)
                trial += BATCH
                conn.send(trial)
    except KeyboardInterrupt:
        sys.exit(130)
