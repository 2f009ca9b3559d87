"""The kustomize manifests render, validate against Kubernetes' schemas, and agree with the
code: webhook name, paths, ports, Secret file names, rules."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from click.testing import CliRunner

from webhook.cli import main
from webhook.keyfiles import IDENTITY_KEY, IDENTITY_PREVIOUS_PUB, IDENTITY_PUB, TLS_CERT, TLS_KEY
from webhook.settings import Settings

ROOT = Path(__file__).parent.parent
#: kubectl on PATH, else the one e2e/cluster built (.ci/run builds it before the tests)
_BUILT = Path(os.environ.get("WHOEXEC_E2E_CACHE", "/var/cache/whoexec-e2e")) / "bin" / "kubectl"
KUBECTL = shutil.which("kubectl") or (str(_BUILT) if _BUILT.exists() else None)
OVERLAYS = ["self-signed", "cert-manager", "fail-closed", "postgres"]
pytestmark = pytest.mark.skipif(
    KUBECTL is None, reason="kubectl is not installed: cannot render the kustomize manifests"
)


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """A copy of manifests/ with the self-signed overlay's certs/ generated, as a user would."""
    copy = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(ROOT / "manifests", copy)
    certs = copy / "overlays" / "self-signed" / "certs"
    shutil.rmtree(certs, ignore_errors=True)
    result = CliRunner().invoke(main, ["certs", "--out", str(certs)])
    assert result.exit_code == 0, result.output
    return copy


def render(tree: Path, overlay: str) -> list[dict[str, Any]]:
    out = subprocess.run(
        [KUBECTL, "kustomize", str(tree / "overlays" / overlay)],  # type: ignore[list-item]
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]
    assert len(found) == 1, (kind, name, [o["metadata"]["name"] for o in found])
    return found[0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_validates_against_the_kubernetes_schema(tree, overlay):
    objects = render(tree, overlay)
    version = kubernetes_validate.latest_version()
    for obj in objects:
        if obj["apiVersion"].startswith("cert-manager.io/"):
            # a CRD: not in Kubernetes' schemas; check what cert-manager requires
            assert obj["kind"] in ("Issuer", "Certificate")
            if obj["kind"] == "Certificate":
                assert {"secretName", "issuerRef", "dnsNames"} <= set(obj["spec"])
            continue
        kubernetes_validate.validate(obj, version, strict=True)


def test_webhook_configuration_matches_what_the_webhook_serves(tree):
    objects = render(tree, "self-signed")
    hook, pods_hook = one(objects, "MutatingWebhookConfiguration", "whoexec")["webhooks"]
    assert hook["name"] == Settings().webhook_name == "exec.whoexec.io"
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] <= 5
    rules = {
        (op, res)
        for rule in hook["rules"]
        for op in rule["operations"]
        for res in rule["resources"]
    }
    assert rules == {
        ("CONNECT", "pods/exec"),
        ("CONNECT", "pods/attach"),
        ("UPDATE", "pods/ephemeralcontainers"),
    }
    service_ref = hook["clientConfig"]["service"]
    assert (service_ref["name"], service_ref["namespace"]) == ("whoexec", "whoexec")
    assert service_ref["path"] == "/mutate"  # served: test_served_routes_are_the_ones...
    excluded = hook["namespaceSelector"]["matchExpressions"][0]
    assert excluded == {
        "key": "kubernetes.io/metadata.name",
        "operator": "NotIn",
        "values": ["whoexec"],
    }
    assert [c["name"] for c in hook["matchConditions"]] == [
        "not-an-excluded-user",
        "not-an-excluded-group",
    ]
    ca = (tree / "overlays" / "self-signed" / "certs" / "ca.crt").read_bytes()
    for webhook in (hook, pods_hook):
        assert base64.b64decode("".join(webhook["clientConfig"]["caBundle"].split())) == ca
    # the pod CREATE mutation: a second webhook, on the same endpoint, always fail-open
    assert pods_hook["name"] == "pods.whoexec.io"
    assert pods_hook["clientConfig"]["service"] == service_ref
    assert [(r["operations"], r["resources"]) for r in pods_hook["rules"]] == [
        (["CREATE"], ["pods"])
    ]
    assert pods_hook["failurePolicy"] == "Ignore"


