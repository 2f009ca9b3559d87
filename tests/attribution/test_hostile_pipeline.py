"""Hostile clients of the real consumer (``whoexec consume --listen --db``, loopback):
no body stops attribution, none costs another session its facts, the audit webhook and
the API ask who is calling, and bad input gets a 4xx, never a 5xx.

Issue 21's attacks #1 (one body nested 300 deep stopped the pipeline for good), #4 (an
alert from year 9999 erased the session in its batch; a far-future audit event lost its
whole EventList), #8 on the consumer's /api/*, and the consumer's share of "also seen"
(no authentication on /k8s-audit and /api/*, an empty body answered 200)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.hostile_servers import (
    FALCO_HEADERS,
    Keys,
    Served,
    eventually,
    json_lines,
    session_alerts,
    start_consumer,
)

pytestmark = pytest.mark.slow
API_TOKEN = "consumer-api-token-0123456789abcdef"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path)


@pytest.fixture
def consumer(tmp_path: Path, keys: Keys) -> Iterator[Served]:
    served = start_consumer(tmp_path, keys)
    yield served
    served.server.stop()


def ndjson(*alerts: dict) -> bytes:
    return b"\n".join(json.dumps(a).encode() for a in alerts)


def enriched(folder: Path, rule: str) -> dict:
    """The enriched alert of ``rule`` once the pipeline has passed it on."""
    return eventually(
        lambda: next((a for a in json_lines(folder / "enriched.jsonl") if a["rule"] == rule), None),
        f"the enriched alert {rule!r}",
    )


def post_alert(consumer: Served, alert: dict) -> int:
    return consumer.request("POST", "/falco", json.dumps(alert).encode(), FALCO_HEADERS)[0]


def restarts(consumer: Served) -> float:
    _, _, metrics = consumer.request("GET", "/metrics")
    for line in metrics.decode().splitlines():
        if line.startswith("whoexec_consumer_pipeline_restarts_total "):
            return float(line.split()[1])
    return 0.0


def test_a_body_nested_300_deep_never_stops_attribution(consumer, tmp_path, keys):
    deep = b"[" * 300 + b"]" * 300  # 606 bytes: orjson reads it, and cannot write it back
    status, _, _ = consumer.request("POST", "/falco", deep, FALCO_HEADERS)
    assert status == 200, "it is JSON: the intake keeps it"
    root, child = session_alerts(keys, str(uuid.uuid4()), "alice@corp.example")
    # a session root whose proc.args is a list (it crashed the store writer)
    fields = root["output_fields"]
    odd_root = {**root, "output_fields": {**fields, "proc.args": fields["proc.args"].split()}}
    for alert in (odd_root, child):
        assert post_alert(consumer, alert) == 200
    assert enriched(tmp_path, child["rule"])["output_fields"]["whoexec.user.name"] == (
        "alice@corp.example"
    )
    letters = json_lines(tmp_path / "state" / "dead-letters.jsonl")
    assert [(d["reason"], d["line"]) for d in letters] == [("not_an_alert", deep.decode())]
    assert restarts(consumer) == 0, "the pipeline process never died"
    assert consumer.request("GET", "/readyz")[0] == 200
    for _ in range(5):  # and it keeps taking alerts
        assert (
            consumer.request("POST", "/falco", json.dumps(child).encode(), FALCO_HEADERS)[0] == 200
        )


@pytest.mark.parametrize(
    "bad",
    [
        {"time": "9999-12-31T23:59:59Z"},
        {"time": "9999-12-31T23:59:59Z", "output_fields": {"evt.time": 2**63}},
    ],
    ids=["year 9999", "evt.time past 64 bits"],
)
def test_an_alert_out_of_range_in_a_session_s_batch_costs_that_session_nothing(
    consumer, tmp_path, keys, bad
):
    sid = str(uuid.uuid4())
    root, child = session_alerts(keys, sid, "alice@corp.example")
    far = {**child, **bad, "rule": "from the far future"}
    far["output_fields"] = {**child["output_fields"], **bad.get("output_fields", {})}
    status, _, reply = consumer.request("POST", "/falco", ndjson(root, far, child), FALCO_HEADERS)
    assert (status, json.loads(reply)["accepted"]) == (200, 3)
    enriched(tmp_path, child["rule"])
    session = eventually(
        lambda: (found := consumer.stored(f"/api/sessions/{sid}")) and found["processes"] and found,
        "the session's rows",
    )
    assert session["user_name"] == "alice@corp.example"
    assert {p["pid"] for p in session["processes"]} == {
        a["output_fields"]["proc.pid"] for a in (root, child)
    }
    assert [a["rule"] for a in session["alerts"]] == [child["rule"]]
    letters = json_lines(tmp_path / "state" / "dead-letters.jsonl")
    assert [json.loads(d["line"])["rule"] for d in letters] == ["from the far future"]


def audit_event(audit_id: str, sid: str | None, stamp: str) -> dict:
    annotations = {"exec.whoexec.io/session-id": sid} if sid else {}
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseStarted",
        "requestURI": "/api/v1/namespaces/shop/pods/web-0/exec?command=sh&container=app",
        "verb": "create",
        "user": {"username": "alice@corp.example", "groups": ["devs"]},
        "objectRef": {
            "resource": "pods",
            "namespace": "shop",
            "name": "web-0",
            "subresource": "exec",
        },
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
        "annotations": annotations,
        "responseStatus": {"code": 101},
    }


def event_list(*events: dict) -> bytes:
    return json.dumps(
        {"kind": "EventList", "apiVersion": "audit.k8s.io/v1", "items": list(events)}
    ).encode()


def test_a_far_future_audit_event_is_skipped_alone_and_kept(consumer, tmp_path):
    sid, good_id, bad_id = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    body = event_list(
        audit_event(bad_id, str(uuid.uuid4()), "9999-12-31T23:59:59.000000Z"),
        audit_event(good_id, sid, "2026-11-22T10:00:00.000000Z"),
        [[[[[[]]]]]],
    )
    reply = consumer.json("POST", "/k8s-audit", body)
    assert (reply["items"], reply["exec"], reply["skipped"]) == (3, 1, 2)
    assert reply["errors"][0].startswith("items[0]: stageTimestamp '9999-12-31T23:59:59.000000Z'")
    assert "out of range" in reply["errors"][0]
    session = consumer.json("GET", f"/api/sessions/{sid}")
    assert [a["audit_id"] for a in session["audit_events"]] == [good_id]
    kept = json_lines(tmp_path / "state" / "audit-dead-letters.jsonl")
    assert [d["where"] for d in kept] == ["items[0]", "items[2]"]
    assert json.loads(kept[0]["line"])["auditID"] == bad_id, "kept whole, as it came"


@pytest.mark.parametrize(
    "query",
    [
        "/api/sessions?since=99999999999999999w",
        "/api/sessions?since=0001-01-01T00:00:00Z",
        "/api/sessions?since=0001-01-01T00:00:00%2B01:00&until=9999-12-31T23:59:59Z",
        "/api/sessions?limit=999999999999999999999999999999",
        "/api/users?since=99999999999999999w",
        "/api/findings?since=0001-01-01T00:00:00Z&until=99999999999999999w",
    ],
)
def test_times_and_numbers_out_of_every_range_are_answered_not_500(consumer, query):
    status, _, body = consumer.request("GET", query)
    assert status == 200, body[:300]
    assert isinstance(json.loads(body), list)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/sessions?since=yesterday", 400),
        ("/api/sessions?since=" + "9" * 5000 + "w", 400),
        ("/api/sessions?limit=" + "9" * 5000, 400),
        ("/api/sessions/%00", 404),
        ("/api/sessions?user=%00", 200),
    ],
)
def test_bad_query_arguments_are_a_4xx_with_a_reason(consumer, path, status):
    got, _, body = consumer.request("GET", path)
    assert got == status, body[:300]
    if status >= 400:
        assert json.loads(body)["error"]


def test_an_empty_body_is_a_400(consumer):
    for body in (b"", b"\n\n  \n"):
        status, _, reply = consumer.request("POST", "/falco", body, FALCO_HEADERS)
        assert status == 400
        assert json.loads(reply)["errors"] == ["the body holds no JSON line"]


def test_with_a_token_file_the_audit_webhook_and_the_api_ask_for_it(tmp_path, keys):
    token_file = tmp_path / "api-token"
    token_file.write_text(API_TOKEN + "\n")
    consumer = start_consumer(tmp_path, keys, "--api-token-file", str(token_file))
    try:
        sid = str(uuid.uuid4())
        forged = event_list(audit_event(str(uuid.uuid4()), sid, "2026-11-22T10:00:00Z"))
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": API_TOKEN}):
            status, sent, _ = consumer.request("POST", "/k8s-audit", forged, headers)
            assert status == 401 and sent["WWW-Authenticate"].startswith("Bearer")
            assert consumer.request("GET", "/api/sessions", headers=headers)[0] == 401
        right = {"Authorization": f"Bearer {API_TOKEN}"}
        status = consumer.request("GET", f"/api/sessions/{sid}", headers=right)[0]
        assert status == 404, "the forged EventList created nothing"
        assert consumer.request("GET", "/api/sessions", headers=right)[0] == 200
        # POST /falco and the probes are Falco's and the kubelet's: no token
        assert consumer.request("GET", "/readyz")[0] == 200
        root, _ = session_alerts(keys, str(uuid.uuid4()), "bob@corp.example")
        assert (
            consumer.request("POST", "/falco", json.dumps(root).encode(), FALCO_HEADERS)[0] == 200
        )
        # each answer, a rotation and a missing file: test_consumer.py, in process
    finally:
        consumer.server.stop()
