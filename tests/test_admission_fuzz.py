"""Property-based fuzzing of the review parser, the admission decision and the HTTP answer.

Found this way: ``userInfo.groups: null`` (valid JSON, accepted by Go's decoder) gave
HTTP 500. Whatever the body, the webhook answers 200 with a decision, or 400 naming the
problem; and when it patches, the patch applies and keeps the caller's command.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webhook.admission import AdmissionPolicy, parse_review, review_admission
from webhook.errors import MalformedReview
from webhook.server import WebhookState, create_app

from .conftest import NOW, load_json

POLICY = AdmissionPolicy(
    exclude_users=("system:serviceaccount:kube-system:*",),
    exclude_groups=("break-glass",),
    env_trusted_namespaces=("*",),
)
FIXTURES = [
    "exec_interactive_shell.json",
    "exec_kubectl_cp_tar.json",
    "exec_no_container_named.json",
    "exec_spoofed_identity.json",
    "attach_shell.json",
    "debug_ephemeral_container.json",
    "pod_create.json",
]
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
# the paths whoexec reads, each replaced by a hostile value
PATHS = [
    ("request", "uid"),
    ("request", "operation"),
    ("request", "subResource"),
    ("request", "name"),
    ("request", "namespace"),
    ("request", "userInfo"),
    ("request", "userInfo", "username"),
    ("request", "userInfo", "uid"),
    ("request", "userInfo", "groups"),
    ("request", "object"),
    ("request", "object", "command"),
    ("request", "object", "container"),
    ("request", "dryRun"),
    ("request", "resource"),
    ("request", "kind"),
    # the Pod of a pod CREATE and of kubectl debug (a string spec once gave HTTP 500)
    ("request", "oldObject"),
    ("request", "object", "metadata"),
    ("request", "object", "metadata", "annotations"),
    ("request", "object", "spec"),
    ("request", "object", "spec", "containers"),
    ("request", "object", "spec", "initContainers"),
    ("request", "object", "spec", "ephemeralContainers"),
    ("request", "object", "spec", "volumes"),
    ("request", "object", "spec", "os"),
    ("request", "object", "spec", "nodeSelector"),
    ("request", "object", "spec", "affinity"),
]


def with_value(review: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    changed = copy.deepcopy(review)
    node = changed
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            return changed
        node = node[key]
    node[path[-1]] = value
    return changed


def check_decision(review: dict[str, Any], signer, trusted) -> None:
    try:
        admission = review_admission(review, POLICY, signer, trusted, now=NOW)
    except MalformedReview as exc:
        message = str(exc)
        assert message.startswith(("request", "body", "AdmissionReview", "the ")), message
        return
    response = admission.response["response"]
    assert response["uid"] == review["request"]["uid"]
    assert isinstance(response["allowed"], bool)
    if "patch" in response:
        ops = json.loads(base64.b64decode(response["patch"]))
        patched = jsonpatch.apply_patch(review["request"]["object"], ops)
        command = review["request"]["object"].get("command")
        if review["request"].get("subResource") == "exec" and command:
            assert patched["command"][-len(command) :] == command


@FUZZ
@given(body=json_values)
def test_any_json_body_is_a_review_or_a_named_error(body):
    try:
        parse_review(body)
    except MalformedReview as exc:
        message = str(exc)
        assert message, "a refusal names what is wrong"


@FUZZ
@given(
    fixture=st.sampled_from(FIXTURES),
    path=st.sampled_from(PATHS),
    value=json_values | st.lists(st.none() | st.text(), max_size=3),
)
def test_a_review_with_one_hostile_field_is_decided_or_refused_by_name(
    signer, trusted, fixture, path, value
):
    review = with_value(load_json(f"admission/{fixture}"), path, value)
    check_decision(review, signer, trusted)


@FUZZ
@given(
    groups=st.none() | st.lists(st.text(max_size=300), max_size=40),
    username=st.none() | st.text(max_size=2000),
    command=st.lists(st.text(max_size=50), min_size=1, max_size=6),
)
def test_exec_reviews_with_any_user_and_command_are_decided(
    signer, trusted, groups, username, command
):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["userInfo"]["groups"] = groups
    review["request"]["userInfo"]["username"] = username
    review["request"]["object"]["command"] = command
    check_decision(review, signer, trusted)


def test_null_groups_are_an_empty_list(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["userInfo"]["groups"] = None
    admission = review_admission(review, POLICY, signer, trusted, now=NOW)
    assert admission.response["response"]["allowed"] is True
    assert admission.response["response"]["auditAnnotations"]["outcome"] == "injected"


@FUZZ
@given(body=st.binary(max_size=512) | json_values.map(lambda v: json.dumps(v).encode()))
def test_the_http_answer_is_never_a_500(signer, trusted, body):
    state = WebhookState(
        policy=POLICY,
        signer=signer,
        trusted_keys=trusted,
        max_body_bytes=64 * 1024,
        clock=lambda: NOW,
    )
    with create_app(state).test_client() as client:
        reply = client.post("/mutate", data=body, content_type="application/json")
    assert reply.status_code in (200, 400), reply.get_data()[:200]
    if reply.status_code == 400:
        assert reply.get_json()["error"]
