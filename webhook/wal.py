"""SQLite in WAL mode (adapter), as the forward spool, the SQLite session store and the
UI's sign-in sessions open it."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def connect_wal(path: Path) -> sqlite3.Connection:
    """An autocommit SQLite connection in WAL mode, shareable across threads.

    Several processes may write the same file: a writer waits
    up to 30 seconds for the lock rather than failing with "database is
    locked".
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30.0)
    # switching the journal mode can answer SQLITE_BUSY at once, without the busy
    # handler, while another connection creates the schema: retry it within the budget
    deadline = time.monotonic() + 30
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.05)
    db.execute("PRAGMA synchronous=NORMAL")
    return db
