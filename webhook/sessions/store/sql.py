"""SQL for both databases; the two dialects differ only in how they connect and quote.

Queries are written once with ``?`` placeholders (SQLite's) and rewritten to ``%s`` for
psycopg. Both databases support ``INSERT ... ON CONFLICT ... DO UPDATE`` with
``excluded``, which is what makes every write idempotent.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from webhook.errors import ConfigError, StoreError, StoreUnavailable
from webhook.sessions.store.model import (
    ATTRIBUTION_RANK,
    RANK_ATTRIBUTION,
    UNATTRIBUTED,
    Batch,
    SessionQuery,
)
from webhook.wal import connect_wal

#: schema migrations, applied in order inside one transaction each; never edit a
#: released one, add a new version instead (upgrades must not lose data)
MIGRATIONS: list[tuple[int, list[str]]] = [
    (
        1,
        [
            """CREATE TABLE sessions (
                session_id TEXT PRIMARY KEY,
                user_name TEXT, user_uid TEXT, user_groups TEXT,
                namespace TEXT, pod TEXT, pod_uid TEXT, container TEXT,
                command TEXT,
                started_ns BIGINT NOT NULL, last_seen_ns BIGINT NOT NULL,
                via_token INTEGER NOT NULL DEFAULT 0,
                via_admission INTEGER NOT NULL DEFAULT 0,
                via_audit INTEGER NOT NULL DEFAULT 0,
                attribution_rank INTEGER NOT NULL DEFAULT 0,
                host TEXT, root_pid BIGINT, audit_id TEXT)""",
            "CREATE INDEX sessions_user_started ON sessions (user_name, started_ns)",
            "CREATE INDEX sessions_started ON sessions (started_ns)",
            """CREATE TABLE processes (
                session_id TEXT NOT NULL, host TEXT NOT NULL, pid BIGINT NOT NULL,
                start_ns BIGINT NOT NULL, ppid BIGINT, args TEXT, first_seen_ns BIGINT NOT NULL,
                PRIMARY KEY (session_id, host, pid, start_ns))""",
            """CREATE TABLE alerts (
                alert_key TEXT PRIMARY KEY, session_id TEXT, time_ns BIGINT NOT NULL,
                rule TEXT NOT NULL, priority TEXT NOT NULL, source TEXT NOT NULL,
                output TEXT NOT NULL, output_fields TEXT NOT NULL, attribution TEXT NOT NULL,
                user_name TEXT, hostname TEXT)""",
            "CREATE INDEX alerts_session ON alerts (session_id, priority)",
            "CREATE INDEX alerts_time ON alerts (time_ns)",
            """CREATE TABLE audit_events (
                audit_id TEXT PRIMARY KEY, stage TEXT NOT NULL, time_ns BIGINT NOT NULL,
                verb TEXT NOT NULL, subresource TEXT NOT NULL, namespace TEXT, pod TEXT,
                container TEXT, command TEXT, user_name TEXT, impersonated_user TEXT,
                request_uri TEXT, response_code INTEGER, session_id TEXT, outcome TEXT,
                event TEXT NOT NULL)""",
            "CREATE INDEX audit_session ON audit_events (session_id)",
        ],
    ),
    (
        2,
        [
            """CREATE TABLE findings (
                finding_key TEXT PRIMARY KEY, kind TEXT NOT NULL, priority TEXT NOT NULL,
                time_ns BIGINT NOT NULL, session_id TEXT, user_name TEXT, namespace TEXT,
                pod TEXT, detail TEXT NOT NULL)""",
            "CREATE INDEX findings_time ON findings (time_ns)",
            "CREATE INDEX audit_time ON audit_events (time_ns)",
            "CREATE INDEX sessions_last_seen ON sessions (last_seen_ns)",
        ],
    ),
    (
        3,
        [
            # the user the token names, kept apart from the audit event's user, so that the
            # two can be compared (crosscheck); and what a replayed root's token claims
            "ALTER TABLE sessions ADD COLUMN token_user TEXT",
            "ALTER TABLE sessions ADD COLUMN claimed_user TEXT",
            "ALTER TABLE sessions ADD COLUMN claimed_session_id TEXT",
            "ALTER TABLE sessions ADD COLUMN reason TEXT",
            # single use of a session id, across every consumer that shares the store: the
            # primary key, not a read-then-write, decides which root came first
            """CREATE TABLE session_roots (
                session_id TEXT NOT NULL, container TEXT NOT NULL, host TEXT NOT NULL,
                pid BIGINT NOT NULL, start_ns BIGINT NOT NULL,
                PRIMARY KEY (session_id, container))""",
            "CREATE INDEX sessions_attribution ON sessions (attribution_rank, started_ns)",
        ],
    ),
    (
        4,
        [
            # a session's alerts a page at a time, in time order, without sorting them all:
            # a session of 100,000 alerts took 377 ms a page without it, 1.7 ms with it
            "CREATE INDEX alerts_session_time ON alerts (session_id, time_ns, alert_key)",
        ],
    ),
]
LATEST = MIGRATIONS[-1][0]

_SESSION_UPSERT = """
INSERT INTO sessions (session_id, user_name, user_uid, user_groups, namespace, pod, pod_uid,
    container, command, started_ns, last_seen_ns, via_token, via_admission, via_audit,
    attribution_rank, host, root_pid, audit_id, token_user, claimed_user, claimed_session_id,
    reason)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id) DO UPDATE SET
    user_name = COALESCE(sessions.user_name, excluded.user_name),
    user_uid = COALESCE(sessions.user_uid, excluded.user_uid),
    user_groups = COALESCE(sessions.user_groups, excluded.user_groups),
    namespace = COALESCE(sessions.namespace, excluded.namespace),
    pod = COALESCE(sessions.pod, excluded.pod),
    pod_uid = COALESCE(sessions.pod_uid, excluded.pod_uid),
    container = COALESCE(sessions.container, excluded.container),
    command = COALESCE(excluded.command, sessions.command),
    started_ns = CASE WHEN excluded.started_ns < sessions.started_ns
        THEN excluded.started_ns ELSE sessions.started_ns END,
    last_seen_ns = CASE WHEN excluded.last_seen_ns > sessions.last_seen_ns
        THEN excluded.last_seen_ns ELSE sessions.last_seen_ns END,
    via_token = CASE WHEN excluded.via_token = 1 THEN 1 ELSE sessions.via_token END,
    via_admission = CASE WHEN excluded.via_admission = 1 THEN 1 ELSE sessions.via_admission END,
    via_audit = CASE WHEN excluded.via_audit = 1 THEN 1 ELSE sessions.via_audit END,
    attribution_rank = CASE WHEN excluded.attribution_rank > sessions.attribution_rank
        THEN excluded.attribution_rank ELSE sessions.attribution_rank END,
    host = COALESCE(sessions.host, excluded.host),
    root_pid = COALESCE(sessions.root_pid, excluded.root_pid),
    audit_id = COALESCE(sessions.audit_id, excluded.audit_id),
    token_user = COALESCE(sessions.token_user, excluded.token_user),
    claimed_user = COALESCE(sessions.claimed_user, excluded.claimed_user),
    claimed_session_id = COALESCE(sessions.claimed_session_id, excluded.claimed_session_id),
    reason = COALESCE(sessions.reason, excluded.reason)
