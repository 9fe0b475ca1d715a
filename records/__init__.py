"""The measurement log: every measured candidate, in any SQLAlchemy database.

    url.py        resolve_db_url: --db, else $TUNER_DB, else $XDG_DATA_HOME/tuner/records.db
    record.py     Record, NewRecord (frozen values callers get and give), RecordsError,
                  schedule_hash (identity of a schedule)
    models.py     the tables (tuner_meta with the schema version, tasks, targets, records,
                  claims)
    claims.py     who owns a claim on a schedule being measured, and whether it is gone
    store.py      RecordStore(url): add / add_many / claim / release_claims / best / top_k /
                  history / measured_hashes / next_trial / best_per_task / export_best /
                  import_json
    sqlite.py     SQLite only: refusing foreign or corrupt files untouched; WAL, busy timeout
                  and BEGIN IMMEDIATE so that several processes can write one file
    exchange.py   the best-schedules JSON file: read_best (no database needed), write_best

Imports point one way: records -> tuner's IR and measurement results (values only; never
templates). Builds read records through tuner/replay/source.py.
"""

from records.exchange import export_best, read_best, write_best
from records.record import NewRecord, Record, RecordsError, canonical_schedule, schedule_hash
from records.store import RecordStore
from records.url import default_db_path, resolve_db_url

__all__ = ["NewRecord", "Record", "RecordStore", "RecordsError",
           "canonical_schedule", "default_db_path", "export_best", "read_best", "resolve_db_url",
           "schedule_hash", "write_best"]
