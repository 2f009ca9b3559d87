"""Never break what would have worked: exec is rewritten only where the env binary is known
to exist in that container, and the pod CREATE mutation never makes a valid pod invalid."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest

from tests.conftest import NOW, load_json
from webhook.admission.decide import AdmissionPolicy, PodFacts, pod_facts, review_admission

SAFE = AdmissionPolicy()  # the default: vouch for nothing


def exec_into(container: str, pod: PodFacts | None, signer, trusted, policy=SAFE, ns="shop"):
    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["object"]["container"] = container
    review["request"]["namespace"] = ns
    response = review_admission(review, policy, signer, trusted, now=NOW, pod=pod).response
    answer = response["response"]
    command = None
    if "patch" in answer:
        ops = json.loads(base64.b64decode(answer["patch"]))
        command = jsonpatch.apply_patch(review["request"]["object"], ops)["command"]
    return answer, command


def created(spec_change=None, policy=SAFE, signer=None, trusted=None, metadata=None):
    review = load_json("admission/pod_create.json")
    pod = review["request"]["object"]
    pod["spec"].pop("ephemeralContainers", None)
    if spec_change:
        spec_change(pod["spec"])
    if metadata:
        pod["metadata"].update(metadata)
    answer = review_admission(review, policy, signer, trusted, now=NOW).response["response"]
    if "patch" not in answer:
        return answer, None
    ops = json.loads(base64.b64decode(answer["patch"]))
    return answer, jsonpatch.apply_patch(pod, ops)


def a_pod_created_after_install(signer, trusted, spec_change=None) -> dict[str, Any]:
    _, pod = created(spec_change, signer=signer, trusted=trusted)
    assert pod is not None
    return pod


SIDECAR = {"name": "istio-proxy", "image": "proxy:1", "restartPolicy": "Always"}
MIGRATE = {"name": "migrate", "image": "migrate:1"}


def with_init(spec: dict[str, Any]) -> None:
    spec["initContainers"] = [copy.deepcopy(MIGRATE), copy.deepcopy(SIDECAR)]


@pytest.mark.parametrize(
    ("container", "expected"),
    [("app", "/.whoexec/env"), ("migrate", "/.whoexec/env"), ("istio-proxy", "/.whoexec/env")],
)
def test_every_container_kind_of_a_new_pod_execs_through_the_static_env(
    signer, trusted, container, expected
):
    pod = a_pod_created_after_install(signer, trusted, with_init)
    answer, command = exec_into(container, pod_facts(pod), signer, trusted)
    assert answer["auditAnnotations"]["outcome"] == "injected"
    assert command[0] == expected


def test_a_container_added_by_a_later_webhook_is_left_alone(signer, trusted):
    # vault-agent's webhook runs after ours (name order): its container has no mount
    pod = a_pod_created_after_install(signer, trusted)
    pod["spec"]["initContainers"].append({"name": "vault-agent-init", "image": "vault:1"})
    answer, command = exec_into("vault-agent-init", pod_facts(pod), signer, trusted)
    assert answer["auditAnnotations"]["outcome"] == "skipped-no-static-env"
    assert command is None
    assert answer["allowed"] is True


def test_a_static_pods_mirror_never_counts_as_having_the_static_env(signer, trusted):
    pod = a_pod_created_after_install(signer, trusted)
    pod["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "abc"}
    answer, command = exec_into("app", pod_facts(pod), signer, trusted)
    assert answer["auditAnnotations"]["outcome"] == "skipped-no-static-env"
    assert command is None


@pytest.mark.parametrize(
    ("policy", "pod_known", "outcome", "binary"),
    [
        (SAFE, True, "skipped-no-static-env", None),
        (SAFE, False, "skipped-no-static-env", None),
        (AdmissionPolicy(env_trusted_namespaces=("sho?",)), False, "injected", "/usr/bin/env"),
        (AdmissionPolicy(env_trusted_namespaces=("sho?",)), True, "injected", "/usr/bin/env"),
        (
            AdmissionPolicy(env_trusted_images=("registry.k8s.io/etcd:*",)),
            True,
            "skipped-no-static-env",
            None,
        ),
        (AdmissionPolicy(env_trusted_images=("debian:*",)), True, "injected", "/usr/bin/env"),
        (
            AdmissionPolicy(env_trusted_namespaces=("*",), images_without_env=("debian:*",)),
            True,
            "skipped-no-env",
            None,
        ),
    ],
)
def test_a_pod_created_before_install_is_rewritten_only_where_vouched_for(
    signer, trusted, policy, pod_known, outcome, binary
):
    old = PodFacts("uid-old", False, (("app", "debian:12"),), default_container="app")
    answer, command = exec_into("app", old if pod_known else None, signer, trusted, policy)
    assert answer["auditAnnotations"]["outcome"] == outcome
    assert answer["allowed"] is True
    assert (command[0] if command else None) == binary
    if binary is None:
        assert any("not attributed" in w for w in answer.get("warnings", []))


def test_an_etcd_like_image_is_not_broken_by_default(signer, trusted):
    # registry.k8s.io/etcd is distroless plus /bin/sh: no /usr/bin/env
    etcd = PodFacts(
        "uid-etcd", False, (("etcd", "registry.k8s.io/etcd:3.6.5-0"),), default_container="etcd"
    )
    answer, command = exec_into("etcd", etcd, signer, trusted, ns="kube-system")
    assert command is None
    assert answer["auditAnnotations"]["outcome"] == "skipped-no-static-env"


# --- the pod CREATE mutation ----------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [
        lambda spec: spec.update(os={"name": "windows"}),
        lambda spec: spec.update(nodeSelector={"kubernetes.io/os": "windows"}),
        lambda spec: spec.update(
            affinity={
                "nodeAffinity": {
                    "requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [
                            {
                                "matchExpressions": [
                                    {
                                        "key": "kubernetes.io/os",
                                        "operator": "In",
                                        "values": ["windows"],
                                    }
                                ]
                            }
                        ]
                    }
                }
            }
        ),
    ],
    ids=["os.name", "nodeSelector", "nodeAffinity"],
)
def test_windows_pods_are_left_alone(signer, trusted, shape):
    answer, pod = created(shape, signer=signer, trusted=trusted)
    assert answer["auditAnnotations"]["outcome"] == "skipped-windows"
    assert pod is None


@pytest.mark.parametrize(
    ("shape", "outcome"),
    [
        (
            lambda spec: spec["containers"].append({"name": "whoexec-env", "image": "x"}),
            "skipped-name-collision",
        ),
        (
            lambda spec: spec.update(volumes=[{"name": "whoexec-env", "emptyDir": {}}]),
            "skipped-name-collision",
        ),
        (
            lambda spec: spec.update(
                initContainers=[
                    {
                        "name": "i",
                        "image": "x",
                        "volumeMounts": [{"name": "v", "mountPath": "/.whoexec/"}],
                    }
                ]
            ),
            "skipped-env-volume-conflict",
        ),
    ],
    ids=["container name", "volume name", "init container mount path"],
)
def test_name_and_path_collisions_skip_the_pod(signer, trusted, shape, outcome):
    answer, pod = created(shape, signer=signer, trusted=trusted)
    assert answer["auditAnnotations"]["outcome"] == outcome
    assert pod is None


def test_a_mirror_pod_is_left_alone(signer, trusted):
    answer, pod = created(
        metadata={"annotations": {"kubernetes.io/config.mirror": "abc"}},
        signer=signer,
        trusted=trusted,
    )
    assert answer["auditAnnotations"]["outcome"] == "skipped-static-pod"
    assert pod is None


def test_the_init_container_has_requests_and_limits_from_the_settings(signer, trusted):
    policy = AdmissionPolicy(static_env_cpu="25m", static_env_memory="24Mi")
    _, pod = created(policy=policy, signer=signer, trusted=trusted)
    (init,) = pod["spec"]["initContainers"]
    assert init["resources"] == {
        "requests": {"cpu": "25m", "memory": "24Mi"},
        "limits": {"cpu": "25m", "memory": "24Mi"},
    }


def test_the_init_container_is_as_large_as_the_largest_container(signer, trusted):
    # LimitRanger gave the containers the namespace's defaults before any webhook ran, so
    # these values satisfy its min and max; an init container adds nothing to the quota
    def sized(spec):
        spec["containers"][0]["resources"] = {
            "requests": {"cpu": "250m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "128Mi"},
        }
        spec["containers"].append(
            {"name": "side", "image": "x", "resources": {"requests": {"cpu": "0.5"}}}
        )

    _, pod = created(sized, signer=signer, trusted=trusted)
    init = pod["spec"]["initContainers"][0]
    assert init["resources"] == {
        "requests": {"cpu": "0.5", "memory": "64Mi"},
        "limits": {"cpu": "1", "memory": "128Mi"},
    }


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", "0.1"),
        ("1", "1"),
        ("64Mi", str(64 * 2**20)),
        ("1.5Gi", str(int(1.5 * 2**30))),
        ("2k", "2000"),
        ("1e3", "1000"),
    ],
)
def test_quantities_are_read_as_kubernetes_writes_them(text, value):
    from decimal import Decimal

    from webhook.admission.decide import quantity

    assert quantity(text) == Decimal(value)


def test_a_request_without_a_limit_gets_an_equal_limit_never_a_lower_one(signer, trusted):
    def big(spec):
        spec["containers"][0]["resources"] = {"requests": {"memory": "1Gi"}}

    _, pod = created(big, signer=signer, trusted=trusted)
    resources = pod["spec"]["initContainers"][0]["resources"]
    assert resources["requests"]["memory"] == resources["limits"]["memory"] == "1Gi"


def test_a_pod_with_init_containers_and_a_native_sidecar_stays_valid(signer, trusted):
    _, pod = created(with_init, signer=signer, trusted=trusted)
    names = [c["name"] for c in pod["spec"]["initContainers"]]
    assert names == ["whoexec-env", "migrate", "istio-proxy"]
    for container in pod["spec"]["initContainers"][1:] + pod["spec"]["containers"]:
        assert {"name": "whoexec-env", "mountPath": "/.whoexec", "readOnly": True} in container[
            "volumeMounts"
        ]
    kubernetes_validate.validate(pod, kubernetes_validate.latest_version(), strict=True)


def test_a_debug_container_gets_the_static_env_mount_when_the_pod_has_it(signer, trusted):
    review = load_json("admission/debug_ephemeral_container.json")
    pod = review["request"]["object"]
    pod["spec"].setdefault("volumes", []).append({"name": "whoexec-env", "emptyDir": {}})
    answer = review_admission(review, SAFE, signer, trusted, now=NOW).response["response"]
    ops = json.loads(base64.b64decode(answer["patch"]))
    patched = jsonpatch.apply_patch(pod, ops)
    debugger = patched["spec"]["ephemeralContainers"][-1]
    assert {"name": "whoexec-env", "mountPath": "/.whoexec", "readOnly": True} in debugger[
        "volumeMounts"
    ]


def test_exec_into_a_windows_pod_is_never_rewritten_even_where_vouched_for(signer, trusted):
    review = load_json("admission/pod_create.json")
    pod = review["request"]["object"]
    pod["spec"]["os"] = {"name": "windows"}
    vouched = AdmissionPolicy(env_trusted_namespaces=("*",))
    answer, command = exec_into("app", pod_facts(pod), signer, trusted, vouched)
    assert answer["auditAnnotations"]["outcome"] == "skipped-windows"
    assert command is None


def sizes(cpu: str, cpu_limit: str, memory: str = "16Mi", memory_limit: str = "16Mi") -> dict:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit, "memory": memory_limit},
    }


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        # a limit alone: the request is the limit (the apiserver would default it so)
        ({"limits": {"cpu": "2", "memory": "256Mi"}}, sizes("2", "2", "256Mi", "256Mi")),
        # the largest limit below the largest request: the limit is raised to the request
        ({"requests": {"cpu": "500m"}, "limits": {"cpu": "200m"}}, sizes("500m", "500m")),
        # equal values stay as written
        ({"requests": {"cpu": "100m"}, "limits": {"cpu": "0.1"}}, sizes("100m", "0.1")),
        # a value that is no quantity is ignored, not trusted
        ({"requests": {"cpu": "lots"}}, sizes("10m", "10m")),
    ],
    ids=["limit-only", "limit-below-request", "equal", "not-a-quantity"],
)  # fmt: skip
def test_the_init_container_s_resources_are_always_valid(signer, trusted, resources, expected):
    def sized(spec):
        spec["containers"][0]["resources"] = resources

    _, pod = created(sized, signer=signer, trusted=trusted)
    assert pod["spec"]["initContainers"][0]["resources"] == expected


def test_the_first_of_equal_sizes_is_taken_as_written(signer, trusted):
    def two(spec):
        spec["containers"][0]["resources"] = {"requests": {"cpu": "1"}}
        spec["containers"].append(
            {"name": "b", "image": "x", "resources": {"requests": {"cpu": "1000m"}}}
        )

    _, pod = created(two, signer=signer, trusted=trusted)
    assert pod["spec"]["initContainers"][0]["resources"]["requests"]["cpu"] == "1"


def windows_affinity(*expressions: dict, terms: object = None) -> Any:
    def change(spec):
        selector_terms = terms if terms is not None else [{"matchExpressions": list(expressions)}]
        spec["affinity"] = {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": selector_terms
                }
            }
        }

    return change


OS_IN_WINDOWS = {"key": "kubernetes.io/os", "operator": "In", "values": ["windows"]}
WINDOWS_TERM = {"matchExpressions": [OS_IN_WINDOWS]}
LINUX_TERM = {"matchExpressions": [{**OS_IN_WINDOWS, "values": ["linux"]}]}


@pytest.mark.parametrize(
    ("change", "windows"),
    [
        (windows_affinity(OS_IN_WINDOWS), True),
        (windows_affinity({**OS_IN_WINDOWS, "operator": "NotIn"}), False),
        (windows_affinity({**OS_IN_WINDOWS, "key": "kubernetes.io/arch"}), False),
        (windows_affinity({**OS_IN_WINDOWS, "values": ["linux", "windows"]}), False),
        (windows_affinity("not-an-expression"), False),
        (windows_affinity(terms=[]), False),
        (windows_affinity(terms="junk"), False),
        (windows_affinity(terms=["junk"]), False),
        (lambda spec: spec.update(nodeSelector={"kubernetes.io/os": "windows"}), True),
        (lambda spec: spec.update(nodeSelector={"kubernetes.io/os": "linux"}), False),
        # the terms are ORed: a Windows term beside a Linux one may land on Linux
        (windows_affinity(terms=[WINDOWS_TERM, LINUX_TERM]), False),
        (windows_affinity(terms=[LINUX_TERM, WINDOWS_TERM]), False),
        (windows_affinity(terms=[WINDOWS_TERM, {"matchExpressions": []}]), False),
        (windows_affinity(terms=[WINDOWS_TERM, WINDOWS_TERM]), True),
    ],
    ids=[
        "os-in-windows", "not-in", "other-key", "windows-or-linux", "junk-expression",
        "no-terms", "terms-not-a-list", "term-not-an-object", "node-selector", "linux",
        "windows-term-or-linux-term", "linux-term-or-windows-term", "windows-term-or-any-node",
        "two-windows-terms",
    ],
)  # fmt: skip
def test_only_a_pod_that_can_land_only_on_windows_is_left_alone(signer, trusted, change, windows):
    answer, _ = created(change, signer=signer, trusted=trusted)
    expected = "skipped-windows" if windows else "env-volume-added"
    assert answer["auditAnnotations"]["outcome"] == expected
    assert answer["allowed"] is True


def test_a_pod_that_may_land_on_windows_or_linux_gets_the_static_env_and_its_execs_use_it(
    signer, trusted
):
    pod = a_pod_created_after_install(
        signer, trusted, windows_affinity(terms=[WINDOWS_TERM, LINUX_TERM])
    )
    answer, command = exec_into("app", pod_facts(pod), signer, trusted)
    assert answer["auditAnnotations"]["outcome"] == "injected"
    assert command is not None and command[0] == "/.whoexec/env"