"""
_ROOT_CLAIM = """
INSERT INTO session_roots (session_id, container, host, pid, start_ns)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (session_id, container) DO NOTHING
"""
_PROCESS_UPSERT = """
INSERT INTO processes (session_id, host, pid, start_ns, ppid, args, first_seen_ns)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (session_id, host, pid, start_ns) DO UPDATE SET
    ppid = COALESCE(processes.ppid, excluded.ppid),
    args = COALESCE(processes.args, excluded.args),
    first_seen_ns = CASE WHEN excluded.first_seen_ns < processes.first_seen_ns
        THEN excluded.first_seen_ns ELSE processes.first_seen_ns END
"""
_ALERT_INSERT = """
INSERT INTO alerts (alert_key, session_id, time_ns, rule, priority, source, output,
    output_fields, attribution, user_name, hostname)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (alert_key) DO NOTHING
"""
# a later stage of the same request (ResponseComplete after ResponseStarted) replaces it
_AUDIT_UPSERT = """
INSERT INTO audit_events (audit_id, stage, time_ns, verb, subresource, namespace, pod,
    container, command, user_name, impersonated_user, request_uri, response_code,
    session_id, outcome, event)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (audit_id) DO UPDATE SET
    stage = excluded.stage, time_ns = audit_events.time_ns,
    response_code = COALESCE(excluded.response_code, audit_events.response_code),
    session_id = COALESCE(audit_events.session_id, excluded.session_id),
    outcome = COALESCE(audit_events.outcome, excluded.outcome),
    event = excluded.event
