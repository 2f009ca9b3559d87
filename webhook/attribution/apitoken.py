"""The bearer token of the consumer's ``POST /k8s-audit`` and ``/api/*`` (adapter).

It lives in a file, a mounted Secret in a cluster, and is read again whenever the file
changes (a Secret update swaps the mounted file), so a rotation needs no restart. The
token is never logged, and is compared in constant time.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from pathlib import Path

log = logging.getLogger("whoexec.consumer")


class TokenFile:
    """A bearer token kept in ``path`` (surrounding whitespace and a newline dropped)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def current(self) -> str:
        """The token now, or "" when the file is missing, unreadable or empty."""
        try:
            st = os.stat(self.path)  # follows the Secret's symlink to the current data
        except OSError:
            return ""
        seen = (st.st_ino, st.st_mtime_ns, st.st_size)
        with self._lock:
            if seen != self._seen:
                try:
                    self._token = self.path.read_text().strip()
                except (OSError, UnicodeDecodeError) as exc:
                    log.error("cannot read the API token file %s: %s", self.path, exc)
                    self._token = ""
                self._seen = seen
            return self._token

    def matches(self, given: str) -> bool:
        """``given`` is the token (and there is one)."""
        token = self.current()
        return bool(token) and hmac.compare_digest(given.encode(), token.encode())