def test_served_routes_are_the_ones_the_manifests_use(signer, trusted):
    from webhook.admission.decide import AdmissionPolicy
    from webhook.admission.server import WebhookState, create_app

    app = create_app(
        WebhookState(AdmissionPolicy(env_trusted_namespaces=("*",)), signer, trusted, 1024)
    )
    routes = {rule.rule for rule in app.url_map.iter_rules()}
    assert {"/mutate", "/healthz", "/readyz", "/metrics"} <= routes


def test_webhook_deployment_is_hardened_and_reads_the_files_serve_expects(tree):
    objects = render(tree, "self-signed")
    deployment = one(objects, "Deployment", "whoexec-webhook")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert deployment["spec"]["replicas"] >= 2
    assert spec["topologySpreadConstraints"][0]["topologyKey"] == "kubernetes.io/hostname"
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert "limits" in container["resources"] and "requests" in container["resources"]
    assert container["args"][:3] == ["serve", "--certs", "/etc/whoexec"]
    assert "0.0.0.0:8443" in container["args"]
    assert container["ports"][0]["containerPort"] == 8443
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    (keys,) = [v for v in spec["volumes"] if v["name"] == "keys"]
    paths = {
        item["path"] for src in keys["projected"]["sources"] for item in src["secret"]["items"]
    }
    assert paths == {TLS_CERT, TLS_KEY, IDENTITY_KEY, IDENTITY_PUB, IDENTITY_PREVIOUS_PUB}
    # the key before the last rotation is optional: a Secret made by hand without it
    # (the cert-manager overlay's) must not keep the webhook from starting
    (previous,) = [s for s in keys["projected"]["sources"] if s["secret"].get("optional")]
    assert [i["path"] for i in previous["secret"]["items"]] == [IDENTITY_PREVIOUS_PUB]
    secrets = {o["metadata"]["name"].rsplit("-", 1)[0]: o for o in objects if o["kind"] == "Secret"}
    assert set(secrets["whoexec-tls"]["data"]) == {TLS_CERT, TLS_KEY}
    assert set(secrets["whoexec-identity"]["data"]) == {
        IDENTITY_KEY,
        IDENTITY_PUB,
        IDENTITY_PREVIOUS_PUB,
    }
    service = one(objects, "Service", "whoexec")
    assert service["spec"]["ports"][0]["port"] == 443
    assert service["spec"]["ports"][0]["targetPort"] == "https"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1


def test_consumer_daemonset_walks_proc_read_only_and_listens_where_falco_posts(tree):
    objects = render(tree, "self-signed")
    spec = one(objects, "DaemonSet", "whoexec-consumer")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["hostPID"] is True
    (proc_mount,) = [m for m in container["volumeMounts"] if m["name"] == "proc"]
    assert proc_mount["readOnly"] is True
    args = container["args"]
    assert args[args.index("--procfs") + 1] == proc_mount["mountPath"]
    listen = args[args.index("--listen") + 1]
    service = one(objects, "Service", "whoexec-consumer")
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    falco = yaml.safe_load((ROOT / "manifests" / "falco" / "values.yaml").read_text())
    url = falco["falco"]["http_output"]["url"]
    assert url == f"http://whoexec-consumer.whoexec.svc.cluster.local:{listen.split(':')[1]}/falco"
    assert service["spec"]["ports"][0]["port"] == int(listen.split(":")[1])
    (pub,) = [v for v in spec["volumes"] if v["name"] == "identity-pub"]
    configmap = one(objects, "ConfigMap")
    assert configmap["metadata"]["name"] == pub["configMap"]["name"]
    # the consumer trusts every *.pub in it: the current key and the one before
    assert set(configmap["data"]) == {IDENTITY_PUB, IDENTITY_PREVIOUS_PUB}


