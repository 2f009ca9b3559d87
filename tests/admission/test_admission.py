from __future__ import annotations

import base64
import copy
import dataclasses
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import DATA, NOW, load_json
from webhook.admission.decide import (
    AdmissionPolicy,
    PodFacts,
    outcomes,
    pod_facts,
    quantity,
    review_admission,
)
from webhook.errors import MalformedReview
from webhook.identity import Signer, key_ring, verify_token

#: the operator vouches that every image has /usr/bin/env (the tests of the rewrite itself);
#: the safe default, without it, is tested below
POLICY = AdmissionPolicy(
    exclude_users=("system:serviceaccount:kube-system:*",), env_trusted_namespaces=("*",)
)


def admit(review: Any, signer: Signer, trusted: Any, policy: AdmissionPolicy = POLICY, **kw: Any):
    return review_admission(review, policy, signer, trusted, now=NOW, **kw)


def applied(review: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """Apply the returned patch the way kube-apiserver does (RFC 6902)."""
    assert response["patchType"] == "JSONPatch"
    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(review["request"]["object"], ops)


@pytest.mark.parametrize(
    ("fixture", "allowed", "outcome", "patched"),
    [
        ("exec_interactive_shell.json", True, "injected", True),
        ("exec_kubectl_cp_tar.json", True, "injected", True),
        ("exec_no_container_named.json", True, "injected", True),
        ("exec_spoofed_identity.json", False, "denied", False),
        ("exec_spoofed_identity_later_arg.json", False, "denied", False),
        ("exec_empty_command.json", True, "skipped-empty-command", False),
        ("exec_argv0_assignment.json", True, "skipped-argv0-assignment", False),
        ("exec_kube_system_serviceaccount.json", True, "skipped-excluded-user", False),
        ("attach_shell.json", True, "skipped-attach", False),
        ("debug_ephemeral_container.json", True, "injected", True),
        ("debug_two_ephemeral_containers.json", True, "injected", True),
        ("debug_no_new_container.json", True, "skipped-no-new-container", False),
        ("debug_spoofed_env.json", False, "denied", False),
        ("pod_create.json", True, "env-volume-added", True),
    ],
)
def test_each_request_kind_gets_its_outcome(signer, trusted, fixture, allowed, outcome, patched):
    review = load_json(f"admission/{fixture}")
    admission = admit(review, signer, trusted)
    response = admission.response["response"]
    assert admission.response["apiVersion"] == "admission.k8s.io/v1"
    assert admission.response["kind"] == "AdmissionReview"
    assert response["uid"] == review["request"]["uid"]
    assert response["allowed"] is allowed
    assert response["auditAnnotations"]["outcome"] == outcome
    assert ("patch" in response) is patched
    assert outcome in outcomes()
    if allowed:
        assert "status" not in response
    else:
        assert response["status"]["code"] == 403
        assert "WHOEXEC_IDENTITY" in response["status"]["message"]


@pytest.mark.parametrize(
    "fixture",
    [
        "exec_interactive_shell.json",
        "exec_kubectl_cp_tar.json",
        "exec_no_container_named.json",
    ],
)
def test_exec_patch_prepends_env_and_a_token_and_keeps_everything_else(signer, trusted, fixture):
    review = load_json(f"admission/{fixture}")
    original = copy.deepcopy(review["request"]["object"])
    response = admit(review, signer, trusted).response["response"]
    patched = applied(review, response)

    env, assignment, *rest = patched["command"]
    assert env == "/usr/bin/env"
    assert rest == original["command"], "the caller's argv follows the token unchanged"
    assert {k: v for k, v in patched.items() if k != "command"} == {
        k: v for k, v in original.items() if k != "command"
    }
    name, token = assignment.split("=", 1)
    assert name == "WHOEXEC_IDENTITY"
    identity = verify_token(token, trusted, now=NOW)
    request = review["request"]
    assert identity.session_id == request["uid"] == response["auditAnnotations"]["session-id"]
    assert identity.user == request["userInfo"]["username"] == response["auditAnnotations"]["user"]
    assert identity.uid == request["userInfo"]["uid"]
    assert list(identity.groups) == request["userInfo"]["groups"]
    assert (identity.namespace, identity.pod) == (request["namespace"], request["name"])
    assert identity.container == original.get("container", "")
    assert identity.issued_at == NOW


def test_patch_is_a_single_add_on_command_so_it_cannot_fail_to_apply(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    response = admit(review, signer, trusted).response["response"]
    ops = json.loads(base64.b64decode(response["patch"]))
    assert [(op["op"], op["path"]) for op in ops] == [("add", "/command")]
    # `add` works even on an object that has no command member at all
    del review["request"]["object"]["command"]
    assert jsonpatch.apply_patch(review["request"]["object"], ops)["command"][0] == "/usr/bin/env"


def test_variable_name_and_env_path_are_settings(signer, trusted):
    policy = AdmissionPolicy(
        identity_variable="K8S_WHO", env_path="/.whoexec/env", env_trusted_namespaces=("*",)
    )
    review = load_json("admission/exec_interactive_shell.json")
    patched = applied(review, admit(review, signer, trusted, policy).response["response"])
    assert patched["command"][0] == "/.whoexec/env"
    assert patched["command"][1].startswith("K8S_WHO=v1.")


def test_our_own_earlier_rewrite_is_left_unchanged_not_denied(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    first = admit(review, signer, trusted).response["response"]
    reinvoked = copy.deepcopy(review)
    reinvoked["request"]["object"] = applied(review, first)
    again = admit(reinvoked, signer, trusted).response["response"]
    assert again["allowed"] is True
    assert "patch" not in again
    assert again["auditAnnotations"]["outcome"] == "injected", "the first call's annotation"
    assert again["auditAnnotations"]["session-id"] == review["request"]["uid"]


def test_replaying_a_real_token_as_another_user_is_denied(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    alices_command = applied(review, admit(review, signer, trusted).response["response"])
    replay = copy.deepcopy(review)
    replay["request"]["userInfo"] = {"username": "mallory", "groups": ["system:authenticated"]}
    replay["request"]["object"] = alices_command
    response = admit(replay, signer, trusted).response["response"]
    assert response["allowed"] is False
    assert response["auditAnnotations"]["outcome"] == "denied"


def test_replaying_a_real_token_into_another_pod_is_denied(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    alices_command = applied(review, admit(review, signer, trusted).response["response"])
    replay = copy.deepcopy(review)
    replay["request"]["name"] = "payments-0"
    replay["request"]["object"] = alices_command
    assert admit(replay, signer, trusted).response["response"]["allowed"] is False


def test_rewrite_with_a_second_identity_argument_is_denied(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    patched = applied(review, admit(review, signer, trusted).response["response"])
    sneaky = copy.deepcopy(review)
    sneaky["request"]["object"]["command"] = [*patched["command"][:2], "WHOEXEC_IDENTITY=x", "sh"]
    assert admit(sneaky, signer, trusted).response["response"]["allowed"] is False


def test_token_from_a_key_we_do_not_trust_counts_as_spoofing(signer, trusted):
    other = Signer(Ed25519PrivateKey.generate())
    review = load_json("admission/exec_interactive_shell.json")
    foreign = applied(
        review, admit(review, other, key_ring([other.public_key])).response["response"]
    )
    spoof = copy.deepcopy(review)
    spoof["request"]["object"] = foreign
    assert admit(spoof, signer, trusted).response["response"]["allowed"] is False


def test_caller_supplied_identity_variable_is_denied_even_for_excluded_users(signer, trusted):
    review = load_json("admission/exec_kube_system_serviceaccount.json")
    review["request"]["object"]["command"] = ["env", "WHOEXEC_IDENTITY=forged", "sh"]
    response = admit(review, signer, trusted).response["response"]
    assert response["allowed"] is False


@pytest.mark.parametrize(
    ("policy", "outcome"),
    [
        (AdmissionPolicy(exclude_namespaces=("sho?",)), "skipped-excluded-namespace"),
        (AdmissionPolicy(exclude_users=("*@corp.example",)), "skipped-excluded-user"),
        (AdmissionPolicy(exclude_groups=("platform-*",)), "skipped-excluded-group"),
        (AdmissionPolicy(exclude_groups=("platform",), env_trusted_namespaces=("*",)), "injected"),
    ],
)
def test_exclusions_are_globs_and_allow_unchanged(signer, trusted, policy, outcome):
    review = load_json("admission/exec_interactive_shell.json")
    response = admit(review, signer, trusted, policy).response["response"]
    assert response["allowed"] is True
    assert response["auditAnnotations"]["outcome"] == outcome
    assert ("patch" in response) is (outcome == "injected")


@pytest.mark.parametrize(
    ("groups", "outcome"),
    [
        # every one of 1,000 groups is read: none excluded, the exec gets its token
        (["devs"] * 1000, "injected"),
        # ... and the last of them is read too
        (["devs"] * 999 + ["platform-admins"], "skipped-excluded-group"),
        # past 1,000 the rest is never read, so an excluded group could hide there
        (["devs"] * 1001, "skipped-too-many-groups"),
    ],
)
def test_with_an_excluded_group_1000_groups_are_all_read_and_more_leave_the_exec_alone(
    signer, trusted, groups, outcome
):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["userInfo"]["groups"] = groups
    policy = dataclasses.replace(POLICY, exclude_groups=("platform-*",))
    response = admit(review, signer, trusted, policy).response["response"]
    assert response["allowed"] is True
    assert response["auditAnnotations"]["outcome"] == outcome
    assert ("patch" in response) is (outcome == "injected")


def test_groups_past_the_first_1000_are_never_read_so_their_type_is_not_checked(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["userInfo"]["groups"] = ["devs"] * 1000 + [7]
    response = admit(review, signer, trusted).response["response"]
    assert response["auditAnnotations"]["outcome"] == "injected"
    review["request"]["userInfo"]["groups"] = ["devs"] * 999 + [7]
    with pytest.raises(MalformedReview, match=r"request\.userInfo\.groups\[999\] must be str"):
        admit(review, signer, trusted)


def test_ephemeral_container_gets_the_variable_in_its_env(signer, trusted):
    review = load_json("admission/debug_ephemeral_container.json")
    response = admit(review, signer, trusted).response["response"]
    pod = applied(review, response)
    old, new = pod["spec"]["ephemeralContainers"]
    assert "env" not in old, "existing ephemeral containers are untouched"
    (entry,) = new["env"]
    assert entry["name"] == "WHOEXEC_IDENTITY"
    identity = verify_token(entry["value"], trusted, now=NOW)
    assert (identity.user, identity.container) == ("alice@corp.example", "debugger-8xk2p")
    assert identity.pod_uid == "c0ffee00-1111-4222-8333-444455556666", "from the Pod itself"
    assert {k: v for k, v in pod.items() if k != "spec"} == {
        k: v for k, v in review["request"]["object"].items() if k != "spec"
    }


def test_each_new_ephemeral_container_gets_its_own_token(signer, trusted):
    review = load_json("admission/debug_two_ephemeral_containers.json")
    pod = applied(review, admit(review, signer, trusted).response["response"])
    _, first, second = pod["spec"]["ephemeralContainers"]
    assert second["env"][0] == {"name": "DEBUG", "value": "1"}, "existing env is kept, in order"
    tokens = [first["env"][-1]["value"], second["env"][-1]["value"]]
    containers = [verify_token(t, trusted, now=NOW).container for t in tokens]
    assert containers == ["debugger-8xk2p", "debugger-withenv"]


def test_reinvoked_ephemeral_update_is_idempotent(signer, trusted):
    review = load_json("admission/debug_ephemeral_container.json")
    again = copy.deepcopy(review)
    again["request"]["object"] = applied(
        review, admit(review, signer, trusted).response["response"]
    )
    admission = admit(again, signer, trusted)
    response = admission.response["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert admission.decision.outcome == "skipped-already-injected"
    assert response["auditAnnotations"]["outcome"] == "injected", "the first call's annotation"


def test_pod_uid_goes_into_the_token_when_known(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    pod = PodFacts("c0ffee00-1111", False, (("app", "nginx:1.27"),), default_container="app")
    response = admit(review, signer, trusted, pod=pod).response["response"]
    token = applied(review, response)["command"][1].split("=", 1)[1]
    assert verify_token(token, trusted, now=NOW).pod_uid == "c0ffee00-1111"


def test_audit_annotation_keys_are_valid_qualified_name_parts(signer, trusted):
    import re

    name_part = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
    for fixture in ("exec_interactive_shell.json", "attach_shell.json", "pod_create.json"):
        annotations = admit(load_json(f"admission/{fixture}"), signer, trusted).response[
            "response"
        ]["auditAnnotations"]
        assert annotations, fixture
        assert all(name_part.fullmatch(key) for key in annotations), annotations


def test_huge_user_name_is_allowed_without_injection(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["userInfo"]["username"] = "u" * 2000
    response = admit(review, signer, trusted).response["response"]
    assert response["allowed"] is True
    assert response["auditAnnotations"]["outcome"] == "skipped-token-too-large"


def _without(path: str):
    def mutate(review: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = review
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


def _set(path: str, value: Any):
    def mutate(review: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = review
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            _set("apiVersion", "admission.k8s.io/v1beta1"),
            'got apiVersion "admission.k8s.io/v1beta1" kind "AdmissionReview"',
        ),
        (_set("kind", "Pod"), "AdmissionReview"),
        (_without("request"), "body.request must be dict"),
        (_set("request", []), "body.request must be dict"),
        (_without("request.uid"), "request.uid must be str"),
        (_set("request.uid", ""), r"^request\.uid must not be empty$"),
        (_set("request.uid", 42), "request.uid must be str, got 42"),
        (_without("request.userInfo"), "request.userInfo must be dict"),
        (_set("request.userInfo.groups", "devs"), "request.userInfo.groups must be list"),
        (
            _set("request.userInfo.groups", ["devs", 7]),
            r"^request\.userInfo\.groups\[1\] must be str, got 7$",
        ),
        (_set("request.object", "sh"), "request.object must be dict"),
        (
            _set("request.object", None),
            "^request.object must be a PodExecOptions for pods/exec, got null$",
        ),
        (_set("request.object.command", "/bin/sh"), "request.object.command must be list"),
        (
            _set("request.object.kind", "PodAttachOptions"),
            'request.object.kind must be PodExecOptions, got "PodAttachOptions"',
        ),
        (_set("request.namespace", ["shop"]), "request.namespace must be str"),
        (_set("request.dryRun", "false"), "request.dryRun must be bool"),
        (_set("request.operation", None), "request.operation must be str"),
        (_set("apiVersion", None), 'apiVersion null kind "AdmissionReview"'),
        (_set("kind", "Review"), 'kind "Review"'),
        (_set("request.subResource", 1), "request.subResource must be str, got 1"),
        (_set("request.name", ["web"]), "request.name must be str"),
        (_set("request.userInfo.uid", 5), "request.userInfo.uid must be str, got 5"),
        (_set("request.userInfo.username", {}), "request.userInfo.username must be str"),
        (_set("request.oldObject", "x"), "request.oldObject must be dict"),
    ],
)
def test_malformed_reviews_raise_an_error_naming_the_field(signer, trusted, mutate, message):
    review = load_json("admission/exec_interactive_shell.json")
    mutate(review)
    with pytest.raises(MalformedReview, match=message):
        admit(review, signer, trusted)


@pytest.mark.parametrize(
    ("body", "kind"), [(None, "NoneType"), ([], "list"), ("review", "str"), (3, "int")]
)
def test_non_object_bodies_are_malformed(signer, trusted, body, kind):
    with pytest.raises(MalformedReview, match=f"body must be a JSON object, got {kind}"):
        admit(body, signer, trusted)


def test_outcomes_lists_every_outcome_the_code_produces_and_the_readme_explains_each():
    import webhook.admission.decide

    decisions = Path(webhook.admission.decide.__file__).parent
    modules = ("review", "policy", "exec", "debug", "pods", "decide")
    source = "".join((decisions / f"{module}.py").read_text() for module in modules)
    produced = set(re.findall(r'"((?:skipped|env)-[a-z0-9-]+|injected|denied)"', source))
    assert produced == set(outcomes())
    readme = (DATA.parent.parent / "README.md").read_text()
    assert [o for o in outcomes() if f"`{o}`" not in readme] == []


def test_a_denied_exec_answers_403_forbidden_with_the_reason(signer, trusted):
    review = load_json("admission/exec_spoofed_identity.json")
    response = admit(review, signer, trusted).response["response"]
    assert response["allowed"] is False
    status = response["status"]
    assert (status["code"], status["reason"]) == (403, "Forbidden")
    assert "WHOEXEC_IDENTITY" in status["message"]


def test_token_of_the_same_identity_is_deterministic_for_a_given_clock(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    assert admit(review, signer, trusted).response == admit(review, signer, trusted).response
    later = review_admission(review, POLICY, signer, trusted, now=NOW + 1).response
    assert later != admit(review, signer, trusted).response


# --- pod-aware injection ------------------------------------------------------------------

WEB = PodFacts(
    "c0ffee00-1111-4222-8333-444455556666",
    False,
    (("app", "nginx:1.27"),),
    default_container="app",
)
#: the same pod created after install: the static env is mounted in its container
WEB_WITH_STATIC_ENV = PodFacts(WEB.uid, False, WEB.images, frozenset({"app"}), "app")


def exec_with(pod, policy=POLICY, signer=None, trusted=None, lookup=""):
    review = load_json("admission/exec_interactive_shell.json")
    admission = review_admission(
        review, policy, signer, trusted, now=NOW, pod=pod, pod_lookup=lookup
    )
    return review, admission.response["response"]


def test_pod_with_the_static_env_volume_is_rewritten_to_use_it(signer, trusted):
    pod = PodFacts(
        WEB.uid, False, (("app", "gcr.io/distroless/static:nonroot"),), frozenset({"app"}), "app"
    )
    review, response = exec_with(pod, signer=signer, trusted=trusted)
    command = applied(review, response)["command"]
    assert command[0] == "/.whoexec/env"
    assert command[2:] == ["/bin/bash"]


def test_pod_annotation_opts_out_with_a_warning(signer, trusted):
    pod = PodFacts(WEB.uid, True, WEB.images, default_container="app")
    _, response = exec_with(pod, signer=signer, trusted=trusted)
    assert response["allowed"] is True
    assert "patch" not in response
    assert response["auditAnnotations"]["outcome"] == "skipped-pod-opt-out"
    (warning,) = response["warnings"]
    assert "not attributed" in warning and len(warning) <= 120


@pytest.mark.parametrize(
    ("image", "outcome"),
    [("gcr.io/distroless/base-debian12:latest", "skipped-no-env"), ("nginx:1.27", "injected")],
)
def test_images_known_to_lack_env_are_not_rewritten(signer, trusted, image, outcome):
    policy = AdmissionPolicy(
        images_without_env=("gcr.io/distroless/*",), env_trusted_namespaces=("*",)
    )
    _, response = exec_with(
        PodFacts(WEB.uid, False, (("app", image),), default_container="app"),
        policy,
        signer,
        trusted,
    )
    assert response["auditAnnotations"]["outcome"] == outcome


def test_unknown_pod_after_a_lookup_timeout_still_injects_and_says_so(signer, trusted):
    review, response = exec_with(None, signer=signer, trusted=trusted, lookup="timeout")
    assert response["auditAnnotations"]["pod-lookup"] == "timeout"
    assert response["auditAnnotations"]["outcome"] == "injected"
    token = applied(review, response)["command"][1].split("=", 1)[1]
    assert verify_token(token, trusted, now=NOW).pod_uid is None


def test_rewrite_through_the_static_env_is_recognised_as_our_own(signer, trusted):
    pod = WEB_WITH_STATIC_ENV
    review, first = exec_with(pod, signer=signer, trusted=trusted)
    again = copy.deepcopy(review)
    again["request"]["object"] = applied(review, first)
    admission = review_admission(again, POLICY, signer, trusted, now=NOW, pod=pod)
    assert admission.decision.outcome == "skipped-already-injected"
    # the same audit annotations as the first call: the apiserver keeps the first value
    # of a key and logs any other as a conflict
    annotations = admission.response["response"]["auditAnnotations"]
    assert annotations["outcome"] == first["auditAnnotations"]["outcome"] == "injected"
    assert annotations["session-id"] == first["auditAnnotations"]["session-id"]


def test_pod_facts_are_read_from_a_pod_object():
    pod = load_json("admission/pod_create.json")["request"]["object"]
    facts = pod_facts(pod)
    assert facts.uid == "c0ffee00-1111-4222-8333-444455556666"
    assert facts.images[0] == ("app", "registry.example/shop/web:1.4.2")
    assert facts.default_container == "app"
    assert not facts.opted_out and not facts.has_env_volume
    pod["metadata"]["annotations"] = {"whoexec.io/inject": "false"}
    assert pod_facts(pod).opted_out


def create_review(pod: dict) -> dict:
    review = load_json("admission/pod_create.json")
    review["request"]["object"] = pod
    return review


def created_pod(signer, trusted, review):
    response = admit(review, signer, trusted).response["response"]
    return response, (applied(review, response) if "patch" in response else None)


def test_pod_create_adds_the_static_env_and_the_result_is_a_valid_pod(signer, trusted):
    import kubernetes_validate

    review = load_json("admission/pod_create.json")
    response, pod = created_pod(signer, trusted, review)
    assert response["auditAnnotations"]["outcome"] == "env-volume-added"
    assert {"name": "whoexec-env", "emptyDir": {"sizeLimit": "8Mi"}} in pod["spec"]["volumes"]
    (init,) = pod["spec"]["initContainers"]
    assert init["command"] == ["cp", "/opt/whoexec/static/env", "/.whoexec/env"]
    for container in pod["spec"]["containers"]:
        assert {"name": "whoexec-env", "mountPath": "/.whoexec", "readOnly": True} in container[
            "volumeMounts"
        ]
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_pod_create_appends_to_existing_lists(signer, trusted):
    pod = copy.deepcopy(load_json("admission/pod_create.json")["request"]["object"])
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    pod["spec"]["initContainers"] = [{"name": "migrate", "image": "migrate:1"}]
    pod["spec"]["containers"].append(
        {
            "name": "sidecar",
            "image": "envoy:1",
            "volumeMounts": [{"name": "data", "mountPath": "/d"}],
        }
    )
    _, created = created_pod(signer, trusted, create_review(pod))
    assert [v["name"] for v in created["spec"]["volumes"]] == ["data", "whoexec-env"]
    # ours runs first, so that every later init container and sidecar finds the file
    assert [c["name"] for c in created["spec"]["initContainers"]] == ["whoexec-env", "migrate"]
    migrate = created["spec"]["initContainers"][1]
    assert [m["name"] for m in migrate["volumeMounts"]] == ["whoexec-env"]
    sidecar = created["spec"]["containers"][1]
    assert [m["name"] for m in sidecar["volumeMounts"]] == ["data", "whoexec-env"]


def test_pod_create_is_idempotent(signer, trusted):
    review = load_json("admission/pod_create.json")
    first, once = created_pod(signer, trusted, review)
    response, twice = created_pod(signer, trusted, create_review(once))
    assert response["auditAnnotations"]["outcome"] == first["auditAnnotations"]["outcome"]
    assert twice is None
    assert [v["name"] for v in once["spec"]["volumes"]].count("whoexec-env") == 1


@pytest.mark.parametrize(
    ("change", "outcome"),
    [
        (
            lambda pod: pod["metadata"].update(annotations={"whoexec.io/inject": "false"}),
            "skipped-pod-opt-out",
        ),
        (
            lambda pod: pod["spec"]["containers"][0].update(
                volumeMounts=[{"name": "x", "mountPath": "/.whoexec"}]
            ),
            "skipped-env-volume-conflict",
        ),
    ],
)
def test_pod_create_leaves_opted_out_and_conflicting_pods_alone(signer, trusted, change, outcome):
    pod = copy.deepcopy(load_json("admission/pod_create.json")["request"]["object"])
    change(pod)
    response, created = created_pod(signer, trusted, create_review(pod))
    assert response["auditAnnotations"]["outcome"] == outcome
    assert created is None


def test_debug_container_in_an_opted_out_pod_is_not_injected(signer, trusted):
    review = load_json("admission/debug_ephemeral_container.json")
    review["request"]["object"]["metadata"]["annotations"] = {"whoexec.io/inject": "false"}
    response = admit(review, signer, trusted).response["response"]
    assert response["allowed"] is True
    assert "patch" not in response
    assert response["auditAnnotations"]["outcome"] == "skipped-pod-opt-out"


def pod_with(change) -> dict:
    pod = copy.deepcopy(load_json("admission/pod_create.json")["request"]["object"])
    change(pod)
    return pod


def _ours_already(pod: dict) -> None:
    pod["spec"]["volumes"] = [{"name": "whoexec-env", "emptyDir": {}}]
    pod["spec"]["initContainers"] = [{"name": "whoexec-env", "image": POLICY.static_env_image}]


POD_CREATE_SKIPS = [
    ("opt-out", lambda p: p["metadata"].update(annotations={"whoexec.io/inject": "False"}),
     "skipped-pod-opt-out", "skipped-pod-opt-out"),
    ("static-pod", lambda p: p["metadata"].update(
        annotations={"kubernetes.io/config.mirror": "abc"}), "skipped-static-pod",
     "skipped-static-pod"),
    ("windows", lambda p: p["spec"].update(os={"name": "windows"}), "skipped-windows",
     "skipped-windows"),
    ("already-ours", _ours_already, "skipped-already-injected", "env-volume-added"),
    ("volume-name-taken", lambda p: p["spec"].update(
        volumes=[{"name": "whoexec-env", "emptyDir": {}}]), "skipped-name-collision",
     "skipped-name-collision"),
    ("volume-name-taken-by-another-image", lambda p: (
        p["spec"].update(volumes=[{"name": "whoexec-env", "emptyDir": {}}]),
        p["spec"].update(initContainers=[{"name": "whoexec-env", "image": "other:1"}]),
    ), "skipped-name-collision", "skipped-name-collision"),
    ("container-name-taken", lambda p: p["spec"]["containers"][0].update(name="whoexec-env"),
     "skipped-name-collision", "skipped-name-collision"),
    ("init-container-name-taken", lambda p: p["spec"].update(
        initContainers=[{"name": "whoexec-env", "image": "x:1"}]), "skipped-name-collision",
     "skipped-name-collision"),
    ("mount-path-taken", lambda p: p["spec"]["containers"][0].update(
        volumeMounts=[{"name": "x", "mountPath": "/.whoexec/"}]),
     "skipped-env-volume-conflict", "skipped-env-volume-conflict"),
    ("init-mount-path-taken", lambda p: p["spec"].update(initContainers=[
        {"name": "i", "image": "x:1", "volumeMounts": [{"name": "x", "mountPath": "/.whoexec"}]}
    ]), "skipped-env-volume-conflict", "skipped-env-volume-conflict"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "outcome", "audit"),
    [case[1:] for case in POD_CREATE_SKIPS],
    ids=[case[0] for case in POD_CREATE_SKIPS],
)
def test_every_pod_create_skip_admits_the_pod_unchanged(signer, trusted, change, outcome, audit):
    admission = admit(create_review(pod_with(change)), signer, trusted)
    response = admission.response["response"]
    assert response["allowed"] is True, "a pod is never refused because of whoexec"
    assert "patch" not in response and "patchType" not in response
    assert admission.decision.outcome == outcome
    assert response["auditAnnotations"]["outcome"] == audit


def test_a_mount_elsewhere_or_a_mount_without_a_path_is_no_conflict(signer, trusted):
    pod = pod_with(
        lambda p: p["spec"]["containers"][0].update(
            volumeMounts=[
                {"name": "x", "mountPath": "/.whoexec-data"},
                {"name": "z", "mountPath": "/.whoexecX"},  # looks alike, is another path
                {"name": "y"},
                "junk",
            ]
        )
    )
    assert admit(create_review(pod), signer, trusted).decision.outcome == "env-volume-added"


def test_the_init_container_runs_as_a_locked_down_non_root_user(signer, trusted):
    _, pod = created_pod(signer, trusted, load_json("admission/pod_create.json"))
    (init,) = pod["spec"]["initContainers"]
    assert init["image"] == POLICY.static_env_image
    assert init["volumeMounts"] == [{"name": "whoexec-env", "mountPath": "/.whoexec"}]
    assert init["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }  # what PodSecurity "restricted" asks of every container


MALFORMED_PODS = [
    ("no-object", None, "request.object must be a Pod for a pod CREATE"),
    ("metadata", {"metadata": [], "spec": {}}, "request.object.metadata must be dict, got []"),
    ("spec", {"spec": "x"}, 'request.object.spec must be dict, got "x"'),
    ("annotations", {"metadata": {"annotations": 1}, "spec": {}},
     "request.object.metadata.annotations must be dict, got 1"),
    ("volumes", {"spec": {"volumes": {}, "containers": []}},
     "request.object.spec.volumes must be list, got {}"),
    ("containers", {"spec": {"containers": {}}},
     "request.object.spec.containers must be list, got {}"),
    ("initContainers", {"spec": {"containers": [], "initContainers": 5}},
     "request.object.spec.initContainers must be list, got 5"),
    ("container", {"spec": {"containers": ["app"]}},
     "request.object.spec.containers[0] must be an object"),
    ("init-container", {"spec": {"containers": [], "initContainers": [{}, 7]}},
     "request.object.spec.initContainers[1] must be an object"),
    ("volumeMounts", {"spec": {"containers": [{"name": "a", "volumeMounts": "x"}]}},
     'request.object.spec.containers[0].volumeMounts must be list, got "x"'),
]  # fmt: skip


@pytest.mark.parametrize(
    ("pod", "message"),
    [case[1:] for case in MALFORMED_PODS],
    ids=[case[0] for case in MALFORMED_PODS],
)
def test_a_malformed_pod_create_is_refused_naming_the_field(signer, trusted, pod, message):
    review = load_json("admission/pod_create.json")
    if pod is None:
        del review["request"]["object"]
    else:
        review["request"]["object"] = pod
    with pytest.raises(MalformedReview, match=f"^{re.escape(message)}$"):
        admit(review, signer, trusted)


def debug_review(change=lambda review: None) -> dict:
    review = load_json("admission/debug_ephemeral_container.json")
    change(review)
    return review


def _user(name: str):
    return lambda review: review["request"]["userInfo"].update(username=name)


DEBUG_SKIPS = [
    ("excluded-namespace", lambda r: None, AdmissionPolicy(exclude_namespaces=("shop",)),
     "skipped-excluded-namespace"),
    ("excluded-user", _user("robot"), AdmissionPolicy(exclude_users=("robot",)),
     "skipped-excluded-user"),
    ("excluded-group", lambda r: None, AdmissionPolicy(exclude_groups=("devs",)),
     "skipped-excluded-group"),
    ("opted-out", lambda r: r["request"]["object"]["metadata"].update(
        annotations={"whoexec.io/inject": "false"}), POLICY, "skipped-pod-opt-out"),
    ("no-new-container", lambda r: r["request"]["object"]["spec"].update(
        ephemeralContainers=r["request"]["oldObject"]["spec"]["ephemeralContainers"]), POLICY,
     "skipped-no-new-container"),
    ("identity-too-large", _user("u" * 4000), POLICY, "skipped-token-too-large"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "policy", "outcome"),
    [case[1:] for case in DEBUG_SKIPS],
    ids=[case[0] for case in DEBUG_SKIPS],
)
def test_every_debug_container_skip_lets_kubectl_debug_through_unchanged(
    signer, trusted, change, policy, outcome
):
    admission = admit(debug_review(change), signer, trusted, policy)
    response = admission.response["response"]
    assert response["allowed"] is True, "kubectl debug is never refused because of whoexec"
    assert "patch" not in response
    assert admission.decision.outcome == outcome


def test_an_injected_debug_container_is_its_own_session_named_by_the_request(signer, trusted):
    review = debug_review()
    admission = admit(review, signer, trusted)
    decision = admission.decision
    assert decision.session_id == review["request"]["uid"]
    (op,) = [o for o in decision.patch if o["path"].endswith("/env")]
    assert decision.token_bytes == len(op["value"][0]["value"]) > 0
    assert admission.response["response"]["auditAnnotations"]["session-id"] == decision.session_id


@pytest.mark.parametrize(
    ("mounts", "expected"),
    [
        (
            None,
            [
                {
                    "op": "add",
                    "path": "/spec/ephemeralContainers/1/volumeMounts",
                    "value": [{"name": "whoexec-env", "mountPath": "/.whoexec", "readOnly": True}],
                }
            ],
        ),
        (
            [{"name": "data", "mountPath": "/d"}],
            [
                {
                    "op": "add",
                    "path": "/spec/ephemeralContainers/1/volumeMounts/-",
                    "value": {"name": "whoexec-env", "mountPath": "/.whoexec", "readOnly": True},
                }
            ],
        ),
        ([{"name": "mine", "mountPath": "/.whoexec/"}], []),  # the path is taken: left alone
        (
            [{"name": "mine", "mountPath": "/.whoexecX"}],  # looks alike, is another path
            [
                {
                    "op": "add",
                    "path": "/spec/ephemeralContainers/1/volumeMounts/-",
                    "value": {"name": "whoexec-env", "mountPath": "/.whoexec", "readOnly": True},
                }
            ],
        ),
        ("not-a-list", []),
    ],
    ids=["no-mounts", "other-mounts", "path-taken", "look-alike-path", "malformed-mounts"],
)
def test_a_debug_container_gets_the_static_env_mount_once_and_only_where_it_fits(
    signer, trusted, mounts, expected
):
    def with_volume(review: dict) -> None:
        pod = review["request"]["object"]
        pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}, {"name": "whoexec-env"}]
        if mounts is not None:
            pod["spec"]["ephemeralContainers"][1]["volumeMounts"] = mounts

    decision = admit(debug_review(with_volume), signer, trusted).decision
    assert [op for op in decision.patch if "volumeMounts" in op["path"]] == expected


def test_a_debug_container_gets_no_mount_when_the_pod_has_no_static_env(signer, trusted):
    decision = admit(debug_review(), signer, trusted).decision
    assert [op["path"] for op in decision.patch] == ["/spec/ephemeralContainers/1/env"]


def test_a_debug_container_update_without_the_pod_is_malformed(signer, trusted):
    review = debug_review(lambda r: r["request"].update(object=None))
    with pytest.raises(
        MalformedReview, match=r"^request\.object must be a Pod for pods/ephemeralcontainers$"
    ):
        admit(review, signer, trusted)


def test_a_debug_container_with_a_malformed_env_is_refused_naming_it(signer, trusted):
    def bad_env(review: dict) -> None:
        review["request"]["object"]["spec"]["ephemeralContainers"][1]["env"] = {"A": "b"}

    with pytest.raises(
        MalformedReview, match=re.escape("request.object.spec.ephemeralContainers[1].env")
    ):
        admit(debug_review(bad_env), signer, trusted)
    review = debug_review()
    del review["request"]["object"]
    with pytest.raises(
        MalformedReview,
        match=re.escape("request.object must be a Pod for pods/ephemeralcontainers"),
    ):
        admit(review, signer, trusted)


def _debug_set(path: str, value: Any):
    def change(review: dict) -> None:
        *parents, last = path.split(".")
        target: Any = review["request"]
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change


MALFORMED_DEBUG = [
    ("object.spec", "x", 'request.object.spec must be dict, got "x"'),  # was a 500
    ("object.spec.ephemeralContainers", {}, "request.object.spec.ephemeralContainers must be list"),
    ("object.spec.ephemeralContainers.1", "dbg",
     'request.object.spec.ephemeralContainers[1] must be an object, got "dbg"'),
    ("object.spec.ephemeralContainers.1.name", 7,
     "request.object.spec.ephemeralContainers[1].name must be str, got 7"),
    ("oldObject.spec.ephemeralContainers.0", [],
     "request.oldObject.spec.ephemeralContainers[0] must be an object, got []"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("path", "value", "message"), MALFORMED_DEBUG, ids=[m[0] for m in MALFORMED_DEBUG]
)
def test_a_malformed_debug_container_update_is_refused_naming_the_field(
    signer, trusted, path, value, message
):
    with pytest.raises(MalformedReview, match=re.escape(message)):
        admit(debug_review(_debug_set(path, value)), signer, trusted)


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "WHOEXEC_IDENTITY", "value": "x"},
        # from a Secret: no value to verify, so never our own
        {"name": "WHOEXEC_IDENTITY", "valueFrom": {"secretKeyRef": {"name": "s", "key": "t"}}},
    ],
    ids=["value", "value-from-a-secret"],
)
def test_a_debug_container_that_sets_the_variable_itself_is_denied(signer, trusted, entry):
    def spoof(review: dict) -> None:
        debugger = review["request"]["object"]["spec"]["ephemeralContainers"][1]
        debugger["env"] = [{"name": "A", "value": "1"}, entry]

    response = admit(debug_review(spoof), signer, trusted).response["response"]
    assert response["allowed"] is False
    assert response["status"]["message"] == (
        "whoexec: ephemeral container 'debugger-8xk2p' sets WHOEXEC_IDENTITY, which only the "
        "whoexec webhook may set"
    )


def test_a_skip_after_a_pod_look_up_timed_out_says_so_in_its_warning(signer, trusted):
    _, response = exec_with(None, signer=signer, trusted=trusted, lookup="timeout",
                            policy=AdmissionPolicy())  # fmt: skip
    (warning,) = response["warnings"]
    assert (
        warning
        == (
            "whoexec: this session is not attributed to you: no env binary is known to exist in "
            "this container (pod look-up timed out)"
        )[:120]
    )
    _, response = exec_with(None, signer=signer, trusted=trusted, lookup="not-found",
                            policy=AdmissionPolicy())  # fmt: skip
    (warning,) = response["warnings"]
    assert warning == (
        "whoexec: this session is not attributed to you: no env binary is known to exist in "
        "this container"
    )


def test_an_attach_is_warned_about_too(signer, trusted):
    review = load_json("admission/attach_shell.json")
    response = review_admission(
        review, POLICY, signer, trusted, now=NOW, pod_lookup="timeout"
    ).response["response"]
    assert response["warnings"] == [
        "whoexec: this session is not attributed to you: attach joins a running process "
        "(pod look-up timed out)"
    ]


@pytest.mark.parametrize(
    ("operation", "resource", "sub"),
    [
        ("CREATE", "pods", "binding"),  # the scheduler binding a pod: not a pod CREATE
        ("CREATE", "pods", "eviction"),
        ("UPDATE", "pods", ""),  # an ordinary pod update: not kubectl debug
        ("CREATE", "deployments", ""),
        ("UPDATE", "nodes", "ephemeralcontainers"),
        ("DELETE", "pods", "ephemeralcontainers"),
    ],
)
def test_requests_that_only_look_like_ours_are_left_alone(
    signer, trusted, operation, resource, sub
):
    review = load_json("admission/pod_create.json")
    request = review["request"]
    request["operation"], request["subResource"] = operation, sub
    request["resource"]["resource"] = resource
    response = admit(review, signer, trusted).response["response"]
    assert response["allowed"] is True and "patch" not in response
    assert response["auditAnnotations"]["outcome"] == "skipped-not-exec"


def reinvoked(review: dict, first: dict) -> dict:
    """The review of a reinvocation: the first call's patch applied, and a new uid (every
    webhook call gets its own: k8s.io/apiserver's CreateAdmissionObjects)."""
    again = copy.deepcopy(review)
    again["request"]["object"] = applied(review, first)
    again["request"]["uid"] = "0b5e55ed-0000-4000-8000-reinvocation"
    return again


def test_a_second_new_debug_container_gets_its_token_after_a_reinvoked_first(signer, trusted):
    review = debug_review()
    first = admit(review, signer, trusted).response["response"]
    again = reinvoked(review, first)
    containers = again["request"]["object"]["spec"]["ephemeralContainers"]
    containers.append({"name": "debugger-2", "image": "busybox:1.36"})
    admission = admit(again, signer, trusted)
    (op,) = admission.decision.patch
    assert op["path"] == "/spec/ephemeralContainers/2/env"
    # one admission, one session: the audit event keeps the first call's session-id, so
    # the second container's token carries it too
    token = verify_token(op["value"][0]["value"], trusted, now=NOW)
    assert token.session_id == review["request"]["uid"]
    assert admission.response["response"]["auditAnnotations"]["session-id"] == token.session_id


def test_a_reinvoked_debug_update_names_the_session_the_first_call_minted(signer, trusted):
    review = debug_review()
    first = admit(review, signer, trusted).response["response"]
    admission = admit(reinvoked(review, first), signer, trusted)
    assert admission.decision.outcome == "skipped-already-injected"
    annotations = admission.response["response"]["auditAnnotations"]
    # the apiserver refuses to overwrite an audit annotation with another value
    assert annotations["session-id"] == first["auditAnnotations"]["session-id"]
    assert admission.decision.session_id == review["request"]["uid"]


def test_a_debug_container_that_sets_the_variable_after_a_reinvoked_one_is_denied(signer, trusted):
    review = debug_review()
    first = admit(review, signer, trusted).response["response"]
    again = reinvoked(review, first)
    containers = again["request"]["object"]["spec"]["ephemeralContainers"]
    (ours,) = containers[1]["env"]
    containers.append(
        {"name": "debugger-2", "image": "busybox:1.36", "env": [dict(ours)]}  # lifted token
    )
    admission = admit(again, signer, trusted)
    response = admission.response["response"]
    assert (response["allowed"], admission.decision.outcome) == (False, "denied")
    assert "ephemeral container 'debugger-2' sets WHOEXEC_IDENTITY" in response["status"]["message"]


def test_a_reinvoked_debug_container_that_sets_the_variable_a_second_time_is_denied(
    signer, trusted
):
    review = debug_review()
    first = admit(review, signer, trusted).response["response"]
    again = reinvoked(review, first)
    debugger = again["request"]["object"]["spec"]["ephemeralContainers"][1]
    # our own token first, then another: of two entries of one name the container gets
    # the last (the kubelet builds the environment in order)
    debugger["env"].append({"name": "WHOEXEC_IDENTITY", "value": "v1.forged"})
    admission = admit(again, signer, trusted)
    response = admission.response["response"]
    assert (response["allowed"], admission.decision.outcome) == (False, "denied")
    assert "'debugger-8xk2p' sets WHOEXEC_IDENTITY" in response["status"]["message"]


def test_a_debug_container_gets_no_mount_when_the_pod_s_volumes_are_all_others(signer, trusted):
    def other_volumes(review: dict) -> None:
        review["request"]["object"]["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]

    decision = admit(debug_review(other_volumes), signer, trusted).decision
    assert [op["path"] for op in decision.patch] == ["/spec/ephemeralContainers/1/env"]


#: a pod created after install, with a second container that a later webhook added (it
#: lacks our mount) and kubectl's default-container annotation
SIDECAR_POD = {
    "metadata": {"uid": "u-1", "annotations": {}},
    "spec": {
        "volumes": [{"name": "data", "emptyDir": {}}, {"name": "whoexec-env", "emptyDir": {}}],
        "containers": [
            {"name": "app", "image": "nginx:1.27",
             "volumeMounts": [{"name": "whoexec-env", "mountPath": "/.whoexec"}]},
            {"name": "sidecar", "image": "proxy:2",
             "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        ],
    },
}  # fmt: skip


def exec_into(container: str, pod: PodFacts, policy: AdmissionPolicy, signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["object"]["container"] = container
    return review, review_admission(review, policy, signer, trusted, now=NOW, pod=pod)


def test_only_containers_that_mount_the_static_env_are_rewritten_to_it(signer, trusted):
    facts = pod_facts(SIDECAR_POD)
    assert facts.mounted == {"app"}
    safe = AdmissionPolicy()
    _, app = exec_into("app", facts, safe, signer, trusted)
    _, sidecar = exec_into("sidecar", facts, safe, signer, trusted)
    assert app.decision.patch[0]["value"][0] == "/.whoexec/env"
    assert (sidecar.decision.outcome, sidecar.decision.patch) == ("skipped-no-static-env", ())


def test_an_exec_without_a_container_goes_to_the_annotated_default(signer, trusted):
    pod = copy.deepcopy(SIDECAR_POD)
    pod["metadata"]["annotations"]["kubectl.kubernetes.io/default-container"] = "sidecar"
    facts = pod_facts(pod)
    assert facts.default_container == "sidecar"
    _, admission = exec_into("", facts, AdmissionPolicy(), signer, trusted)
    assert admission.decision.outcome == "skipped-no-static-env", "sidecar lacks the mount"
    pod["metadata"]["annotations"] = {}
    _, admission = exec_into("", pod_facts(pod), AdmissionPolicy(), signer, trusted)
    assert admission.decision.outcome == "injected", "the first container, which has it"


def test_pod_facts_pass_over_a_container_that_is_not_an_object():
    facts = pod_facts({"spec": {"containers": ["junk", {"name": "app", "image": "a:1"}]}})
    assert facts.images == (("app", "a:1"),)
    assert facts.default_container == "app"


@pytest.mark.parametrize(
    ("container", "outcome"),
    [("app", "injected"), ("tools", "skipped-no-env"), ("", "injected")],
)
def test_the_image_judged_is_the_exec_s_own_container_s(signer, trusted, container, outcome):
    facts = PodFacts("u-1", False, (("app", "nginx:1.27"), ("tools", "distroless/x:1")),
                     default_container="app")  # fmt: skip
    policy = AdmissionPolicy(images_without_env=("distroless/*",), env_trusted_namespaces=("*",))
    _, admission = exec_into(container, facts, policy, signer, trusted)
    assert admission.decision.outcome == outcome


def test_an_exec_into_a_container_the_pod_cache_does_not_know_is_skipped(signer, trusted):
    policy = AdmissionPolicy(images_without_env=("distroless/*",))
    _, admission = exec_into("added-later", WEB, policy, signer, trusted)
    assert admission.decision.outcome == "skipped-no-static-env"
    assert WEB.image_of("added-later") is None


@pytest.mark.parametrize(("skew", "outcome"), [(300, "skipped-already-injected"), (5, "denied")])
def test_a_rewrite_by_a_replica_whose_clock_runs_ahead_is_ours_within_the_clock_skew(
    signer, trusted, skew, outcome
):
    review = load_json("admission/exec_interactive_shell.json")
    ahead = review_admission(review, POLICY, signer, trusted, now=NOW + 60).response
    again = reinvoked(review, ahead["response"])
    policy = dataclasses.replace(POLICY, clock_skew_seconds=skew)
    assert review_admission(again, policy, signer, trusted, now=NOW).decision.outcome == outcome


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Decimal("0.1")),
        ("64Mi", Decimal(64 * 2**20)),
        ("1.5", Decimal("1.5")),
        (2, Decimal(2)),
        (0.5, Decimal("0.5")),
        (True, None),  # an int to Python, but no quantity
        (None, None),
        ("lots", None),
        ("1e5000000000", None),
    ],
)
def test_a_resource_quantity_is_read_as_a_number_or_not_at_all(text, value):
    assert quantity(text) == value


def test_a_pod_whose_resources_are_not_quantities_still_gets_the_static_env(signer, trusted):
    pod = pod_with(
        lambda p: p["spec"]["containers"][0].update(
            resources={"limits": {"cpu": True, "memory": "lots"}, "requests": {"cpu": [1]}}
        )
    )
    admission = admit(create_review(pod), signer, trusted)
    assert admission.decision.outcome == "env-volume-added"
    (init,) = [op for op in admission.decision.patch if op["path"].startswith("/spec/init")]
    resources = init["value"][0]["resources"]
    assert resources == {
        "requests": {"cpu": POLICY.static_env_cpu, "memory": POLICY.static_env_memory},
        "limits": {"cpu": POLICY.static_env_cpu, "memory": POLICY.static_env_memory},
    }


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("x" * 58, '"' + "x" * 58 + '"'),  # 60 characters with the quotes: as it is
        ("x" * 59, '"' + "x" * 56 + "..."),  # 61: cut to 60
        (b"raw", "b'raw'"),
    ],
)
def test_a_bad_value_is_shown_in_full_up_to_60_characters(value, shown):
    from webhook.admission.review import _show

    assert _show(value) == shown


def test_the_spoofing_denial_tells_the_caller_what_to_do(signer, trusted):
    response = admit(load_json("admission/exec_spoofed_identity.json"), signer, trusted).response
    assert response["response"]["status"]["message"] == (
        "whoexec: the command sets WHOEXEC_IDENTITY, which only the whoexec webhook may set; "
        "remove it from the command"
    )


def test_without_a_pod_cache_the_answer_has_no_pod_lookup_annotation(signer, trusted):
    for fixture in ("exec_interactive_shell.json", "pod_create.json", "attach_shell.json"):
        annotations = admit(load_json(f"admission/{fixture}"), signer, trusted).response[
            "response"
        ]["auditAnnotations"]
        assert "pod-lookup" not in annotations, fixture


def test_a_pod_without_a_uid_puts_no_pod_uid_in_its_tokens(signer, trusted):
    # a made-up "None" would not match the real pod's uid, and the consumer would call
    # the genuine session a replay
    review = debug_review(lambda r: r["request"]["object"]["metadata"].pop("uid"))
    pod = applied(review, admit(review, signer, trusted).response["response"])
    (entry,) = pod["spec"]["ephemeralContainers"][1]["env"]
    assert verify_token(entry["value"], trusted, now=NOW).pod_uid is None
    assert pod_facts({"metadata": {}, "spec": {}}).uid == ""


@pytest.mark.parametrize("absent", [None, "missing"])
def test_a_caller_without_a_name_is_never_given_one(signer, trusted, absent):
    review = load_json("admission/exec_interactive_shell.json")
    user_info = review["request"]["userInfo"]
    for key in ("username", "uid"):
        if absent is None:
            user_info[key] = None
        else:
            user_info.pop(key)
    annotations = admit(review, signer, trusted).response["response"]["auditAnnotations"]
    assert "user" not in annotations


def test_a_value_nested_past_what_json_can_show_is_named_by_its_type(signer, trusted):
    review = load_json("admission/exec_interactive_shell.json")
    deep: object = []
    for _ in range(300):
        deep = [deep]
    review["request"]["uid"] = deep
    with pytest.raises(
        MalformedReview, match=r"^request\.uid must be str, got a list nested more than 254"
    ):
        admit(review, signer, trusted)
