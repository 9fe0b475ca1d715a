"""Where the log lives: `--db`, else $TUNER_DB, else a SQLite file in the user's data folder.

A value with '://' is a SQLAlchemy URL (postgresql://..., sqlite:///...); anything else is a
path to a SQLite file.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "TUNER_DB"


def default_db_path(environ=os.environ) -> Path:
    base = environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                         "share")
    return Path(base) / "tuner" / "records.db"


def resolve_db_url(db: str | None = None, environ=os.environ) -> str:
    value = db or environ.get(ENV_VAR)
    if value and "://" in value:
        return value
    path = Path(value) if value else default_db_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path.resolve()}"
