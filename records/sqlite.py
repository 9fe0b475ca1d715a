"""SQLite specifics: refusing files that are not ours, and connections that share a file.

Refusal happens before SQLAlchemy touches the file, because our first connection would
already change it (switch the journal to WAL, create `-wal`/`-shm` files next to it). The file
is read through Python's sqlite3 in read-only mode. A file still in WAL mode with no `-wal`
next to it is closed by everyone, and is read with `immutable=1`, which creates no files;
otherwise a read-only connection takes the shared locks a concurrent writer expects.

Connections: WAL lets readers proceed while one process writes, and the busy timeout makes
writers queue instead of failing with "database is locked". Python's sqlite3 would begin its
transactions lazily at the first write, so two processes that both read and then write can
each hold a read lock the other's upgrade waits for; SQLite then fails one at once, ignoring
the busy timeout. So the driver's own BEGIN is switched off and we emit it (the recipe of
SQLAlchemy's SQLite dialect documentation, "Serializable isolation / Savepoints / Transactional
DDL", which savepoints need too): writing sessions take the write lock at once with `BEGIN
IMMEDIATE`, reading sessions begin deferred and never wait for a writer.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from records.record import RecordsError

BUSY_TIMEOUT_S = 30.0
META_TABLE = "tuner_meta"
MAX_PROBLEMS = 100  # PRAGMA quick_check stops after this many; a message counts them
WRITE_OPTION = "tuner_write"  # execution option a session sets to take the write lock at BEGIN

_MAGIC = b"SQLite format 3\x00"


def read_schema_version(path: Path) -> str | None:
    """The schema version stored in a SQLite file, or None for a new or empty database.

    Raises RecordsError, leaving the file untouched, for anything that is not a SQLite file
    or is another application's database."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with open(path, "rb") as f:
        header = f.read(100)
    if header[:16] != _MAGIC:
        raise RecordsError(f"{path} is not a SQLite database (it starts with {header[:16]!r}); "
                           f"pass another --db or set TUNER_DB")
    wal = Path(f"{path}-wal")
    try:
        if len(header) > 18 and header[18] == 2 and not wal.exists():
            try:
                return _read(f"file:{path}?immutable=1", path)
            except sqlite3.DatabaseError:
                if not wal.exists():
                    raise
                # a writer opened it while we read without locks: read again with them
        return _read(f"file:{path}?mode=ro", path)
    except sqlite3.DatabaseError as err:
        raise RecordsError(f"{path} cannot be read as a SQLite database ({_one_line(err)}); "
                           f"it may be corrupt; it was left untouched: restore it from a "
                           f"copy, or pass another --db") from None


def _read(uri: str, path: Path) -> str | None:
    con = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S)
    try:
        tables = sorted(r[0] for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'"))
        if META_TABLE not in tables:
            if tables:
                raise RecordsError(
                    f"{path} is a SQLite database of another application (tables: "
                    f"{', '.join(tables[:5])}); pass another --db or set TUNER_DB")
            return None
        row = con.execute(f"SELECT value FROM {META_TABLE} WHERE key = 'schema_version'"
                          ).fetchone()
        if row is None:
            raise RecordsError(f"{path} has a {META_TABLE} table without a schema version")
        # a damaged page that a query happens not to touch would be rewritten around by our
        # writes (and the damage spread): check the whole file before anything is written
        problems = [line for r in con.execute(f"PRAGMA quick_check({MAX_PROBLEMS})")
                    for line in str(r[0]).splitlines()
                    if line.strip() and not line.startswith("***")]
        if problems != ["ok"]:
            count = f"{len(problems)}{'+' if len(problems) >= MAX_PROBLEMS else ''}"
            raise RecordsError(f"{path} is a damaged SQLite database ({count} problems "
                               f"found, the first: {_one_line(problems[0])}); it was left "
                               f"untouched: restore it from a copy, or pass another --db")
        return str(row[0])
    finally:
        con.close()


def _one_line(text) -> str:
    """SQLite's report (several lines, each problem on its own) as one line of text."""
    return " ".join(str(text).split())


def on_connect(dbapi_connection, _connection_record) -> None:
    # Transactions are begun by on_begin, not by the driver.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
    retry_while_locked(lambda: cursor.execute("PRAGMA journal_mode = WAL"))
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def is_locked(err: BaseException) -> bool:
    """SQLite's "database is locked", raised by sqlite3 or wrapped by SQLAlchemy (`.orig`)."""
    err = getattr(err, "orig", err)
    return isinstance(err, sqlite3.OperationalError) and "database is locked" in str(err)


def retry_while_locked(step, timeout_s: float = BUSY_TIMEOUT_S):
    """`step()`, again while SQLite answers "database is locked", until `timeout_s`. The busy
    timeout does not cover every case: a new file switching to WAL while other processes
    create its tables, or a connection opening while the last one of another process
    checkpoints and removes the WAL, fail at once. Seen in CI: one of four processes
    creating one database together failed so in RecordStore's first transaction."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while True:
        try:
            return step()
        except Exception as err:
            if not is_locked(err) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.5)


def on_begin(conn) -> None:
    write = conn.get_execution_options().get(WRITE_OPTION, False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
