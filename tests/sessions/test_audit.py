"""kubectl debug in the audit log: the ``pods/ephemeralcontainers`` event carries the
webhook's session id, is linked to the debug session, and a debug session is not
"missing from the audit log"."""

from __future__ import annotations

import copy
import json

import pytest

from tests.conftest import DATA
from webhook.attribution.lineage import Attributor, TokenVerifier
from webhook.attribution.pipeline import MemorySink, Pipeline
from webhook.identity import Identity, sign_identity
from webhook.sessions.audit import check_event, exec_audit
from webhook.sessions.auditlog import AuditIngestor
from webhook.sessions.store import SessionQuery, open_store
from webhook.sessions.store.sql import FINDING_NOT_IN_AUDIT_LOG
from webhook.sessions.store.writer import FINDING_UNATTRIBUTED, StoreWriter

WEBHOOK = "exec.whoexec.io"
#: the real event of `kubectl debug -n shop web-0 --image=... -c debugger --target=app
#: --attach=false -- sh -c 'sleep 1000'` by alice on the e2e cluster (Kubernetes 1.37.2,
#: audit level Metadata), as its audit log wrote it
REAL = json.loads((DATA / "audit" / "kubectl-debug-target.json").read_text())
SID = REAL["annotations"][f"{WEBHOOK}/session-id"]
ISSUED = 1796326954  # the event's own second: the webhook minted the token then
EVER = -(2**62)


def debug_event(**changes) -> dict:
    """The real event, with ``changes``."""
    return {**copy.deepcopy(REAL), **changes}


def test_a_debug_container_s_event_is_a_session_event_with_the_webhook_s_session_id():
    audit = exec_audit(check_event(debug_event()), WEBHOOK)
    assert audit is not None
    assert (audit.subresource, audit.verb, audit.session_id) == (
        "ephemeralcontainers",
        "patch",
        SID,
    )
    assert (audit.namespace, audit.pod, audit.user) == ("shop", "web-0", "alice")
    # at the Metadata level the container and the command are in the body, not the URI
    assert (audit.container, audit.command) == ("", ())
    assert not audit.unattributed


@pytest.mark.parametrize("verb", ["patch", "update"])
def test_both_verbs_kubectl_uses_to_add_a_debug_container_count(verb):
    audit = exec_audit(check_event(debug_event(verb=verb)), WEBHOOK)
    assert audit is not None and audit.session_id == SID


def test_reading_the_ephemeral_containers_is_no_session():
    assert exec_audit(check_event(debug_event(verb="get")), WEBHOOK) is None


def test_a_debug_container_the_webhook_did_not_tag_is_unattributed_unless_none_was_added():
    bare = debug_event(annotations={"authorization.k8s.io/decision": "allow"})  # webhook down
    audit = exec_audit(check_event(bare), WEBHOOK)
    assert audit is not None and audit.unattributed
    same = debug_event(annotations={f"{WEBHOOK}/outcome": "skipped-no-new-container"})
    audit = exec_audit(check_event(same), WEBHOOK)
    assert audit is not None and not audit.unattributed


# --- in the store ----------------------------------------------------------------------------


def debug_session_alerts(signer) -> list[bytes]:
    """The debug container's first process (a --target container: vpid 9, no parent named)
    and a `cat /etc/shadow` under it, as Falco reports them."""
    token = sign_identity(
        Identity(SID, "alice", "", ("devs",), "shop", "web-0", "debugger-x7k", ISSUED, "uid-W"),
        signer,
    )
    start = ISSUED * 10**9 + 300_000_000

    def alert(rule: str, pid: int, **fields) -> bytes:
        return json.dumps(
            {
                "hostname": "node-a",
                "output": rule,
                "priority": "Warning",
                "rule": rule,
                "source": "syscall",
                "tags": ["whoexec"] if rule.startswith("Whoexec") else [],
                "time": "2026-12-03T19:42:35.000000000Z",
                "output_fields": {
                    "container.id": "5e1f00d2a9b3",
                    "container.name": "debugger-x7k",
                    "k8s.ns.name": "shop",
                    "k8s.pod.name": "web-0",
                    "k8s.pod.uid": "uid-W",
                    "proc.pid": pid,
                    "proc.env[WHOEXEC_IDENTITY]": token,
                    **fields,
                },
            }
        ).encode()

    return [
        alert(
            "Whoexec exec entry",
            900,
            **{"proc.vpid": 9, "proc.pname": None, "proc.pid.ts": start, "proc.args": ""},
        ),
        alert(
            "Read sensitive file untrusted",
            901,
            **{"proc.vpid": 10, "proc.apid[1]": 900, "proc.pid.ts": start + 10**8},
        ),
    ]


