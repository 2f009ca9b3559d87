"""Turning what the consumer and the audit log see into store facts, and writing them.

The writer batches, and it never drops a batch on a database error: it keeps the batch
and retries with backoff. While it retries, the pipeline waits; with ``--listen`` the
durable inbox keeps accepting, so nothing accepted is lost while the database is away.
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable

import orjson

from webhook.audit import ExecAudit
from webhook.errors import StoreUnavailable
from webhook.falco import FalcoAlert, ProcessFacts, parse_time_ns
from webhook.lineage import Outcome, replay_id
from webhook.store.model import (
    AlertFact,
    AuditFact,
    Batch,
    FindingFact,
    ProcessFact,
    SessionFact,
)
from webhook.store.sql import SqlStore

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


def _command_from_root_args(args: str | None, variable: str) -> tuple[str, ...] | None:
    """The command after ``VAR=<token>`` in the env execve's args (space-joined by Falco)."""
    if not args:
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
    ) -> None:
        self.store = store
        self.batch_size = batch_size
        self.max_wait = max_wait
        self.backoff = backoff
        self.sleep = sleep
        self.variable = variable
        self.pending = Batch()
        self.failures = 0
        self._lock = threading.Lock()

    # the pipeline's observer: every outcome, roots included
    def record(self, outcome: Outcome) -> None:
        with self._lock:
            self.pending.extend(facts_from_outcome(outcome, self.variable))

    # the pipeline's sink: enriched alerts and findings
    def write(self, alerts: list[FalcoAlert]) -> None:
        with self._lock:
            self.pending.extend(facts_from_alerts(alerts))
        self.flush()

    def add(self, batch: Batch) -> None:
        with self._lock:
            self.pending.extend(batch)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            batch, self.pending = self.pending, Batch()
        if not len(batch):
            return
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
                    with self._lock:  # keep it: a later flush may still succeed
                        batch.extend(self.pending)
                        self.pending = batch
                    raise
                log.warning("session store unavailable (%s); retrying in %.1fs", exc, delay)
                self.sleep(delay)
                delay = min(delay * 2, self.backoff[1])

    def close(self) -> None:
        self.flush()
        self.store.close()
