"""Alerts that whoexec's Falco plugin enriched: take what Falco already says, checked again.

Pure core: no IO, no clock (the alert's own time is used). With the plugin loaded
(``plugin/``, docs/falco-plugin.md), every syscall alert carries ``whoexec.attribution``,
``whoexec.token`` and the session root (``whoexec.root.pid``/``.ts``): the consumer need
not rebuild the lineage. It still names nobody on the plugin's word alone: the token is
verified again with the consumer's own keys, and a user is kept only when the token's
binding matches the alert's own Kubernetes fields (``k8s.ns.name``, ``k8s.pod.name``,
``k8s.pod.uid``, ``container.name``), which are present and say the same thing.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any, cast

from webhook.attribution.falco import FalcoAlert, ProcessFacts, is_whoexec_rule, process_facts
from webhook.attribution.lineage import (
    ATTRIBUTED,
    Attribution,
    Outcome,
    Status,
    TokenVerifier,
    binding_problem,
)

STATUSES: frozenset[str] = frozenset({"verified", "unverified", "tampered", "replayed", "none"})
_SHORT_ID = re.compile(r"[0-9a-f]{12}")


def _int(fields: dict[str, Any], key: str) -> int | None:
    value = fields.get(key)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(fields: dict[str, Any], key: str) -> str | None:
    value = fields.get(key)
    return value if isinstance(value, str) and value else None


def is_plugin_alert(alert: FalcoAlert) -> bool:
    """Whether the Falco plugin enriched the alert (its attribution is in output_fields)."""
    return alert["output_fields"].get("whoexec.attribution") in STATUSES


def plugin_outcome(
    alert: FalcoAlert, variable: str, pattern: re.Pattern[str], verifier: TokenVerifier
) -> Outcome | None:
    """The outcome of a plugin-enriched alert (never held back: Falco saw its root), or
    None for an alert the plugin did not enrich, which the lineage walk attributes."""
    if not is_plugin_alert(alert):
        return None
    facts = process_facts(alert, variable, pattern)
    attribution = plugin_attribution(alert, facts, verifier)
    assert attribution is not None
    return Outcome(alert, attribution, facts, is_whoexec_rule(alert))


def plugin_attribution(
    alert: FalcoAlert, facts: ProcessFacts, verifier: TokenVerifier
) -> Attribution | None:
    """The plugin's attribution of ``alert``, believed only as far as it can be checked
    again here; None when the plugin did not enrich the alert."""
    fields = alert["output_fields"]
    raw = fields.get("whoexec.attribution")
    if raw not in STATUSES:
        return None
    status = cast(Status, raw)
    if status == "none":
        return Attribution("none", via="plugin")
    reason = _str(fields, "whoexec.reason") or ""
    token = _str(fields, "whoexec.token")
    root_pid = _int(fields, "whoexec.root.pid")
    root_ts = _int(fields, "whoexec.root.ts")
    if token is None:
        if status in ATTRIBUTED:
            reason = "the Falco plugin named a user but passed no whoexec.token to check"
        return Attribution("unverified", None, root_pid, "plugin", reason)
    verdict = verifier.verify(token, facts.time_ns // 1_000_000_000)
    identity = verdict.identity
    if identity is None:
        return Attribution("unverified", None, root_pid, "plugin", verdict.error or "", token=token)
    if status not in ATTRIBUTED:
        return Attribution(
            status,
            None,
            root_pid,
            "plugin",
            reason,
            token=token,
            claimed=identity,
            root_start_ns=root_ts,
        )
    problem = ""
    if (_str(fields, "whoexec.user"), _str(fields, "whoexec.session")) != (
        identity.user,
        identity.session_id,
    ):
        problem = "the Falco plugin's whoexec.user or whoexec.session is not its token's"
    elif facts.namespace is None or facts.pod is None:
        problem = (
            "binding unknown: the alert has no k8s.ns.name or k8s.pod.name to check the "
            "token against"
        )
    if problem:
        return Attribution(
            "unverified", None, root_pid, "plugin", problem, token=token, claimed=identity
        )
    # containerd's engine names a container by its 12-character id (DESIGN.md): that
    # says nothing about the Kubernetes name, and is not a mismatch
    name = facts.container_name
    if name is not None and (name == facts.container_id or _SHORT_ID.fullmatch(name)):
        facts = replace(facts, container_name=None)
    problem = binding_problem(identity, facts)
    if problem:
        return Attribution(
            "replayed",
            None,
            root_pid,
            "plugin",
            problem,
            token=token,
            claimed=identity,
            root_start_ns=root_ts,
        )
    return Attribution(
        status, identity, root_pid, "plugin", reason, token=token, root_start_ns=root_ts
    )
