"""Who is signed in to ``whoexec ui`` (adapter): server-side session ids that expire.

A browser that signs in with the token gets a random id in its cookie; the UI keeps only
the id's SHA-256 digest, with the time it expires and a fingerprint of the token it was
given for. So a session ends when it expires, when its browser signs out (the row is
deleted: a copied cookie stops working at once), or when the operator changes the token.
The rows live in a small SQLite file that every gunicorn worker of the UI shares (the
session store itself stays read-only to the UI).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from webhook.wal import connect_wal

_SCHEMA = """CREATE TABLE IF NOT EXISTS ui_sessions (
    digest TEXT PRIMARY KEY, fingerprint TEXT NOT NULL, expires REAL NOT NULL)"""


def token_fingerprint(token: str) -> str:
    """Names the token a session was given for, and never tells it."""
    return hmac.new(token.encode(), b"whoexec-ui-session", hashlib.sha256).hexdigest()


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


class UiSessions:
    """Signed-in browsers. ``path`` None keeps them in this process only (tests)."""

    def __init__(
        self,
        path: Path | None,
        token: str,
        lifetime: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.lifetime = lifetime
        self.clock = clock
        self._fingerprint = token_fingerprint(token)
        self._lock = threading.Lock()
        if path is None:
            self._db = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        else:
            self._db = connect_wal(path)
        self._db.execute(_SCHEMA)

    def create(self) -> str:
        """A new signed-in session: the id for the cookie (only its digest is kept)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        with self._lock:
            self._db.execute("DELETE FROM ui_sessions WHERE expires <= ?", (now,))
            self._db.execute(
                "INSERT INTO ui_sessions (digest, fingerprint, expires) VALUES (?, ?, ?)",
                (_digest(session_id), self._fingerprint, now + self.lifetime),
            )
        return session_id

    def valid(self, session_id: str) -> bool:
        """Signed in, not signed out, not expired, and for the token in force now."""
        if not session_id or len(session_id) > 100:
            return False
        with self._lock:
            row = self._db.execute(
                "SELECT fingerprint, expires FROM ui_sessions WHERE digest = ?",
                (_digest(session_id),),
            ).fetchone()
        if row is None:
            return False
        fingerprint, expires = row
        return hmac.compare_digest(fingerprint, self._fingerprint) and self.clock() < expires

    def revoke(self, session_id: str) -> None:
        """Sign out: the id is no good from now on, in every worker."""
        with self._lock:
            self._db.execute("DELETE FROM ui_sessions WHERE digest = ?", (_digest(session_id),))

    def close(self) -> None:
        self._db.close()
