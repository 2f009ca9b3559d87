"""Kubernetes audit events of exec, attach and kubectl debug (pure core).

kube-apiserver writes ``audit.k8s.io/v1`` ``Event`` objects, one JSON line each with
``--audit-log-path``, or as an ``EventList`` POSTed by the audit webhook backend. For
``kubectl exec``:

* ``objectRef.subresource`` is ``exec`` (``attach`` for attach), ``verb`` is ``get`` for
  WebSocket exec and ``create`` for SPDY, ``responseStatus.code`` is 101;
* ``requestURI`` carries the caller's *original* command as repeated ``command=``
  parameters (the webhook's rewrite is not in it);
* a mutating webhook's ``auditAnnotations`` appear under ``annotations`` as
  ``<webhook-name>/<key>``, but only from the ``ResponseStarted``/``ResponseComplete``
  stages: at ``RequestReceived`` admission has not run yet;
* ``user`` is the authenticated user; ``impersonatedUser`` is set when it impersonated.

``kubectl debug`` adds an ephemeral container: a ``patch`` (``update`` from older
clients) of ``pods/ephemeralcontainers``, answered 200. It carries the webhook's
annotations like an exec; at the ``Metadata`` level its ``requestURI`` names neither the
container nor the command (they are in the request body). A ``get`` of that subresource
only reads.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any, TypedDict

from webhook.errors import MalformedAuditEvent
from webhook.times import MAX_NS, MIN_NS, rfc3339_ns

#: the pod subresources whose events are sessions: exec, attach, and kubectl debug's
SUBRESOURCES = ("exec", "attach", "ephemeralcontainers")
#: stages at which admission has run, so a missing annotation means something
ADMITTED_STAGES = frozenset({"ResponseStarted", "ResponseComplete", "Panic"})


class AuditEvent(TypedDict, total=False):
    kind: str
    apiVersion: str
    level: str
    auditID: str
    stage: str
    requestURI: str
    verb: str
    user: dict[str, Any]
    impersonatedUser: dict[str, Any]
    sourceIPs: list[str]
    userAgent: str
    objectRef: dict[str, Any]
    responseStatus: dict[str, Any]
    requestReceivedTimestamp: str
    stageTimestamp: str
    annotations: dict[str, str]


@dataclass(frozen=True, slots=True)
class ExecAudit:
    """One exec/attach audit event, as whoexec stores it."""

    audit_id: str
    stage: str
    subresource: str  # exec | attach | ephemeralcontainers
    verb: str
    time_ns: int
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
    admitted: bool  # the stage is one at which admission annotations can be present

    @property
    def effective_user(self) -> str:
        """The user the exec ran as: the impersonated one when impersonating."""
        return self.impersonated_user or self.user

    @property
    def unattributed(self) -> bool:
        """An admitted exec, or debug container, that the webhook did not tag with a
        session id (an update that adds no container has nothing to tag)."""
        if not self.admitted or self.session_id:
            return False
        if self.subresource == "ephemeralcontainers":
            return self.outcome != "skipped-no-new-container"
        return self.subresource == "exec"


def parse_time_ns(text: str, field: str) -> int:
    if not isinstance(text, str):
        raise MalformedAuditEvent(f"{field} {str(text)[:40]!r} is not an RFC 3339 time")
    try:
        ns = rfc3339_ns(text)
    except ValueError:
        raise MalformedAuditEvent(f"{field} {text[:40]!r} is not an RFC 3339 time") from None
    if not MIN_NS <= ns <= MAX_NS:  # what the store holds: signed 64-bit ns
        raise MalformedAuditEvent(f"{field} {text[:40]!r} is out of range (1677 to 2262)")
    return ns


def _text(value: object, where: str, name: str) -> str | None:
    """An optional string field (Go's map[string]string and string fields): None or str."""
    if value is None or isinstance(value, str):
        return value
    raise MalformedAuditEvent(f"{where}: field {name!r} must be a string")


def check_event(data: object, where: str = "event") -> AuditEvent:
    if not isinstance(data, dict):
        raise MalformedAuditEvent(f"{where}: an audit event is a JSON object")
    if data.get("kind") != "Event" or data.get("apiVersion") != "audit.k8s.io/v1":
        raise MalformedAuditEvent(
            f"{where}: expected kind Event, apiVersion audit.k8s.io/v1; got kind "
            f"{data.get('kind')!r}, apiVersion {data.get('apiVersion')!r}"
        )
    for key in ("auditID", "stage", "verb", "requestURI"):
        if not isinstance(data.get(key), str):
            raise MalformedAuditEvent(f"{where}: field {key!r} must be a string")
    for key in ("user", "objectRef", "annotations", "impersonatedUser", "responseStatus"):
        if key in data and data[key] is not None and not isinstance(data[key], dict):
            raise MalformedAuditEvent(f"{where}: field {key!r} must be an object")
    return data  # type: ignore[return-value]


def events_in_list(data: object) -> list[tuple[int, object]]:
    """The items of an ``EventList`` (the audit webhook backend's body), with indexes."""
    if not isinstance(data, dict) or data.get("kind") != "EventList":
        raise MalformedAuditEvent("body must be an audit.k8s.io/v1 EventList")
    items = data.get("items")
    if not isinstance(items, list):
        raise MalformedAuditEvent("EventList field 'items' must be a list")
    return list(enumerate(items))


def exec_audit(event: AuditEvent, webhook_name: str, where: str = "event") -> ExecAudit | None:
    """The exec, attach or debug facts of an event, or None for any other request."""
    ref = event.get("objectRef") or {}
    subresource = ref.get("subresource")
    if ref.get("resource") != "pods" or subresource not in SUBRESOURCES:
        return None
    if subresource == "ephemeralcontainers" and event["verb"] not in ("patch", "update"):
        return None
    parsed = urllib.parse.urlsplit(event["requestURI"])
    query = urllib.parse.parse_qs(parsed.query, keep_blank_values=True)
    user = event.get("user") or {}
    impersonated = event.get("impersonatedUser") or {}
    annotations = event.get("annotations") or {}
    status = event.get("responseStatus") or {}
    stamp = event.get("stageTimestamp") or event.get("requestReceivedTimestamp")
    if not isinstance(stamp, str):
        raise MalformedAuditEvent(f"{where}: no stageTimestamp or requestReceivedTimestamp")
    code = status.get("code")
    return ExecAudit(
        audit_id=event["auditID"],
        stage=event["stage"],
        subresource=str(subresource),
        verb=event["verb"],
        time_ns=parse_time_ns(stamp, f"{where}: stageTimestamp"),
        namespace=str(ref.get("namespace", "")),
        pod=str(ref.get("name", "")),
        container=(query.get("container") or [""])[0],
        command=tuple(query.get("command", [])),
        user=str(user.get("username", "")),
        impersonated_user=_text(impersonated.get("username"), where, "impersonatedUser.username"),
        request_uri=event["requestURI"],
        response_code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        session_id=_text(annotations.get(f"{webhook_name}/session-id"), where, "annotations"),
        outcome=_text(annotations.get(f"{webhook_name}/outcome"), where, "annotations"),
        admitted=event["stage"] in ADMITTED_STAGES,
    )
