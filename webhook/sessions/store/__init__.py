"""The session store (adapter): exec sessions, their commands, alerts and audit events.

One interface, two databases: SQLite (WAL; the embedded default, one node) and
PostgreSQL (psycopg 3; several consumers writing). ``open_store(url)`` picks one:
``sqlite:///path/to/whoexec.db`` or ``postgresql://user@host/db``.

Every write is an idempotent upsert in one transaction per batch: the same alert
delivered twice (Falco retries, a re-read file, falcosidekick's ``uuid``) is stored once.
Times are integer nanoseconds since the epoch (UTC).
"""

from __future__ import annotations

from webhook.sessions.store.model import (
    AlertFact,
    AuditFact,
    Batch,
    FindingFact,
    ProcessFact,
    SessionFact,
    SessionQuery,
    Store,
)
from webhook.sessions.store.sql import open_store

__all__ = [
    "AlertFact",
    "AuditFact",
    "Batch",
    "FindingFact",
    "ProcessFact",
    "SessionFact",
    "SessionQuery",
    "Store",
    "open_store",
]