def test_network_policies_admit_only_the_api_server_port_and_falco(tree):
    import ipaddress

    objects = render(tree, "self-signed")
    webhook = one(objects, "NetworkPolicy", "whoexec-webhook")["spec"]["ingress"]
    assert [p["port"] for rule in webhook for p in rule["ports"]] == [8443]
    sources = [source for rule in webhook for source in rule["from"]]
    assert all(set(source) == {"ipBlock"} for source in sources), "no pod is selected"
    for source in sources:
        # the operator sets the API server's address; shipped is a documentation address
        # (RFC 5737) that admits nothing: 10.0.0.0/8 held the pod network of many clusters
        shipped = ipaddress.ip_network(source["ipBlock"]["cidr"])
        assert shipped.subnet_of(ipaddress.ip_network("192.0.2.0/24"))
    consumer = one(objects, "NetworkPolicy", "whoexec-consumer")["spec"]["ingress"]
    (rule,) = consumer
    assert [p["port"] for p in rule["ports"]] == [2802]
    assert [set(source) for source in rule["from"]] == [{"namespaceSelector", "podSelector"}] * 2
    assert {
        (
            source["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            source["podSelector"]["matchLabels"]["app.kubernetes.io/name"],
        )
        for source in rule["from"]
    } == {("falco", "falco"), ("falco", "falcosidekick")}


def test_the_consumer_api_token_comes_from_a_secret_that_may_not_exist_yet(tree):
    objects = render(tree, "self-signed")
    spec = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = Path(env["WHOEXEC_API_TOKEN_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
    assert mount["readOnly"] is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    # optional: without the Secret, Falco's intake starts all the same
    assert volume["secret"]["optional"] is True
    secret = one(objects, "Secret", volume["secret"]["secretName"])
    assert set(secret["data"]) == {path.name}
    written = (tree / "overlays" / "self-signed" / "certs" / "api-token").read_bytes()
    assert base64.b64decode(secret["data"][path.name]) == written
    assert len(written.strip()) == 64, "whoexec certs wrote 32 random bytes, hex"


def test_least_privilege_only_the_webhook_reads_pods(tree):
    objects = render(tree, "self-signed")
    (role,) = [o for o in objects if o["kind"] in ("Role", "ClusterRole")]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    (binding,) = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "whoexec-webhook", "namespace": "whoexec"}
    ]
    webhook = one(objects, "Deployment")["spec"]["template"]["spec"]
    consumer = one(objects, "DaemonSet")["spec"]["template"]["spec"]
    assert webhook["automountServiceAccountToken"] is True
    assert "--kube" in webhook["containers"][0]["args"]
    assert consumer["automountServiceAccountToken"] is False


def test_static_env_init_container_runs_the_deployed_image(tree):
    spec = one(render(tree, "self-signed"), "Deployment")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WHOEXEC_STATIC_ENV_IMAGE"] == container["image"]
    assert container["image"] == "ghcr.io/whoexec/whoexec:0.1.0"


def test_overlays_change_what_they_say(tree):
    closed = one(render(tree, "fail-closed"), "MutatingWebhookConfiguration")
    assert [w["failurePolicy"] for w in closed["webhooks"]] == ["Fail", "Ignore"]
    managed = render(tree, "cert-manager")
    hook = one(managed, "MutatingWebhookConfiguration")
    assert (
        hook["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == "whoexec/whoexec-tls"
    )
    certificate = one(managed, "Certificate")
    assert certificate["spec"]["secretName"] == "whoexec-tls"
    assert "whoexec.whoexec.svc" in certificate["spec"]["dnsNames"]
    shared = one(render(tree, "postgres"), "DaemonSet")
    env = {e["name"]: e for e in shared["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["WHOEXEC_DB"]["valueFrom"]["secretKeyRef"] == {"name": "whoexec-db", "key": "url"}
    assert env["WHOEXEC_NODE_NAME"]["valueFrom"]["fieldRef"] == {"fieldPath": "spec.nodeName"}


def test_the_ui_runs_unprivileged_on_loopback_over_the_shared_store(tree):
    from webhook.settings import ui_exposure_problem

    objects = render(tree, "postgres")
    deployment = one(objects, "Deployment", "whoexec-ui")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    args = container["args"]
    assert args[0] == "ui"
    bind = args[args.index("--bind") + 1]
    env = {e["name"]: e for e in container["env"]}
    assert "WHOEXEC_UI_TOKEN" not in env
    assert ui_exposure_problem(bind, "") is None, "port-forward only, or a token"
    assert env["WHOEXEC_DB"]["valueFrom"]["secretKeyRef"] == {"name": "whoexec-db", "key": "url"}
    # nothing routes to it, and no policy admits anything
    ui_labels = deployment["spec"]["selector"]["matchLabels"]
    assert not [
        s for s in objects if s["kind"] == "Service" and s["spec"].get("selector") == ui_labels
    ]
    policy = one(objects, "NetworkPolicy", "whoexec-ui")["spec"]
    assert policy["podSelector"]["matchLabels"] == ui_labels
    assert policy["policyTypes"] == ["Ingress"] and "ingress" not in policy
    bindings = [o for o in objects if o["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert all(s["name"] != spec["serviceAccountName"] for b in bindings for s in b["subjects"])