def consume(url: str, trusted, lines: list[bytes]) -> None:
    writer = StoreWriter(open_store(url))
    pipeline = Pipeline(Attributor(TokenVerifier(trusted)), [MemorySink(), writer])
    pipeline.observe(writer.record)
    pipeline.feed(lines)
    pipeline.close()


def ingest(url: str, *events: dict) -> AuditIngestor:
    ingestor = AuditIngestor(StoreWriter(open_store(url)), WEBHOOK)
    ingestor.feed([json.dumps(e).encode() for e in events], where="audit.log")
    ingestor.close()
    return ingestor


#: an exec an hour later: the audit log has moved on past the debug session
LATER_EXEC = {
    **debug_event(
        auditID="a0d1e2b3-0000-4000-8000-0000000000ee",
        stageTimestamp="2026-12-03T20:42:35.000000Z",
        requestURI="/api/v1/namespaces/shop/pods/web-0/exec?command=true&container=app",
        verb="create",
        annotations={f"{WEBHOOK}/session-id": "another", f"{WEBHOOK}/outcome": "injected"},
    ),
    "objectRef": {"resource": "pods", "namespace": "shop", "name": "web-0", "subresource": "exec"},
    "responseStatus": {"code": 101},
}
NOW = (ISSUED + 7200) * 10**9


def test_a_debug_session_is_linked_to_its_audit_event_and_not_missing_from_the_log(
    store_url, signer, trusted
):
    consume(store_url, trusted, debug_session_alerts(signer))
    ingestor = ingest(store_url, debug_event(), LATER_EXEC)
    assert ingestor.stats["ephemeralcontainers"] == 1
    store = open_store(store_url)
    try:
        assert store.crosscheck(NOW, 60 * 10**9) == 0, "the debug event is the session's"
        session = store.session(SID)
        assert session is not None
        assert (session["user_name"], session["attribution"]) == ("alice", "verified")
        assert session["container"] == "debugger-x7k", "from the token: the event has none"
        assert session["learnt_from"] == ["token", "admission", "audit"]
        (audit,) = session["audit_events"]
        assert (audit["subresource"], audit["verb"]) == ("ephemeralcontainers", "patch")
        assert [a["rule"] for a in session["alerts"]] == ["Read sensitive file untrusted"]
        assert [f["kind"] for f in store.findings(EVER)] == []
    finally:
        store.close()


def test_without_its_debug_event_the_session_is_missing_from_the_audit_log(
    store_url, signer, trusted
):
    consume(store_url, trusted, debug_session_alerts(signer))
    ingest(store_url, LATER_EXEC)
    store = open_store(store_url)
    try:
        assert store.crosscheck(NOW, 60 * 10**9) == 1
        (finding,) = store.findings(EVER)
        assert (finding["kind"], finding["session_id"]) == (FINDING_NOT_IN_AUDIT_LOG, SID)
        assert "no exec or debug event in the audit log" in finding["detail"]
    finally:
        store.close()


def test_a_debug_event_seen_first_makes_a_pending_session_that_names_its_pod(store_url):
    ingest(store_url, debug_event())
    store = open_store(store_url)
    try:
        (row,) = store.sessions(SessionQuery(since_ns=EVER))
        assert (row["session_id"], row["attribution"], row["user_name"]) == (
            SID,
            "pending",
            "alice",
        )
        assert (row["namespace"], row["pod"], row["container"], row["command"]) == (
            "shop",
            "web-0",
            None,
            None,
        )
    finally:
        store.close()


def test_a_debug_container_added_without_the_webhook_is_a_finding(store_url):
    bare = debug_event(annotations={"authorization.k8s.io/decision": "allow"})
    ingestor = ingest(store_url, bare)
    assert ingestor.stats["unattributed"] == 1
    store = open_store(store_url)
    try:
        (finding,) = store.findings(EVER)
        assert finding["kind"] == FINDING_UNATTRIBUTED
        assert finding["detail"].startswith(
            "alice added a debug container to shop/web-0 without a whoexec identity: no "
            "whoexec annotation"
        )
    finally:
        store.close()


# --- an audit log with every kind of line that cannot be kept --------------------------------


def nested(depth: int) -> object:
    value: object = "deep"
    for _ in range(depth):
        value = {"x": value}
    return value


