"""A bounded, durable FIFO of byte strings on disk (adapter), backed by SQLite in WAL mode.

Used for alerts waiting for a downstream that is down (the forward spool); the HTTP
intake's inbox is an append-only log (:mod:`webhook.inbox`). Delivery is at-least-once:
an item is removed only after it was handled, so a crash in between hands it out again
after the restart.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from webhook.errors import ConfigError, SpoolFull


def connect_wal(path: Path, busy_timeout: float = 30.0) -> sqlite3.Connection:
    """An autocommit SQLite connection in WAL mode, shareable across threads.

    Several processes may write the same file: a writer waits
    up to ``busy_timeout`` seconds for the lock rather than failing with "database is
    locked".
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
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


class Spool:
    """FIFO of blobs. When full, the oldest items are dropped and counted in ``dropped``,
    or, with ``refuse_when_full`` (the inbox: what it holds was acknowledged), new items
    are refused with :class:`SpoolFull` and nothing is dropped."""

    def __init__(
        self,
        path: Path,
        max_items: int = 1_000_000,
        wake_at: int = 1,
        refuse_when_full: bool = False,
        busy_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self.max_items = max_items
        self.refuse_when_full = refuse_when_full
        #: wake a waiting reader only once this many items are queued (it polls anyway):
        #: waking it per item makes request threads and the reader fight for the GIL
        self.wake_at = wake_at
        self.dropped = 0
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        try:
            self._db = connect_wal(path, busy_timeout)
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT,"
                " body BLOB NOT NULL)"
            )
        except (sqlite3.Error, OSError) as exc:
            raise ConfigError(f"cannot open spool {path}: {exc}") from None

    def __len__(self) -> int:
        """Exact, and right with several processes writing (it scans: do not call per item)."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def _span(self) -> int:
        """An O(1) upper bound of the item count (ids are handed out and acked in order)."""
        # two subqueries: SQLite answers min() or max() from the rowid index only when it is
        # the sole aggregate of its SELECT; both in one SELECT scan the whole table
        low, high = self._db.execute(
            "SELECT (SELECT min(id) FROM spool), (SELECT max(id) FROM spool)"
        ).fetchone()
        return 0 if low is None else int(high) - int(low) + 1

    def put_many(self, bodies: list[bytes]) -> None:
        if not bodies:
            return
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            if self.refuse_when_full and self._span() + len(bodies) > self.max_items:
                # the span over-counts when items were acknowledged out of order: count
                held = int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])
                if held + len(bodies) > self.max_items:
                    self._db.execute("ROLLBACK")
                    raise SpoolFull(
                        f"{self.path.name} holds {held} of {self.max_items} items: "
                        f"{len(bodies)} more do not fit"
                    )
            self._db.executemany("INSERT INTO spool (body) VALUES (?)", [(b,) for b in bodies])
            span = self._span()
            if span > self.max_items:
                count = int(self._db.execute("SELECT count(*) FROM spool").fetchone()[0])
                excess = count - self.max_items
                if excess > 0:
                    self._db.execute(
                        "DELETE FROM spool WHERE id IN (SELECT id FROM spool ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    self.dropped += excess
            self._db.execute("COMMIT")
            if span >= self.wake_at:
                self._ready.notify_all()

    def peek(self, limit: int, wait: float = 0.0, after: int = 0) -> list[tuple[int, bytes]]:
        """Up to ``limit`` oldest items with an id above ``after``, waiting up to ``wait``
        seconds for the first."""
        with self._lock:
            if wait > 0 and self._last_id() <= after:
                self._ready.wait(wait)
            rows = self._db.execute(
                "SELECT id, body FROM spool WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [(int(row[0]), bytes(row[1])) for row in rows]

    def _last_id(self) -> int:
        row = self._db.execute("SELECT max(id) FROM spool").fetchone()
        return int(row[0]) if row[0] is not None else 0

    def ack(self, ids: list[int]) -> None:
        """Remove handled items."""
        if not ids:
            return
        low, high = min(ids), max(ids)
        with self._lock:
            if high - low + 1 == len(ids):
                # a peeked batch is a contiguous run of ids: one short range delete keeps the
                # write lock brief for the intake processes appending meanwhile
                self._db.execute("DELETE FROM spool WHERE id BETWEEN ? AND ?", (low, high))
            else:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM spool WHERE id = ?", [(i,) for i in ids])
                self._db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._db.close()
