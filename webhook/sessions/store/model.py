"""What the store holds and answers: facts written in, rows read out."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

#: attribution statuses by precedence: a session that was ever tampered stays tampered.
#: "pending": known from the webhook's audit annotation, no consumer has seen its root yet
#: "replayed": a real token planted as the root of a process it was not minted for; such a
#: session has its own key (``replayed:<host>:<pid>:<start>``), never the victim's
ATTRIBUTION_RANK = {"pending": 0, "verified": 1, "unverified": 2, "tampered": 3, "replayed": 4}
RANK_ATTRIBUTION = {rank: name for name, rank in ATTRIBUTION_RANK.items()}


@dataclass(frozen=True, slots=True)
class SessionFact:
    session_id: str
    time_ns: int
    learnt_from: str  # token | admission | audit
    user: str | None = None
    uid: str | None = None
    groups: tuple[str, ...] | None = None
    namespace: str | None = None
    pod: str | None = None
    pod_uid: str | None = None
    container: str | None = None
    command: tuple[str, ...] | None = None
    attribution: str = "pending"
    host: str | None = None
    root_pid: int | None = None
    started_ns: int | None = None  # the token's iat, when known
    audit_id: str | None = None
    #: what a replayed root's token claims; never shown as the session's user
    claimed_user: str | None = None
    claimed_session_id: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class ProcessFact:
    session_id: str
    host: str
    pid: int
    start_ns: int
    ppid: int | None
    args: str | None
    time_ns: int


@dataclass(frozen=True, slots=True)
class AlertFact:
    key: str
    time_ns: int
    rule: str
    priority: str
    source: str
    output: str
    output_fields: str  # JSON
    attribution: str
    hostname: str
    session_id: str | None = None
    user: str | None = None


@dataclass(frozen=True, slots=True)
class AuditFact:
    audit_id: str
    stage: str
    time_ns: int
    verb: str
    subresource: str
    namespace: str
    pod: str
    container: str
    command: tuple[str, ...]
    user: str
    impersonated_user: str | None
    request_uri: str
    response_code: int | None
    session_id: str | None
    outcome: str | None
    event: str  # the whole event, JSON


@dataclass(frozen=True, slots=True)
class FindingFact:
    key: str
    kind: str
    time_ns: int
    detail: str
    session_id: str | None = None
    user: str | None = None
    namespace: str | None = None
    pod: str | None = None
    priority: str = "Warning"


Fact = SessionFact | ProcessFact | AlertFact | AuditFact | FindingFact


@dataclass
class Batch:
    sessions: list[SessionFact] = field(default_factory=list)
    processes: list[ProcessFact] = field(default_factory=list)
    alerts: list[AlertFact] = field(default_factory=list)
    audits: list[AuditFact] = field(default_factory=list)
    findings: list[FindingFact] = field(default_factory=list)

    def __len__(self) -> int:
        return (
            len(self.sessions)
            + len(self.processes)
            + len(self.alerts)
            + len(self.audits)
            + len(self.findings)
        )

    def facts(self) -> list[Fact]:
        """Every fact, sessions first (the order :meth:`SqlStore.ingest` writes in)."""
        return [*self.sessions, *self.processes, *self.alerts, *self.audits, *self.findings]

    @classmethod
    def of(cls, facts: list[Fact]) -> Batch:
        """The facts sorted back into a batch (the inverse of :meth:`facts`)."""
        batch = cls()
        for fact in facts:
            if isinstance(fact, SessionFact):
                batch.sessions.append(fact)
            elif isinstance(fact, ProcessFact):
                batch.processes.append(fact)
            elif isinstance(fact, AlertFact):
                batch.alerts.append(fact)
            elif isinstance(fact, AuditFact):
                batch.audits.append(fact)
            else:
                batch.findings.append(fact)
        return batch

    def extend(self, other: Batch) -> None:
        self.sessions += other.sessions
        self.processes += other.processes
        self.alerts += other.alerts
        self.audits += other.audits
        self.findings += other.findings


#: a filter that is not a status of its own: every session no token vouches for yet
#: (``pending``: seen only by admission or the audit log; ``unverified``)
UNATTRIBUTED = ("pending", "unverified")


@dataclass(frozen=True, slots=True)
class SessionQuery:
    user: str | None = None
    namespace: str | None = None
    pod: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    #: a status of ATTRIBUTION_RANK, or ``unattributed`` (UNATTRIBUTED)
    attribution: str | None = None
    has_alerts: bool | None = None
    #: keyset pagination: only sessions that sort after this (started_ns, session_id),
    #: newest first; a page never shifts when new sessions arrive
    after: tuple[int, str] | None = None
    limit: int = 1000


class Store(Protocol):
    """The session store. Implementations: SQLite and PostgreSQL (``sessions.store.sql``)."""

    def schema_version(self) -> int: ...

    def ingest(self, batch: Batch) -> None: ...

    def sessions(self, query: SessionQuery) -> list[dict[str, Any]]: ...

    def session(
        self,
        session_id: str,
        alerts_limit: int | None = None,
        alerts_after: tuple[int, str] | None = None,
        processes_limit: int | None = None,
    ) -> dict[str, Any] | None: ...

    def audit_event(self, audit_id: str) -> dict[str, Any] | None: ...

    def users(self, since_ns: int | None, until_ns: int | None = None) -> list[dict[str, Any]]: ...

    def findings(
        self, since_ns: int | None, until_ns: int | None = None
    ) -> list[dict[str, Any]]: ...

    def prune(self, before_ns: int) -> dict[str, int]: ...

    def claim_root(
        self, session_id: str, container: str, host: str, pid: int, start_ns: int
    ) -> tuple[str, int, int]: ...

    def crosscheck(self, now_ns: int, grace_ns: int) -> int: ...

    def close(self) -> None: ...