def test_each_audit_line_that_cannot_be_kept_is_skipped_alone_named_and_dead_lettered(
    tmp_path, caplog
):
    from webhook.deadletters import DeadLetters

    url = f"sqlite:///{tmp_path}/whoexec.db"
    far_future = {**LATER_EXEC, "auditID": "f", "stageTimestamp": "9999-12-31T23:59:59.000000Z"}
    too_deep = {**LATER_EXEC, "auditID": "d", "requestObject": nested(300)}
    other = {**LATER_EXEC, "auditID": "o", "objectRef": {"resource": "configmaps"}}
    lines = [
        json.dumps(LATER_EXEC).encode(),  # line 1: kept
        b"{nope",  # line 2: not JSON
        b"   ",  # blank: not a line of the log
        b"[]",  # line 4: not an object
        json.dumps(far_future).encode(),  # line 5: a time no database holds
        json.dumps(too_deep).encode(),  # line 6: JSON nested past what can be written back
        json.dumps(other).encode(),  # line 7: no session event, counted apart
        b"null",  # line 8
    ]
    letters = DeadLetters(tmp_path / "dead-letters.jsonl")
    ingestor = AuditIngestor(StoreWriter(open_store(url)), WEBHOOK, letters)
    assert ingestor.feed(lines, where="audit.log") == 7, "the blank line is not counted"
    ingestor.close()

    assert (ingestor.stats["malformed"], ingestor.stats["other"], ingestor.stats["exec"]) == (
        5, 1, 1,
    )  # fmt: skip
    where = [e.split(":")[0] for e in ingestor.errors]
    assert where == [f"audit.log line {n}" for n in (2, 4, 5, 6, 8)]
    assert ingestor.errors[3] == "audit.log line 6: the event nests too deep to be kept"
    dead = [json.loads(x) for x in (tmp_path / "dead-letters.jsonl").read_bytes().splitlines()]
    assert [(d["reason"], d["where"], d["detail"]) for d in dead] == [
        ("audit_event", f"audit.log line {n}", error)
        for n, error in zip((2, 4, 5, 6, 8), ingestor.errors, strict=True)
    ]
    assert [d["line"] for d in dead] == [
        "{nope",  # as it was read: nothing is lost
        "[]",
        json.dumps(far_future, separators=(",", ":")),
        "<dict nested too deep to keep>",
        "null",
    ]
    skipped = [m for m in caplog.messages if m.startswith("skipped audit input: ")]
    assert skipped == [f"skipped audit input: {e}" for e in ingestor.errors]
    store = open_store(url)
    try:
        assert store.audit_event(LATER_EXEC["auditID"]) is not None
        assert [store.audit_event(x) for x in ("f", "d", "o")] == [None, None, None]
    finally:
        store.close()


def test_a_flood_of_bad_audit_lines_keeps_the_first_thousand_reasons_and_counts_them_all(
    tmp_path,
):
    ingestor = AuditIngestor(StoreWriter(open_store(f"sqlite:///{tmp_path}/w.db")), WEBHOOK)
    assert ingestor.feed([b"[]"] * 1001) == 1001
    ingestor.close()
    assert (ingestor.stats["malformed"], len(ingestor.errors)) == (1001, 1000)
    assert ingestor.errors[-1] == "audit log line 1000: an audit event is a JSON object"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"kind": "EventList"}, "expected kind Event, apiVersion audit.k8s.io/v1; got kind "
         "'EventList', apiVersion 'audit.k8s.io/v1'"),
        ({"apiVersion": "audit.k8s.io/v1beta1"}, "expected kind Event, apiVersion "
         "audit.k8s.io/v1; got kind 'Event', apiVersion 'audit.k8s.io/v1beta1'"),
        ({"auditID": 7}, "field 'auditID' must be a string"),
        ({"stage": None}, "field 'stage' must be a string"),
        ({"verb": ["create"]}, "field 'verb' must be a string"),
        ({"requestURI": {}}, "field 'requestURI' must be a string"),
        ({"user": "alice"}, "field 'user' must be an object"),
        ({"objectRef": []}, "field 'objectRef' must be an object"),
        ({"annotations": "x"}, "field 'annotations' must be an object"),
        ({"impersonatedUser": 1}, "field 'impersonatedUser' must be an object"),
        ({"responseStatus": True}, "field 'responseStatus' must be an object"),
    ],
)  # fmt: skip
def test_an_audit_event_of_the_wrong_kind_or_with_a_field_of_the_wrong_type_is_named(
    changes, error
):
    from webhook.errors import MalformedAuditEvent

    with pytest.raises(MalformedAuditEvent) as refused:
        check_event(debug_event(**changes), "audit.log line 3")
    assert str(refused.value) == f"audit.log line 3: {error}"
    # absent or null optional objects are fine
    event = debug_event(impersonatedUser=None, responseStatus=None)
    del event["annotations"]
    assert check_event(event) is event


# --- an exec event's fields, as kube-apiserver writes them, and the ones it never should ---


