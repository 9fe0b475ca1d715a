"""Where the log lives: `--db`, else $TUNER_DB, else a SQLite file in the user's data folder.

The URL is the store's only configuration (as in Optuna). A value containing '://' is a
SQLAlchemy URL (postgresql://..., sqlite:///..., 'sqlite://' for memory); anything else is the
path of a SQLite file. The default follows the XDG base directory specification, so the log
survives the project folder and is shared by every run of the user.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL

ENV_VAR = "TUNER_DB"


def default_db_path(environ=os.environ) -> Path:
    """$XDG_DATA_HOME/tuner/records.db, else ~/.local/share/tuner/records.db."""
    base = environ.get("XDG_DATA_HOME", "")
    if not os.path.isabs(base):  # the XDG specification says to ignore relative paths
        home = environ.get("HOME") or os.path.expanduser("~")
        base = os.path.join(home, ".local", "share")
    return Path(base) / "tuner" / "records.db"


def resolve_db_url(db: str | None = None, environ=os.environ) -> str:
    """The SQLAlchemy URL of the log. Creates the default file's folder, not a given one's:
    a mistyped --db folder should fail, not silently start an empty log elsewhere."""
    value = db or environ.get(ENV_VAR)
    if value and "://" in value:
        return value
    if value:
        path = Path(value).expanduser()
    else:
        path = default_db_path(environ)
        path.parent.mkdir(parents=True, exist_ok=True)
    # URL.create escapes characters ('?', '#', '@') a path may hold and a URL may not
    return URL.create("sqlite", database=str(path.absolute())).render_as_string()
