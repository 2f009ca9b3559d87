"""Single use of session ids across consumers, decided by the store (``session_roots``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from webhook.attribution.lineage import SessionRoot
from webhook.errors import StoreUnavailable
from webhook.sessions.store.model import Store

log = logging.getLogger("whoexec.store")


class StoreRootClaims:
    """:class:`webhook.attribution.lineage.RootClaims` through a shared store.

    The first consumer to claim a session id's root wins, whichever node it runs on: the
    store's primary key decides, not a read-then-write. A claim is made once per session
    root (then cached), so the cost is one round trip per exec, not per alert. While the
    database is away the claim waits and retries: deciding without it could believe a
    replay that another node has already seen.
    """

    def __init__(
        self,
        store: Store,
        *,
        max_cached: int = 100_000,
        backoff: tuple[float, float] = (0.2, 30.0),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store = store
        self.max_cached = max_cached
        self.backoff = backoff
        self.sleep = sleep
        self._holders: dict[tuple[str, str], SessionRoot] = {}

    def claim(self, session_id: str, container: str, root: SessionRoot) -> SessionRoot:
        key = (session_id, container)
        holder = self._holders.get(key)
        if holder is not None:
            return holder
        delay = self.backoff[0]
        while True:
            try:
                host, pid, start_ns = self.store.claim_root(
                    session_id, container, root.host, root.pid, root.start_ns
                )
                break
            except StoreUnavailable as exc:
                log.warning("session store unavailable for a root claim (%s); retrying", exc)
                self.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
        holder = SessionRoot(host, pid, start_ns)
        self._holders[key] = holder
        if len(self._holders) > self.max_cached:
            del self._holders[next(iter(self._holders))]
        return holder