def exec_event(**changes) -> dict:
    """The real debug event made an exec of ``sh -c ''`` (an empty last argument)."""
    event = debug_event(
        verb="create",
        requestURI="/api/v1/namespaces/shop/pods/web-0/exec?command=sh&command=-c&command="
        "&container=app&stdin=true&stdout=true&tty=true",
        objectRef={**REAL["objectRef"], "subresource": "exec"},
    )
    return {**event, **changes}


def test_an_exec_s_empty_argument_is_kept_in_its_command():
    audit = exec_audit(check_event(exec_event()), WEBHOOK)
    assert audit is not None
    assert (audit.container, audit.command) == ("app", ("sh", "-c", ""))
    assert audit.request_uri == exec_event()["requestURI"], "kept whole, as it was asked"


def test_an_event_with_neither_time_is_refused_by_its_place():
    from webhook.errors import MalformedAuditEvent

    event = exec_event()
    del event["stageTimestamp"], event["requestReceivedTimestamp"]
    with pytest.raises(MalformedAuditEvent) as refused:
        exec_audit(check_event(event), WEBHOOK, "audit.log line 4")
    assert str(refused.value) == "audit.log line 4: no stageTimestamp or requestReceivedTimestamp"


def test_an_event_without_a_stage_timestamp_is_timed_when_it_was_received():
    event = exec_event()
    del event["stageTimestamp"]
    audit = exec_audit(check_event(event), WEBHOOK)
    assert audit is not None
    assert audit.time_ns == 1_796_326_954_585_216_000  # requestReceivedTimestamp


@pytest.mark.parametrize("code", [True, "101", 101.0])
def test_a_response_code_that_is_not_an_integer_is_kept_as_unknown(code):
    audit = exec_audit(check_event(exec_event(responseStatus={"code": code})), WEBHOOK)
    assert audit is not None and audit.response_code is None


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"impersonatedUser": {"username": 7}}, "impersonatedUser.username"),
        ({"annotations": {f"{WEBHOOK}/session-id": ["s"]}}, "annotations"),
        ({"annotations": {f"{WEBHOOK}/outcome": {"injected": 1}}}, "annotations"),
    ],
)
def test_a_string_field_of_another_type_is_refused_by_its_name_and_place(changes, field):
    from webhook.errors import MalformedAuditEvent

    event = check_event(exec_event(**changes), "audit.log line 9")
    with pytest.raises(MalformedAuditEvent) as refused:
        exec_audit(event, WEBHOOK, "audit.log line 9")
    assert str(refused.value) == f"audit.log line 9: field {field!r} must be a string"


@pytest.mark.parametrize("body", [[], "EventList", {"kind": "Event", "items": []}, {"items": []}])
def test_a_body_that_is_not_an_event_list_is_refused_as_one(body):
    from webhook.errors import MalformedAuditEvent
    from webhook.sessions.audit import events_in_list

    with pytest.raises(MalformedAuditEvent, match=r"^body must be an audit\.k8s\.io/v1 EventList$"):
        events_in_list(body)


def test_an_event_the_store_cannot_hold_is_dead_lettered_whole_and_every_kind_is_counted(
    tmp_path,
):
    from webhook.deadletters import DeadLetters

    def exec_(audit_id: str, **changes) -> dict:
        return {**LATER_EXEC, "auditID": audit_id, **changes}

    unattributed = {"annotations": {}}  # admitted without the webhook: a finding each
    nul = exec_("n", objectRef={**LATER_EXEC["objectRef"], "name": "web-0\x00"})
    events = [
        exec_("u1", **unattributed),
        exec_("u2", **unattributed),
        exec_("o1", objectRef={"resource": "configmaps"}),
        exec_("o2", objectRef={"resource": "secrets"}),
        nul,  # line 5
        LATER_EXEC,
    ]
    letters = DeadLetters(tmp_path / "dead-letters.jsonl")
    url = f"sqlite:///{tmp_path}/whoexec.db"
    ingestor = AuditIngestor(StoreWriter(open_store(url)), WEBHOOK, letters)
    ingestor.feed([json.dumps(e).encode() for e in events], where="audit.log")
    ingestor.close()

    stats = ingestor.stats
    assert (stats["exec"], stats["unattributed"], stats["other"], stats["malformed"]) == (
        3, 2, 2, 1,
    )  # fmt: skip
    assert ingestor.errors == ["audit.log line 5: SessionFact.pod holds a NUL character "
                               "(PostgreSQL's text cannot hold one)"]  # fmt: skip
    (dead,) = [json.loads(x) for x in (tmp_path / "dead-letters.jsonl").read_bytes().splitlines()]
    assert (dead["where"], dead["detail"]) == ("audit.log line 5", ingestor.errors[0])
    assert json.loads(dead["line"]) == nul, "the event as read: nothing is lost"