"""
_FINDING_INSERT = """
INSERT INTO findings (finding_key, kind, priority, time_ns, session_id, user_name, namespace,
    pod, detail)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (finding_key) DO NOTHING
"""


FINDING_AUDIT_USER_MISMATCH = "Exec identity differs from the audit log"
FINDING_NOT_IN_AUDIT_LOG = "Exec session missing from the audit log"


#: a LIMIT that both databases read as none
_NO_LIMIT = 2**62


def _holdable(value: object) -> bool:
    """Whether a text could be in the store at all: a NUL never is (the writer refuses it,
    and PostgreSQL would fail the query), so a filter holding one matches nothing."""
    return not (isinstance(value, str) and "\x00" in value)


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(list(value) if isinstance(value, tuple) else value)


class SqlStore:
    """The store over a DB-API connection; subclasses connect and map errors."""

    placeholder = "?"
    unavailable: tuple[type[BaseException], ...] = ()

    def __init__(self) -> None:
        self._lock = threading.RLock()
        try:
            self.migrate()
        except BaseException:
            self.close()  # a store that refuses to open leaves no connection behind
            raise

    # -- plumbing ----------------------------------------------------------------------

    def _sql(self, text: str) -> str:
        return text if self.placeholder == "?" else text.replace("?", self.placeholder)

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Any]:  # pragma: no cover
        raise NotImplementedError
        yield

    def _query(self, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        with self._transaction(write=False) as cursor:
            cursor.execute(self._sql(sql), tuple(params))
            names = [column[0] for column in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def schema_version(self) -> int:
        try:
            rows = self._query("SELECT max(version) AS v FROM schema_version")
        except StoreUnavailable:
            raise
        except StoreError:
            return 0
        return int(rows[0]["v"] or 0)

    def _lock_schema(self, cursor: Any) -> None:
        """Serialise migrations between processes (SQLite's BEGIN IMMEDIATE already does)."""

    def migrate(self) -> None:
        """Apply missing migrations; safe when several consumers start at the same time."""
        for version, statements in MIGRATIONS:
            with self._transaction() as cursor:
                self._lock_schema(cursor)
                cursor.execute(
                    "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)"
                )
                cursor.execute("SELECT max(version) FROM schema_version")
                current = int(cursor.fetchone()[0] or 0)
                if current > LATEST:
                    raise StoreError(
                        f"the database is at schema version {current}, newer than this "
                        f"whoexec ({LATEST}); upgrade whoexec"
                    )
                if version <= current:
                    continue
                for statement in statements:
                    cursor.execute(statement)
                cursor.execute(
                    self._sql("INSERT INTO schema_version (version) VALUES (?)"), (version,)
                )

    # -- writing -----------------------------------------------------------------------

    def ingest(self, batch: Batch) -> None:
        """Write a batch in one transaction; every row is an idempotent upsert."""
        if not len(batch):
            return
        sessions = [
            (
                s.session_id,
                s.user,
                s.uid,
                _json(s.groups),
                s.namespace,
                s.pod,
                s.pod_uid,
                s.container,
                _json(s.command),
                s.started_ns or s.time_ns,
                s.time_ns,
                int(s.learnt_from == "token"),
                int(s.learnt_from == "admission"),
                int(s.learnt_from in ("audit", "admission")),
                ATTRIBUTION_RANK.get(s.attribution, 0),
                s.host,
                s.root_pid,
                s.audit_id,
                s.user if s.learnt_from == "token" else None,
                s.claimed_user,
                s.claimed_session_id,
                s.reason,
            )
            for s in batch.sessions
        ]
        processes = [
            (p.session_id, p.host, p.pid, p.start_ns, p.ppid, p.args, p.time_ns)
            for p in batch.processes
        ]
        alerts = [
            (
                a.key,
                a.session_id,
                a.time_ns,
                a.rule,
                a.priority,
                a.source,
                a.output,
                a.output_fields,
                a.attribution,
                a.user,
                a.hostname,
            )
            for a in batch.alerts
        ]
        audits = [
            (
                e.audit_id,
                e.stage,
                e.time_ns,
                e.verb,
                e.subresource,
                e.namespace,
                e.pod,
                e.container,
                _json(e.command),
                e.user,
                e.impersonated_user,
                e.request_uri,
                e.response_code,
                e.session_id,
                e.outcome,
                e.event,
            )
            for e in batch.audits
        ]
        findings = [
            (
                f.key,
                f.kind,
                f.priority,
                f.time_ns,
                f.session_id,
                f.user,
                f.namespace,
                f.pod,
                f.detail,
            )
            for f in batch.findings
        ]
        with self._transaction() as cursor:
            for sql, rows in (
                (_SESSION_UPSERT, sessions),
                (_PROCESS_UPSERT, processes),
                (_ALERT_INSERT, alerts),
                (_AUDIT_UPSERT, audits),
                (_FINDING_INSERT, findings),
            ):
                if rows:
                    cursor.executemany(self._sql(sql), rows)

    def prune(self, before_ns: int) -> dict[str, int]:
        """Delete everything last seen before ``before_ns``; returns rows deleted per table."""
        deleted: dict[str, int] = {}
        with self._transaction() as cursor:
            for table, sql in (
                ("alerts", "DELETE FROM alerts WHERE time_ns < ?"),
                (
                    "processes",
                    "DELETE FROM processes WHERE session_id IN "
                    "(SELECT session_id FROM sessions WHERE last_seen_ns < ?)",
                ),
                ("sessions", "DELETE FROM sessions WHERE last_seen_ns < ?"),
                ("audit_events", "DELETE FROM audit_events WHERE time_ns < ?"),
                ("findings", "DELETE FROM findings WHERE time_ns < ?"),
            ):
                cursor.execute(self._sql(sql), (before_ns,))
                deleted[table] = max(cursor.rowcount, 0)
        return deleted

    def claim_root(
        self, session_id: str, container: str, host: str, pid: int, start_ns: int
    ) -> tuple[str, int, int]:
        """Make (host, pid, start) the one root of the session, unless one already is;
        returns the root that holds it. Atomic across consumers (the primary key)."""
        with self._transaction() as cursor:
            cursor.execute(self._sql(_ROOT_CLAIM), (session_id, container, host, pid, start_ns))
            cursor.execute(
                self._sql(
                    "SELECT host, pid, start_ns FROM session_roots "
                    "WHERE session_id = ? AND container = ?"
                ),
                (session_id, container),
            )
            found = cursor.fetchone()
        return str(found[0]), int(found[1]), int(found[2])

    def crosscheck(self, now_ns: int, grace_ns: int) -> int:
        """Late findings from joining sessions seen through tokens with the audit log.

        * the audit event of a session names another user than its token: Critical;
        * a session root whose id is in no exec or debug (``pods/ephemeralcontainers``)
          audit event, although the audit log has moved ``grace_ns`` past the session's
          start: Warning (the apiserver never audited that exec: an audit policy gap, or
          a token used outside kubectl exec and kubectl debug).

        Idempotent (one finding per session and kind); returns the findings added.
        """
        mismatched = self._query(
            "SELECT s.session_id, s.token_user, s.namespace, s.pod, s.started_ns, "
            "a.user_name AS audit_user, a.audit_id FROM sessions s "
            "JOIN audit_events a ON a.session_id = s.session_id "
            "WHERE s.token_user IS NOT NULL AND a.user_name <> s.token_user"
        )
        unaudited = self._query(
            "SELECT s.session_id, s.token_user, s.namespace, s.pod, s.started_ns FROM sessions s "
            "WHERE s.via_token = 1 AND s.token_user IS NOT NULL AND s.started_ns < ? "
            "AND NOT EXISTS (SELECT 1 FROM audit_events a WHERE a.session_id = s.session_id) "
            "AND EXISTS (SELECT 1 FROM audit_events a WHERE a.time_ns > s.started_ns + ?)",
            [now_ns - grace_ns, grace_ns],
        )
        rows = [
            (
                f"crosscheck:user:{r['session_id']}",
                FINDING_AUDIT_USER_MISMATCH,
                "Critical",
                now_ns,
                r["session_id"],
                None,
                r["namespace"],
                r["pod"],
                f"the token of session {r['session_id']} names {r['token_user']}, but its "
                f"audit event {r['audit_id']} names {r['audit_user']}",
            )
            for r in mismatched
        ] + [
            (
                f"crosscheck:unaudited:{r['session_id']}",
                FINDING_NOT_IN_AUDIT_LOG,
                "Warning",
                now_ns,
                r["session_id"],
                None,
                r["namespace"],
                r["pod"],
                f"session {r['session_id']} (token of {r['token_user']}) has a session root "
                "but no exec or debug event in the audit log, which has moved on past it",
            )
            for r in unaudited
        ]
        if not rows:
            return 0
        before = self._query("SELECT count(*) AS n FROM findings")[0]["n"]
        with self._transaction() as cursor:
            cursor.executemany(self._sql(_FINDING_INSERT), rows)
        return int(self._query("SELECT count(*) AS n FROM findings")[0]["n"]) - int(before)

    # -- reading -----------------------------------------------------------------------

    def _priorities(self, session_ids: list[str]) -> dict[str, dict[str, int]]:
        counts: dict[str, dict[str, int]] = {sid: {} for sid in session_ids}
        for start in range(0, len(session_ids), 500):
            chunk = session_ids[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for row in self._query(
                f"SELECT session_id, priority, count(*) AS n FROM alerts "  # noqa: S608 - marks only
                f"WHERE session_id IN ({marks}) GROUP BY session_id, priority",
                chunk,
            ):
                counts[row["session_id"]][row["priority"]] = int(row["n"])
        return counts

    @staticmethod
    def _session_row(row: dict[str, Any]) -> dict[str, Any]:
        learnt = [name for name in ("token", "admission", "audit") if row.pop(f"via_{name}", 0)]
        row["learnt_from"] = learnt
        row["attribution"] = RANK_ATTRIBUTION.get(int(row.pop("attribution_rank", 0)), "?")
        for key in ("user_groups", "command"):
            if row.get(key) is not None:
                row[key] = json.loads(row[key])
        return row

    def sessions(self, query: SessionQuery) -> list[dict[str, Any]]:
        filters = (query.user, query.namespace, query.pod, query.after and query.after[1])
        if not all(_holdable(value) for value in filters):
            return []
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        for column, value in (
            ("user_name", query.user),
            ("namespace", query.namespace),
            ("pod", query.pod),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        if query.since_ns is not None:
            where.append("started_ns >= ?")
            params.append(query.since_ns)
        if query.until_ns is not None:
            where.append("started_ns < ?")
            params.append(query.until_ns)
        if query.attribution is not None:
            names = UNATTRIBUTED if query.attribution == "unattributed" else (query.attribution,)
            where.append(f"attribution_rank IN ({', '.join('?' for _ in names)})")
            params.extend(ATTRIBUTION_RANK.get(name, -1) for name in names)
        if query.has_alerts is not None:
            exists = "EXISTS (SELECT 1 FROM alerts a WHERE a.session_id = s.session_id)"
            where.append(exists if query.has_alerts else f"NOT {exists}")
        if query.after is not None:
            # the first term alone is an index range, so a deep page costs a shallow one
            where.append("started_ns <= ? AND (started_ns < ? OR s.session_id < ?)")
            params.extend([query.after[0], query.after[0], query.after[1]])
        # only fixed column names are joined in; every value is a bound parameter
        rows = self._query(
            "SELECT s.*, (SELECT count(*) FROM processes p WHERE p.session_id = s.session_id) "  # noqa: S608
            f"AS commands FROM sessions s WHERE {' AND '.join(where)} "
            "ORDER BY started_ns DESC, s.session_id DESC LIMIT ?",
            [*params, query.limit],
        )
        priorities = self._priorities([row["session_id"] for row in rows])
        out = []
        for row in rows:
            row = self._session_row(row)
            row["alerts"] = priorities.get(row["session_id"], {})
            out.append(row)
        return out

    def session(
        self,
        session_id: str,
        alerts_limit: int | None = None,
        alerts_after: tuple[int, str] | None = None,
        processes_limit: int | None = None,
    ) -> dict[str, Any] | None:
        """One session with its audit events, processes, alerts and findings.

        A session can hold 100,000 alerts: ``alerts_limit`` pages them (time order, keyset:
        ``alerts_after`` is the (time_ns, key) of the last one seen); ``alert_count`` is
        how many it holds in all. ``processes_limit`` keeps the first processes by start
        (``process_count``: all of them)."""
        if not _holdable(session_id) or not _holdable(alerts_after and alerts_after[1]):
            return None
        rows = self._query("SELECT * FROM sessions WHERE session_id = ?", [session_id])
        if not rows:
            return None
        session = self._session_row(rows[0])
        session["audit_events"] = [
            self._audit_row(row)
            for row in self._query(
                "SELECT audit_id, stage, time_ns, verb, subresource, user_name, "
                "impersonated_user, command, request_uri, response_code, outcome, event "
                "FROM audit_events WHERE session_id = ? ORDER BY time_ns",
                [session_id],
            )
        ]
        session["processes"] = self._query(
            "SELECT host, pid, ppid, start_ns, args, first_seen_ns FROM processes "
            "WHERE session_id = ? ORDER BY start_ns, pid LIMIT ?",
            [session_id, processes_limit if processes_limit is not None else _NO_LIMIT],
        )
        session["process_count"] = (
            len(session["processes"])
            if processes_limit is None or len(session["processes"]) < processes_limit
            else int(
                self._query(
                    "SELECT count(*) AS n FROM processes WHERE session_id = ?", [session_id]
                )[0]["n"]
            )
        )
        where = "session_id = ?"
        params: list[Any] = [session_id]
        if alerts_after is not None:
            # a range first (the index serves it), then the tie-break
            where += " AND time_ns >= ? AND (time_ns > ? OR alert_key > ?)"
            params += [alerts_after[0], alerts_after[0], alerts_after[1]]
        params.append(alerts_limit if alerts_limit is not None else _NO_LIMIT)
        session["alerts"] = [
            self._alert_row(row)
            for row in self._query(
                "SELECT alert_key AS key, time_ns, rule, priority, source, attribution, "  # noqa: S608 - fixed text
                f"output, output_fields FROM alerts WHERE {where} "
                "ORDER BY time_ns, alert_key LIMIT ?",
                params,
            )
        ]
        session["alert_count"] = (
            len(session["alerts"])
            if alerts_limit is None and alerts_after is None
            else int(
                self._query("SELECT count(*) AS n FROM alerts WHERE session_id = ?", [session_id])[
                    0
                ]["n"]
            )
        )
        session["findings"] = self._query(
            "SELECT time_ns, kind, priority, detail FROM findings WHERE session_id = ? "
            "ORDER BY time_ns",
            [session_id],
        )
        return session

    @staticmethod
    def _audit_row(row: dict[str, Any]) -> dict[str, Any]:
        """Where the exec came from, from the event as kube-apiserver wrote it."""
        row["command"] = json.loads(row["command"]) if row["command"] else []
        try:
            event = json.loads(row.pop("event") or "{}")
        except ValueError:
            event = {}
        ips = event.get("sourceIPs") if isinstance(event, dict) else None
        agent = event.get("userAgent") if isinstance(event, dict) else None
        row["source_ips"] = [str(ip) for ip in ips] if isinstance(ips, list) else []
        row["user_agent"] = str(agent) if agent is not None else None
        return row

    @staticmethod
    def _alert_row(row: dict[str, Any]) -> dict[str, Any]:
        """The process an alert is on (``pid``), from its fields; the fields stay out."""
        try:
            fields = json.loads(row.pop("output_fields") or "{}")
        except ValueError:
            fields = {}
        pid = fields.get("proc.pid") if isinstance(fields, dict) else None
        row["pid"] = pid if isinstance(pid, int) and not isinstance(pid, bool) else None
        return row

    def audit_event(self, audit_id: str) -> dict[str, Any] | None:
        """One audit event, as kube-apiserver wrote it (``event``) and as read."""
        if not _holdable(audit_id):
            return None
        rows = self._query(
            "SELECT audit_id, stage, time_ns, verb, subresource, namespace, pod, container, "
            "command, user_name, impersonated_user, request_uri, response_code, session_id, "
            "outcome, event FROM audit_events WHERE audit_id = ?",
            [audit_id],
        )
        if not rows:
            return None
        row = rows[0]
        row["command"] = json.loads(row["command"]) if row["command"] else []
        row["event"] = json.loads(row["event"])
        return row

    def users(self, since_ns: int | None, until_ns: int | None = None) -> list[dict[str, Any]]:
        low = since_ns if since_ns is not None else -(2**62)
        high = until_ns if until_ns is not None else 2**62
        rows = self._query(
            "SELECT user_name, count(*) AS sessions, "
            "count(DISTINCT namespace || '/' || pod) AS pods, max(started_ns) AS last_ns "
            "FROM sessions WHERE started_ns >= ? AND started_ns < ? AND user_name IS NOT NULL "
            "GROUP BY user_name ORDER BY user_name",
            [low, high],
        )
        alerts = self._query(
            "SELECT s.user_name, a.priority, count(*) AS n FROM alerts a "
            "JOIN sessions s ON s.session_id = a.session_id "
            "WHERE s.started_ns >= ? AND s.started_ns < ? GROUP BY s.user_name, a.priority",
            [low, high],
        )
        by_user: dict[str, dict[str, int]] = {}
        for row in alerts:
            by_user.setdefault(row["user_name"], {})[row["priority"]] = int(row["n"])
        for row in rows:
            row["alerts"] = by_user.get(row["user_name"], {})
        return rows

    def findings(self, since_ns: int | None, until_ns: int | None = None) -> list[dict[str, Any]]:
        low = since_ns if since_ns is not None else -(2**62)
        high = until_ns if until_ns is not None else 2**62
        rows = self._query(
            "SELECT time_ns, kind, priority, user_name, namespace, pod, session_id, detail, "
            "finding_key FROM findings WHERE time_ns >= ? AND time_ns < ? "
            "ORDER BY time_ns DESC",
            [low, high],
        )
        for row in rows:
            # an exec the webhook did not attribute is keyed by its audit event
            key = str(row.pop("finding_key"))
            row["audit_id"] = key.removeprefix("audit:") if key.startswith("audit:") else None
        return rows

    def close(self) -> None:  # pragma: no cover - per dialect
        raise NotImplementedError


class SQLiteStore(SqlStore):
    """SQLite in WAL mode: the embedded default."""

    def __init__(self, path: Path) -> None:
        try:
            self._db = connect_wal(path)
        except (sqlite3.Error, OSError) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {path}: {exc}") from None
        self.path = path
        super().__init__()

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Any]:
        with self._lock:
            cursor = self._db.cursor()
            try:
                # a reader (the UI, the CLI) must not take the write lock from the consumer
                cursor.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                yield cursor
                cursor.execute("COMMIT")
            except sqlite3.OperationalError as exc:
                self._rollback()
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None
            except sqlite3.Error as exc:
                self._rollback()
                raise StoreError(f"SQLite store {self.path}: {exc}") from None
            except BaseException:
                self._rollback()
                raise
            finally:
                cursor.close()

    def _rollback(self) -> None:
        if self._db.in_transaction:
            self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()


class PostgresStore(SqlStore):
    """PostgreSQL through psycopg 3: the shared store of a cluster."""

    placeholder = "%s"

    def __init__(self, url: str, connect_timeout: int = 5) -> None:
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self.connect_timeout = connect_timeout
        self._db: Any = None
        self._connect()
        super().__init__()

    def _lock_schema(self, cursor: Any) -> None:
        # held until the transaction ends; the key is arbitrary but fixed for whoexec
        cursor.execute("SELECT pg_advisory_xact_lock(7731190021)")

    def _redacted(self) -> str:
        parts = urllib.parse.urlsplit(self.url)
        host = parts.hostname or "localhost"
        return f"postgresql://{host}{':' + str(parts.port) if parts.port else ''}{parts.path}"

    def _connect(self) -> None:
        try:
            self._db = self._psycopg.connect(self.url, connect_timeout=self.connect_timeout)
        except self._psycopg.OperationalError as exc:
            # the message names the server, never the password in the URL
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(
                f"cannot reach PostgreSQL store {self._redacted()}: {reason}"
            ) from None

    @contextlib.contextmanager
    def _transaction(self, write: bool = True) -> Iterator[Any]:
        psycopg = self._psycopg
        with self._lock:
            if self._db is None or self._db.closed:
                self._connect()
            try:
                with self._db.transaction(), self._db.cursor() as cursor:
                    yield cursor
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                self._db = None  # reconnect on the next call
                raise StoreUnavailable(f"PostgreSQL store {self._redacted()}: {exc}") from None
            except psycopg.Error as exc:
                raise StoreError(f"PostgreSQL store {self._redacted()}: {exc}") from None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


def open_store(url: str) -> SqlStore:
    """``sqlite:///path`` (or a bare path) or ``postgresql://...``."""
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("sqlite:///"):
        # as SQLAlchemy spells it: sqlite:///relative.db, sqlite:////absolute/path.db
        return SQLiteStore(Path(url.removeprefix("sqlite:///")))
    if url.startswith("sqlite://"):
        raise ConfigError(f"--db {url!r}: use sqlite:///relative/path or sqlite:////absolute")
    if "://" in url:
        raise ConfigError(f"--db {url.split('://')[0]}:// is not supported: sqlite or postgresql")
    return SQLiteStore(Path(url))
