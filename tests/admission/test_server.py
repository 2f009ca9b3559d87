from __future__ import annotations

import base64
import json
import logging

import pytest
from flask.testing import FlaskClient

from tests.conftest import NOW, load_json
from webhook.admission.decide import AdmissionPolicy
from webhook.admission.server import WebhookState, create_app


@pytest.fixture
def client(signer, trusted) -> FlaskClient:
    state = WebhookState(
        policy=AdmissionPolicy(env_trusted_namespaces=("*",)),
        signer=signer,
        trusted_keys=trusted,
        max_body_bytes=64 * 1024,
        clock=lambda: NOW,
    )
    return create_app(state).test_client()


def test_exec_review_is_answered_with_a_patch(client, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    reply = client.post("/mutate", json=review)
    assert reply.status_code == 200
    assert reply.mimetype == "application/json"
    response = reply.get_json()["response"]
    assert response["uid"] == review["request"]["uid"]
    assert response["patchType"] == "JSONPatch"
    # the patch, applied as kube-apiserver applies it: env, the signed identity, the command
    import jsonpatch

    from webhook.identity import verify_token

    ops = json.loads(base64.b64decode(response["patch"]))
    patched = jsonpatch.apply_patch(review["request"]["object"], ops)
    env, assignment, *command = patched["command"]
    assert env == "/usr/bin/env"
    assert command == review["request"]["object"]["command"]
    name, token = assignment.split("=", 1)
    assert name == "WHOEXEC_IDENTITY"
    identity = verify_token(token, trusted, now=NOW)
    assert identity.user == review["request"]["userInfo"]["username"]
    assert identity.session_id == review["request"]["uid"]


def test_policy_denial_is_http_200_with_allowed_false(client):
    reply = client.post("/mutate", json=load_json("admission/exec_spoofed_identity.json"))
    assert reply.status_code == 200
    response = reply.get_json()["response"]
    assert response["allowed"] is False
    assert response["status"]["code"] == 403


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[]", "JSON object"),
        (b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}', "request"),
        (b'{"apiVersion":"v1","kind":"Pod","metadata":{}}', "AdmissionReview"),
        (
            b'{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":7}}',
            "request.uid",
        ),
    ],
    ids=["empty", "broken", "binary", "array", "no-request", "pod", "uid-type"],
)
def test_malformed_input_gets_400_with_a_json_error(client, body, message):
    reply = client.post("/mutate", data=body, content_type="application/json")
    assert reply.status_code == 400
    assert message in reply.get_json()["error"]


WRONG_TYPES = [
    (field, bad)
    for field in ("userInfo", "object", "resource", "kind", "operation")
    for bad in (None, 1, "x", [], True)
    if (field, bad) != ("operation", "x")
]


@pytest.mark.parametrize(("field", "bad"), WRONG_TYPES)
def test_every_wrong_type_is_400_naming_the_field_and_value(client, field, bad):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"][field] = bad
    reply = client.post("/mutate", json=review)
    assert reply.status_code == 400
    error = reply.get_json()["error"]
    assert f"request.{field} must be" in error
    assert f"got {json.dumps(bad)}" in error
    assert "response" not in reply.get_json(), "never an answer kube-apiserver could apply"


def test_an_operation_that_is_not_connect_is_left_alone(client):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["operation"] = "x"
    response = client.post("/mutate", json=review).get_json()["response"]
    assert response["allowed"] is True and "patch" not in response
    assert response["auditAnnotations"]["outcome"] == "skipped-not-exec"


def test_oversized_body_gets_413(client):
    reply = client.post("/mutate", data=b"x" * (64 * 1024 + 1), content_type="application/json")
    assert reply.status_code == 413
    assert reply.get_json()["status"] == 413


def test_wrong_method_gets_405_as_json(client):
    reply = client.get("/mutate")
    assert reply.status_code == 405
    assert reply.get_json()["status"] == 405


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "ready"


def test_readiness_reports_a_problem_with_503(signer, trusted):
    state = WebhookState(
        policy=AdmissionPolicy(env_trusted_namespaces=("*",)),
        signer=signer,
        trusted_keys=trusted,
        max_body_bytes=1024,
        readiness=lambda: "TLS certificate unavailable",
    )
    reply = create_app(state).test_client().get("/readyz")
    assert reply.status_code == 503
    assert reply.get_json()["reason"] == "TLS certificate unavailable"


def test_metrics_count_outcomes_latency_and_token_size(client):
    def sample(name: str) -> float:
        for line in client.get("/metrics").get_data(as_text=True).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    before_injected = sample('whoexec_admissions_total{outcome="injected"}')
    before_tokens = sample("whoexec_token_bytes_count")
    before_latency = sample("whoexec_admission_duration_seconds_count")
    before_bad = sample('whoexec_bad_requests_total{status="400"}')
    client.post("/mutate", json=load_json("admission/exec_interactive_shell.json"))
    client.post("/mutate", data=b"nope")
    assert sample('whoexec_admissions_total{outcome="injected"}') == before_injected + 1
    assert sample("whoexec_token_bytes_count") == before_tokens + 1
    assert sample("whoexec_admission_duration_seconds_count") == before_latency + 1
    assert sample('whoexec_bad_requests_total{status="400"}') == before_bad + 1


def test_admission_log_line_is_json_without_token_or_signature(client, caplog):
    review = load_json("admission/exec_interactive_shell.json")
    with caplog.at_level(logging.INFO, logger="whoexec.admission"):
        reply = client.post("/mutate", json=review)
    patch = json.loads(base64.b64decode(reply.get_json()["response"]["patch"]))
    token = patch[0]["value"][1].split("=", 1)[1]
    signature = token.rsplit(".", 1)[1]
    (record,) = [r for r in caplog.records if r.name == "whoexec.admission"]
    line = record.getMessage()
    entry = json.loads(line)
    assert entry["outcome"] == "injected"
    assert entry["user"] == "alice@corp.example"
    assert entry["uid"] == review["request"]["uid"]
    assert signature not in line and token not in line


def test_an_attacker_sized_pod_name_is_capped_in_the_log_line(client, caplog):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["name"] = "p" * 40_000 + '\n{"forged": true}'
    with caplog.at_level(logging.INFO, logger="whoexec"):
        reply = client.post("/mutate", json=review)
    assert reply.status_code == 200
    (line,) = [r.getMessage() for r in caplog.records if '"msg":"admission"' in r.getMessage()]
    assert len(line) < 2_000
    entry = json.loads(line)
    assert entry["pod"].endswith("...[cut 39762 chars]")
    assert "\n" not in line
