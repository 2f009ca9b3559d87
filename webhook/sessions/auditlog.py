"""Kubernetes audit events (exec, attach, kubectl debug) into the session store (adapter).

``whoexec audit ingest FILE`` reads the JSON-lines file kube-apiserver writes with
``--audit-log-path`` (optionally following it); ``POST /k8s-audit`` takes the audit
webhook backend's ``EventList``. A malformed line or item is reported by its line number
or index and skipped; everything else is still ingested.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

import orjson

from webhook.errors import MalformedAuditEvent, StoreRejected
from webhook.sessions.audit import check_event, events_in_list, exec_audit
from webhook.sessions.store.writer import StoreWriter, facts_from_audit
from webhook.text import loggable

if TYPE_CHECKING:
    from webhook.deadletters import DeadLetters

log = logging.getLogger("whoexec.audit")


class AuditIngestor:
    """Feeds audit events to a store writer; has the ``feed``/``tick`` shape of a pipeline.

    An event that cannot be read or stored (not an object, a time no database holds, JSON
    nested past what can be written back) is skipped alone, named by its line or index,
    and kept in ``dead_letters`` when given; the others are ingested."""

    def __init__(
        self, writer: StoreWriter, webhook_name: str, dead_letters: DeadLetters | None = None
    ) -> None:
        self.writer = writer
        self.webhook_name = webhook_name
        self.dead_letters = dead_letters
        self.stats: Counter[str] = Counter()
        self.errors: list[str] = []

    def _error(
        self, message: str, where: str, data: object = None, raw: bytes | str | None = None
    ) -> None:
        """Count, log and dead-letter what was skipped: ``data`` as read, or the ``raw``
        line when it could not be read."""
        self.stats["malformed"] += 1
        if len(self.errors) < 1000:
            self.errors.append(message)
        log.warning("skipped audit input: %s", loggable(message))
        if self.dead_letters is None:
            return
        if raw is not None:
            line: bytes | str = raw
        else:
            try:
                line = orjson.dumps(data)
            except TypeError:  # nested past what orjson writes: the shape is the reason
                line = f"<{type(data).__name__} nested too deep to keep>"
        self.dead_letters.add("audit_event", where, line, message)

    def ingest_event(self, data: object, where: str) -> None:
        try:
            event = check_event(data, where)
            audit = exec_audit(event, self.webhook_name, where)
        except MalformedAuditEvent as exc:
            self._error(str(exc), where, data)
            return
        if audit is None:
            self.stats["other"] += 1
            return
        try:
            event_json = orjson.dumps(event).decode()
        except TypeError:  # orjson reads 1,024 levels and writes 254
            self._error(f"{where}: the event nests too deep to be kept", where, data)
            return
        try:
            self.writer.add(facts_from_audit(audit, event_json))
        except StoreRejected as exc:
            self._error(f"{where}: {exc}", where, data)
            return
        self.stats[audit.subresource] += 1
        if audit.unattributed and not audit.session_id:
            self.stats["unattributed"] += 1

    def feed(self, lines: Iterable[bytes | str], where: str = "audit log") -> int:
        count = 0
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            count += 1
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._error(
                    f"{where} line {number}: not JSON: {exc}", f"{where} line {number}", raw=line
                )
                continue
            self.ingest_event(data, f"{where} line {number}")
        self.writer.flush()
        return count

    def feed_event_list(self, body: bytes) -> int:
        """An ``EventList`` POST body; raises MalformedAuditEvent if it is not one."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise MalformedAuditEvent(f"body is not JSON: {exc}") from None
        items = events_in_list(data)
        for index, item in items:
            self.ingest_event(item, f"items[{index}]")
        self.writer.flush()
        return len(items)

    def tick(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
