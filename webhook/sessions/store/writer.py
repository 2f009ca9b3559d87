"""Turning what the consumer and the audit log see into store facts, and writing them.

The writer batches, and it never drops a batch on a database error: it keeps the batch
and retries with backoff. While it retries, the pipeline waits; with ``--listen`` the
durable inbox keeps accepting, so nothing accepted is lost while the database is away.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

import orjson

from webhook.attribution.falco import FalcoAlert, ProcessFacts, parse_time_ns
from webhook.attribution.lineage import Outcome, replay_id
from webhook.errors import StoreRejected, StoreUnavailable
from webhook.sessions.audit import ExecAudit
from webhook.sessions.store.model import (
    AlertFact,
    AuditFact,
    Batch,
    Fact,
    FindingFact,
    ProcessFact,
    SessionFact,
)
from webhook.sessions.store.sql import SqlStore
from webhook.text import loggable

log = logging.getLogger("whoexec.store")


def alert_key(alert: FalcoAlert) -> str:
    """Idempotency key: falcosidekick's ``uuid``, else a digest of what Falco sent."""
    if uuid := alert.get("uuid"):
        return f"uuid:{uuid}"
    fields = {k: v for k, v in alert["output_fields"].items() if not k.startswith("whoexec.")}
    canonical = orjson.dumps(
        [alert.get("hostname"), alert["time"], alert["rule"], alert["source"], fields],
        option=orjson.OPT_SORT_KEYS,
    )
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


_INT64 = (-(2**63), 2**63 - 1)
_FIELDS: dict[type, tuple[str, ...]] = {}


def _unstorable(value: object) -> str | None:
    """Why neither database could hold ``value`` in a column, or None."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return None if _INT64[0] <= value <= _INT64[1] else "an integer past 64 bits"
    if isinstance(value, str):
        if "\x00" in value:
            return "a NUL character (PostgreSQL's text cannot hold one)"
        if not value.isascii():
            try:
                value.encode()
            except UnicodeEncodeError:
                return "a lone surrogate, which is not UTF-8"
        return None
    if isinstance(value, tuple):  # stored as a JSON array of strings
        if all(isinstance(item, str) for item in value):
            return None
        return "a list with an item that is not a string"
    return f"a {type(value).__name__} where a text or a number goes"


def check_storable(fact: Fact) -> None:
    """Raise :class:`StoreRejected` unless both databases can hold every field of ``fact``.

    Checked where facts enter the writer, inside the pipeline's per-alert boundary: one
    alert whose facts no database takes is dead-lettered alone, and never fails the batch
    that carries other sessions' facts."""
    kind = type(fact)
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(f.name for f in dataclasses.fields(fact))
    for name in names:
        problem = _unstorable(getattr(fact, name))
        if problem is not None:
            raise StoreRejected(f"{kind.__name__}.{name} holds {problem}")


def _fact_text(fact: Fact) -> str:
    """A fact as JSON for its dead letter (repr when not even JSON can hold it)."""
    try:
        return orjson.dumps(fact).decode()
    except TypeError:
        return repr(fact)


def _command_from_root_args(args: object, variable: str) -> tuple[str, ...] | None:
    """The command after ``VAR=<token>`` in the env execve's args (space-joined by Falco)."""
    if not isinstance(args, str) or not args:
        return None
    words = args.split()
    for index, word in enumerate(words):
        if word.startswith(variable + "="):
            return tuple(words[index + 1 :]) or None
    return None


def shorten_tokens(text: str | None, variable: str) -> str | None:
    """``VAR=v1.<kid>.<payload>.<sig>`` as ``VAR=v1.<kid>...``: the session row holds who."""
    if not text:
        return text
    return re.sub(
        rf"({re.escape(variable)}=v1\.[0-9a-f]{{16}})\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+",
        r"\1...",
        text,
    )


def _process_fact(session_id: str, facts: ProcessFacts, variable: str) -> list[ProcessFact]:
    """The alert's process as a command of the session (none without a pid)."""
    if facts.pid is None:
        return []
    return [
        ProcessFact(
            session_id=session_id,
            host=facts.host,
            pid=facts.pid,
            start_ns=facts.start_ts or 0,
            ppid=facts.ppid,
            args=shorten_tokens(facts.cmdline, variable),
            time_ns=facts.time_ns,
        )
    ]


