"""The measurement log: every measured candidate, in any SQLAlchemy database.

    url.py        resolve_db_url: --db, else $TUNER_DB, else ~/.local/share/tuner/records.db
    models.py     the tables (tasks, targets, records, meta with the schema version)
    store.py      RecordStore: add_many / best / top_k / history / measured_hashes / summary
    exchange.py   the best-schedules JSON file: export_best, read_best, import_best
"""

from records.exchange import export_best, import_best, read_best
from records.store import NewRecord, Record, RecordsError, RecordStore, schedule_hash
from records.url import resolve_db_url

__all__ = ["NewRecord", "Record", "RecordStore", "RecordsError", "export_best", "import_best",
           "read_best", "resolve_db_url", "schedule_hash"]
