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

import orjson

from webhook.audit import check_event, events_in_list, exec_audit
from webhook.errors import MalformedAuditEvent
from webhook.store.writer import StoreWriter, facts_from_audit
from webhook.text import loggable

log = logging.getLogger("whoexec.audit")


class AuditIngestor:
    """Feeds audit events to a store writer; has the ``feed``/``tick`` shape of a pipeline."""

    def __init__(self, writer: StoreWriter, webhook_name: str) -> None:
        self.writer = writer
        self.webhook_name = webhook_name
        self.stats: Counter[str] = Counter()
        self.errors: list[str] = []

    def _error(self, message: str) -> None:
        self.stats["malformed"] += 1
        if len(self.errors) < 1000:
            self.errors.append(message)
        log.warning("skipped audit input: %s", loggable(message))

    def ingest_event(self, data: object, where: str) -> None:
        try:
            event = check_event(data, where)
            audit = exec_audit(event, self.webhook_name, where)
        except MalformedAuditEvent as exc:
            self._error(str(exc))
            return
        if audit is None:
            self.stats["other"] += 1
            return
        self.stats[audit.subresource] += 1
        if audit.unattributed and not audit.session_id:
            self.stats["unattributed"] += 1
        self.writer.add(facts_from_audit(audit, orjson.dumps(event).decode()))

    def feed(self, lines: Iterable[bytes | str], where: str = "audit log") -> int:
        count = 0
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            count += 1
            try:
                data = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                self._error(f"{where} line {number}: not JSON: {exc}")
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