def _replayed_session(outcome: Outcome, variable: str) -> Batch:
    """A replayed root as a session of its own: no user, the claim kept apart."""
    batch = Batch()
    attribution = outcome.attribution
    claimed, facts = attribution.claimed, outcome.facts
    session_id = replay_id(attribution, facts.host)
    if claimed is None or session_id is None:
        return batch
    batch.sessions.append(
        SessionFact(
            session_id=session_id,
            time_ns=facts.time_ns,
            learnt_from="token",
            namespace=facts.namespace,
            pod=facts.pod,
            pod_uid=facts.pod_uid,
            container=facts.container_name,
            attribution="replayed",
            host=facts.host,
            root_pid=attribution.root_pid,
            started_ns=attribution.root_start_ns,
            claimed_user=claimed.user,
            claimed_session_id=claimed.session_id,
            reason=attribution.reason,
        )
    )
    batch.processes.extend(_process_fact(session_id, facts, variable))
    return batch


def facts_from_outcome(outcome: Outcome, variable: str = "WHOEXEC_IDENTITY") -> Batch:
    """The session and process an attributed (or replayed) outcome tells about."""
    batch = Batch()
    identity = outcome.attribution.identity
    facts = outcome.facts
    if outcome.attribution.status == "replayed":
        return _replayed_session(outcome, variable)
    if identity is None or outcome.attribution.status not in ("verified", "tampered"):
        return batch
    command = None
    if outcome.is_root_event and facts.token_in_args is not None:
        fields = outcome.alert["output_fields"]
        command = _command_from_root_args(fields.get("proc.args"), variable)
    batch.sessions.append(
        SessionFact(
            session_id=identity.session_id,
            time_ns=facts.time_ns,
            learnt_from="token",
            user=identity.user,
            uid=identity.uid,
            groups=identity.groups,
            namespace=identity.namespace,
            pod=identity.pod,
            pod_uid=identity.pod_uid or facts.pod_uid,
            container=identity.container or facts.container_name,
            command=command,
            attribution=outcome.attribution.status,
            host=facts.host,
            root_pid=outcome.attribution.root_pid,
            started_ns=identity.issued_at * 1_000_000_000,
        )
    )
    batch.processes.extend(_process_fact(identity.session_id, facts, variable))
    return batch


def facts_from_alerts(alerts: Iterable[FalcoAlert]) -> Batch:
    """Alerts (enriched ones and whoexec's findings) as rows."""
    batch = Batch()
    for alert in alerts:
        fields = alert["output_fields"]
        time_ns = parse_time_ns(alert["time"])
        # a replayed root's alerts and finding belong to its own session, which names nobody
        session_id = fields.get("whoexec.session.id") or fields.get("whoexec.replay.id")
        user = fields.get("whoexec.user.name")
        key = alert_key(alert)
        if alert["source"] == "whoexec":
            batch.findings.append(
                FindingFact(
                    key=key,
                    kind=alert["rule"],
                    time_ns=time_ns,
                    detail=alert.get("output", ""),
                    session_id=session_id,
                    user=user,
                    namespace=fields.get("k8s.ns.name"),
                    pod=fields.get("k8s.pod.name"),
                    priority=alert.get("priority", "Warning"),
                )
            )
            continue
        batch.alerts.append(
            AlertFact(
                key=key,
                time_ns=time_ns,
                rule=alert["rule"],
                priority=alert.get("priority", ""),
                source=alert["source"],
                output=alert.get("output", ""),
                output_fields=orjson.dumps(fields).decode(),
                attribution=str(fields.get("whoexec.attribution", "none")),
                hostname=alert.get("hostname", ""),
                session_id=session_id,
                user=user,
            )
        )
    return batch


FINDING_UNATTRIBUTED = "Exec not attributed by the webhook"


def facts_from_audit(audit: ExecAudit, event_json: str) -> Batch:
    """An exec, attach or debug audit event, the session it names, or the finding it
    raises."""
    batch = Batch()
    batch.audits.append(
        AuditFact(
            audit_id=audit.audit_id,
            stage=audit.stage,
            time_ns=audit.time_ns,
            verb=audit.verb,
            subresource=audit.subresource,
            namespace=audit.namespace,
            pod=audit.pod,
            container=audit.container,
            command=audit.command,
            user=audit.effective_user,
            impersonated_user=audit.impersonated_user,
            request_uri=audit.request_uri,
            response_code=audit.response_code,
            session_id=audit.session_id,
            outcome=audit.outcome,
            event=event_json,
        )
    )
    if audit.session_id:
        batch.sessions.append(
            SessionFact(
                session_id=audit.session_id,
                time_ns=audit.time_ns,
                learnt_from="admission",
                user=audit.effective_user,
                namespace=audit.namespace,
                pod=audit.pod,
                # a debug container's event names neither (they are in the request body)
                container=audit.container or None,
                command=audit.command or None,
                audit_id=audit.audit_id,
                started_ns=audit.time_ns,
            )
        )
    elif audit.unattributed and audit.response_code in (None, 101, 200):
        why = (
            f"the webhook answered {audit.outcome}"
            if audit.outcome
            else "no whoexec annotation: the webhook was bypassed, down or not called"
        )
        what = (
            f"added a debug container to {audit.namespace}/{audit.pod}"
            if audit.subresource == "ephemeralcontainers"
            else f"ran exec {list(audit.command)} in {audit.namespace}/{audit.pod} "
            f"({audit.container or 'default container'})"
        )
        batch.findings.append(
            FindingFact(
                key=f"audit:{audit.audit_id}",
                kind=FINDING_UNATTRIBUTED,
                time_ns=audit.time_ns,
                detail=(
                    f"{audit.effective_user} {what} without a whoexec identity: {why} "
                    f"(auditID {audit.audit_id})"
                ),
                user=audit.effective_user,
                namespace=audit.namespace,
                pod=audit.pod,
                priority="Warning",
            )
        )
    return batch


