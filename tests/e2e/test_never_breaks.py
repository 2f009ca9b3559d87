"""whoexec never breaks an exec or a pod creation that would have worked without it."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from webhook.identity import verify_token
from webhook.keyfiles import load_key_ring

from .conftest import Cluster, Webhook
from .harness import eventually

pytestmark = pytest.mark.e2e

SHOW = ["/bin/sh", "-c", 'echo "ok [$WHOEXEC_IDENTITY]"']


@pytest.fixture(scope="module")
def bob(cluster: Cluster) -> object:
    return cluster.user("bob", "devs")


def identity_in(output: bytes, webhook: Webhook):
    text = output.decode().strip()
    assert text.startswith("ok ["), text
    token = text[len("ok [") : -1]
    if not token:
        return None
    return verify_token(token, load_key_ring([webhook.identity_pub]), now=int(time.time()))


@pytest.mark.parametrize("pod", ["old-debian", "old-distroless"])
def test_exec_into_a_pod_created_before_install_still_works(cluster, webhook, bob, pod):
    done = cluster.kubectl("exec", "-n", "legacy", pod, "--", *SHOW, user=bob)
    assert identity_in(done.stdout, webhook) is None, "skipped: no env known to exist there"


def test_a_new_distroless_pod_execs_through_the_static_env(cluster, webhook, bob):
    cluster.kubectl("create", "namespace", "apps", check=False)
    cluster.pod("apps", "distroless-1", cluster.images["without-env"])
    done = cluster.kubectl("exec", "-n", "apps", "distroless-1", "--", *SHOW, user=bob)
    identity = identity_in(done.stdout, webhook)
    assert identity is not None and identity.user == "bob"


def test_exec_into_a_native_sidecar_and_the_main_container(cluster, webhook, bob):
    cluster.kubectl("create", "namespace", "mesh", check=False)
    sidecar = {
        "name": "proxy",
        "image": cluster.images["without-env"],
        "imagePullPolicy": "Never",
        "restartPolicy": "Always",
        "command": ["/bin/sh", "-c", "sleep 100000"],
    }
    cluster.pod("mesh", "meshed-0", cluster.images["with-env"], initContainers=[sidecar])
    for container in ("proxy", "app"):
        done = cluster.kubectl(
            "exec", "-n", "mesh", "meshed-0", "-c", container, "--", *SHOW, user=bob
        )
        identity = identity_in(done.stdout, webhook)
        assert identity is not None and identity.container == container


def test_kube_system_pods_are_left_alone_and_exec_works(cluster, webhook):
    pod = cluster.pod("kube-system", "etcd-like", cluster.images["without-env"])
    names = [c["name"] for c in pod["spec"].get("initContainers", [])]
    assert "whoexec-env" not in names
    done = cluster.kubectl("exec", "-n", "kube-system", "etcd-like", "--", *SHOW)
    assert done.stdout.decode().strip() == "ok []"


def test_kubectl_debug_carries_the_identity(cluster, webhook, bob):
    cluster.kubectl("create", "namespace", "dbg", check=False)
    cluster.pod("dbg", "web-0", cluster.images["with-env"])
    cluster.kubectl(
        "debug",
        "-n",
        "dbg",
        "web-0",
        "--image",
        cluster.images["with-env"],
        "--image-pull-policy",
        "Never",
        "-c",
        "debugger",
        "--attach=false",
        "--",
        "/bin/sh",
        "-c",
        'echo "ok [$WHOEXEC_IDENTITY]"; sleep 100000',
        user=bob,
    )

    def logged() -> bytes:
        logs = cluster.kubectl("logs", "-n", "dbg", "web-0", "-c", "debugger", check=False)
        return logs.stdout if logs.returncode == 0 else b""

    identity = identity_in(eventually(logged, 60, "the debug container's output"), webhook)
    assert identity is not None
    assert (identity.user, identity.container) == ("bob", "debugger")


# --- pod creation: every shape that worked before still does -------------------------------


def namespace_with(cluster: Cluster, name: str, *objects: dict, labels: dict | None = None):
    cluster.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels or {}},
            },
            *({**o, "metadata": {**o["metadata"], "namespace": name}} for o in objects),
        ]
    )


def pod_body(namespace: str, image: str, **spec) -> dict:
    container = {
        "name": spec.pop("container_name", "app"),
        "image": image,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", "sleep 100000"],
        **spec.pop("container", {}),
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "shape", "namespace": namespace},
        "spec": {"containers": [container], **spec},
    }


RESTRICTED = {
    "securityContext": {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
}


def admitted(cluster: Cluster, body: dict) -> dict:
    """Server-side dry run: every admission plugin, our webhooks, validation, quota."""
    done = cluster.kubectl(
        "create", "--dry-run=server", "-o", "json", "-f", "-", stdin=json.dumps(body), check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    return json.loads(done.stdout)


def init_names(pod: dict) -> list[str]:
    return [c["name"] for c in pod["spec"].get("initContainers", [])]


def pod_shape(cluster: Cluster, namespace: str, which: str) -> tuple[dict[str, Any], list[str]]:
    """A namespace set up for one pod shape that worked before whoexec, the pod, and the
    init containers it must come out with (here through the host's webhook, in
    test_installed.py through the in-cluster one)."""
    image = cluster.images["with-env"]
    if which == "windows":
        namespace_with(cluster, namespace)
        body = pod_body(namespace, "mcr.microsoft.com/windows/nanoserver:ltsc2022")
        body["spec"]["os"] = {"name": "windows"}
        body["spec"]["containers"][0].pop("command")
        return body, []
    if which == "quota":
        quota = {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": {"name": "limits"},
            "spec": {"hard": {"limits.cpu": "2", "limits.memory": "1Gi"}},
        }
        namespace_with(cluster, namespace, quota)
        limits = {"resources": {"limits": {"cpu": "200m", "memory": "64Mi"}}}
        return pod_body(namespace, image, container=limits), ["whoexec-env"]
    if which == "limitrange":
        limit_range = {
            "apiVersion": "v1",
            "kind": "LimitRange",
            "metadata": {"name": "min"},
            "spec": {
                "limits": [
                    {
                        "type": "Container",
                        "min": {"cpu": "100m", "memory": "32Mi"},
                        "default": {"cpu": "200m", "memory": "64Mi"},
                        "defaultRequest": {"cpu": "150m", "memory": "48Mi"},
                    }
                ]
            },
        }
        namespace_with(cluster, namespace, limit_range)
        return pod_body(namespace, image), ["whoexec-env"]
    if which == "our-name":
        namespace_with(cluster, namespace)
        return pod_body(namespace, image, container_name="whoexec-env"), []
    if which == "init-containers":
        namespace_with(cluster, namespace)
        migrate = {"name": "migrate", "image": image, "command": ["true"]}
        return pod_body(namespace, image, initContainers=[migrate]), ["whoexec-env", "migrate"]
    assert which == "restricted"
    namespace_with(cluster, namespace, labels={"pod-security.kubernetes.io/enforce": "restricted"})
    body = pod_body(
        namespace,
        cluster.images["without-env"],
        container=RESTRICTED,
        securityContext={"seccompProfile": {"type": "RuntimeDefault"}},
    )
    return body, ["whoexec-env"]


def test_a_windows_pod_is_still_admitted_and_left_alone(cluster, webhook):
    body, inits = pod_shape(cluster, "win", "windows")
    assert init_names(admitted(cluster, body)) == inits == []


def test_a_namespace_with_a_quota_on_limits_still_admits_pods(cluster, webhook):
    body, inits = pod_shape(cluster, "quota", "quota")
    assert init_names(admitted(cluster, body)) == inits == ["whoexec-env"]


def test_a_namespace_with_a_limitrange_minimum_still_admits_pods(cluster, webhook):
    body, inits = pod_shape(cluster, "limited", "limitrange")
    assert init_names(admitted(cluster, body)) == inits == ["whoexec-env"]


def test_a_container_named_like_ours_is_admitted_unchanged(cluster, webhook):
    body, inits = pod_shape(cluster, "collide", "our-name")
    assert init_names(admitted(cluster, body)) == inits == []


def test_a_pod_with_init_containers_gets_ours_first(cluster, webhook):
    body, inits = pod_shape(cluster, "inits", "init-containers")
    assert init_names(admitted(cluster, body)) == inits == ["whoexec-env", "migrate"]


def test_a_restricted_namespace_still_runs_pods(cluster, webhook):
    body, inits = pod_shape(cluster, "locked", "restricted")
    assert init_names(admitted(cluster, body)) == inits == ["whoexec-env"]
    cluster.kubectl("create", "-f", "-", stdin=json.dumps(body))
    cluster.kubectl("wait", "-n", "locked", "--for=condition=Ready", "pod/shape", "--timeout=90s")


def test_a_deployments_pods_come_up(cluster, webhook):
    namespace_with(cluster, "deploy")
    template = pod_body("deploy", cluster.images["with-env"], hostNetwork=True)
    template["metadata"] = {"labels": {"app": "web"}}
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "deploy"},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": template["metadata"], "spec": template["spec"]},
        },
    }
    cluster.apply(deployment)
    cluster.kubectl(
        "rollout", "status", "-n", "deploy", "deployment/web", "--timeout=120s", timeout=130
    )
    pods = cluster.get("-n", "deploy", "pods")["items"]
    assert len(pods) == 2
    assert all(init_names(p) == ["whoexec-env"] for p in pods)
