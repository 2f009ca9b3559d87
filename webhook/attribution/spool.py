"""A bounded, durable FIFO of byte strings on disk (adapter), backed by SQLite in WAL mode.

Used for alerts waiting for a downstream that is down (the forward spool); the HTTP
intake's inbox is an append-only log (:mod:`webhook.attribution.inbox`). Delivery is at-least-once:
an item is removed only after it was handled, so a crash in between hands it out again
after the restart.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from webhook.errors import ConfigError
from webhook.wal import connect_wal


class Spool:
    """FIFO of blobs. When full, the oldest items are dropped and counted in ``dropped``."""

    def __init__(self, path: Path, max_items: int = 1_000_000) -> None:
        self.path = path
        self.max_items = max_items
        self.dropped = 0
        self._lock = threading.Lock()
        try:
            self._db = connect_wal(path)
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

    def peek(self, limit: int, after: int = 0) -> list[tuple[int, bytes]]:
        """Up to ``limit`` oldest items with an id above ``after``."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, body FROM spool WHERE id > ? ORDER BY id LIMIT ?", (after, limit)
            ).fetchall()
        return [(int(row[0]), bytes(row[1])) for row in rows]

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