class StoreWriter:
    """Batches facts and writes them; a failed write is kept and retried, never dropped.

    ``max_wait`` bounds how long one flush retries (batch mode reports a clear error
    then); ``None`` retries for as long as it takes (follow and listen modes).
    """

    def __init__(
        self,
        store: SqlStore,
        *,
        batch_size: int = 500,
        max_wait: float | None = None,
        backoff: tuple[float, float] = (0.2, 30.0),
        sleep: Callable[[float], None] = time.sleep,
        variable: str = "WHOEXEC_IDENTITY",
        on_rejected: Callable[[str, str], None] | None = None,
    ) -> None:
        self.store = store
        #: told about each fact the database refused for its data (the fact as JSON, and
        #: why): the consumer dead-letters it
        self.on_rejected = on_rejected
        self.rejected = 0
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.backoff = backoff
        self.sleep = sleep
        self.variable = variable
        self.pending = Batch()
        self.failures = 0
        self._lock = threading.Lock()

    def _take(self, batch: Batch) -> None:
        """Queue facts that every database can hold; StoreRejected (nothing queued) if not."""
        for fact in batch.facts():
            check_storable(fact)
        with self._lock:
            self.pending.extend(batch)

    # the pipeline's observer: every outcome, roots included
    def record(self, outcome: Outcome) -> None:
        self._take(facts_from_outcome(outcome, self.variable))

    # the pipeline's sink: enriched alerts and findings (StoreRejected for the whole list
    # if one cannot be stored: the pipeline then writes them one by one)
    def write(self, alerts: list[FalcoAlert]) -> None:
        self._take(facts_from_alerts(alerts))
        self.flush()

    def add(self, batch: Batch) -> None:
        self._take(batch)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Write what is pending. While the database is away it retries (up to
        ``max_wait``, then StoreUnavailable with everything kept). A fact the database
        refuses for its data costs that fact alone: the batch is written apart, every
        other fact is stored, and the refused one goes to ``on_rejected``."""
        with self._lock:
            batch, self.pending = self.pending, Batch()
        if not len(batch):
            return
        try:
            self._ingest(batch)
        except StoreUnavailable:
            self._keep([batch])
            raise
        except Exception:  # the data, not the database: find the facts it refuses
            self._ingest_apart(batch.facts())

    def _keep(self, batches: list[Batch]) -> None:
        """Put facts back in front of what is pending: a later flush may still succeed."""
        with self._lock:
            kept = Batch()
            for batch in batches:
                kept.extend(batch)
            kept.extend(self.pending)
            self.pending = kept

    def _ingest(self, batch: Batch) -> None:
        delay = self.backoff[0]
        started = time.monotonic()
        while True:
            try:
                self.store.ingest(batch)
                return
            except StoreUnavailable as exc:
                self.failures += 1
                waited = time.monotonic() - started
                if self.max_wait is not None and waited >= self.max_wait:
                    raise
                log.warning("session store unavailable (%s); retrying in %.1fs", exc, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.backoff[1])

    def _ingest_apart(self, facts: list[Fact]) -> None:
        """Halves, then halves of halves, until each refused fact stands alone: a few
        transactions per refused fact, and every other fact stored (in order)."""
        work = [facts]
        while work:
            part = work.pop()
            try:
                self._ingest(Batch.of(part))
            except StoreUnavailable:
                self._keep([Batch.of(part), *(Batch.of(rest) for rest in reversed(work))])
                raise
            except Exception as exc:  # the data, as in flush
                if len(part) > 1:
                    middle = len(part) // 2
                    work += [part[middle:], part[:middle]]
                    continue
                self.rejected += 1
                why = f"{type(exc).__name__}: {exc}"
                log.error("the session store refused a fact: %s", loggable(why))
                if self.on_rejected is not None:
                    self.on_rejected(_fact_text(part[0]), why)

    def close(self) -> None:
        self.flush()
        self.store.close()
