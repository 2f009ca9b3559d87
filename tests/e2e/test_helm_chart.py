"""The Helm chart (manifests/chart) beside the kustomize overlays: `helm lint`, its values
schema, and no drift. Helm is built from its Go module, pinned in e2e/go.mod, by
``e2e/cluster build``; the kustomize overlays are rendered by the same kubectl's
``kustomize``. Nothing here needs the cluster to run."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .harness import BIN, CLUSTER, MANIFESTS, WHOEXEC

pytestmark = pytest.mark.e2e

CHART = MANIFESTS / "chart"
#: what only kustomize makes: the namespace (Helm installs into one it does not own:
#: ``--create-namespace``, labelled as NOTES.txt says) and the Secret that only carries
#: the CA to the caBundle through a kustomize replacement (the chart writes it directly)
KUSTOMIZE_ONLY = {("Namespace", "whoexec"), ("Secret", "whoexec-ca")}
#: the labels Helm's own conventions add to every object
HELM_LABELS = {"app.kubernetes.io/managed-by", "helm.sh/chart"}
GENERATED = ["whoexec-tls", "whoexec-identity", "whoexec-api-token", "whoexec-ca"]
GENERATED += ["whoexec-identity-pub"]


@pytest.fixture(scope="module")
def tools(tmp_path_factory) -> Path:
    """helm and kubectl from e2e/go.mod (cached: nothing to do once built)."""
    done = subprocess.run(
        [str(CLUSTER), "build", str(tmp_path_factory.mktemp("build"))],
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return BIN


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    """The self-signed overlay's certs, as an operator makes them (README, step 1)."""
    tree = tmp_path_factory.mktemp("tree") / "manifests"
    shutil.copytree(MANIFESTS, tree)
    out = tree / "overlays" / "self-signed" / "certs"
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(
        [
            str(WHOEXEC),
            "certs",
            "--service",
            "whoexec",
            "--namespace",
            "whoexec",
            "--out",
            str(out),
        ],
        check=True,
        capture_output=True,
    )
    return out


def helm(tools: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(tools / "helm"), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check:
        assert done.returncode == 0, f"helm {' '.join(args)}: {done.stderr}"
    return done


def self_signed_values(certs: Path) -> list[str]:
    """The chart's values that match the self-signed overlay: the same files."""
    files = {
        "tls.crt": "tls.crt",
        "tls.key": "tls.key",
        "tls.ca": "ca.crt",
        "identity.key": "identity.key",
        "identity.pub": "identity.pub",
        "identity.previousPub": "identity.previous.pub",
        "apiToken": "api-token",
    }
    return [arg for key, name in files.items() for arg in ("--set-file", f"{key}={certs / name}")]


#: each overlay, and the chart's values for the same settings
SETTINGS: dict[str, list[str]] = {
    "self-signed": [],
    "fail-closed": ["--set", "webhook.failurePolicy=Fail"],
    "postgres": ["--set", "postgres.enabled=true"],
    "cert-manager": ["--set", "tls.mode=cert-manager"],
}


def objects(rendered: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(rendered) if doc]


def by_identity(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    for obj in items:
        if obj["kind"] == "Secret":
            # kustomize folds its base64 into lines: the content is what must be the same
            obj["data"] = {k: base64.b64decode(v) for k, v in obj.get("data", {}).items()}
        if obj["kind"] == "MutatingWebhookConfiguration":
            for hook in obj["webhooks"]:  # kustomize's is that folded base64 (Go skips \n)
                hook["clientConfig"]["caBundle"] = "".join(hook["clientConfig"]["caBundle"].split())
    keyed = {(o["kind"], o["metadata"]["name"]): o for o in items}
    assert len(keyed) == len(items), "two objects of one kind and name"
    return keyed


def kustomize(tools: Path, certs: Path, overlay: str) -> dict[tuple[str, str], dict[str, Any]]:
    tree = certs.parent.parent
    rendered = subprocess.run(
        [str(tools / "kubectl"), "kustomize", str(tree / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # generated Secrets and ConfigMaps get a hash of their content in their name, and so
    # do the references to them: the chart's names are the plain ones
    hashed = re.compile(rf"\b((?:{'|'.join(GENERATED)})-[a-z0-9]{{10}})\b")
    for name in set(hashed.findall(rendered)):
        rendered = re.sub(rf"\b{re.escape(name)}\b", name[:-11], rendered)
    keyed = by_identity(objects(rendered))
    for key in KUSTOMIZE_ONLY:
        keyed.pop(key, None)
    return keyed


def chart(tools: Path, *values: str) -> dict[tuple[str, str], dict[str, Any]]:
    rendered = helm(tools, "template", "whoexec", str(CHART), "-n", "whoexec", *values).stdout
    keyed = by_identity(objects(rendered))
    for obj in keyed.values():
        labels = obj["metadata"].get("labels", {})
        for label in HELM_LABELS:
            labels.pop(label)
    return keyed


def differences(helm_side: Any, kustomize_side: Any, path: str = "") -> list[str]:
    """Where two rendered objects differ, as paths, to read in a failure."""
    if isinstance(helm_side, dict) and isinstance(kustomize_side, dict):
        return [
            line
            for key in sorted(set(helm_side) | set(kustomize_side), key=str)
            for line in differences(
                helm_side.get(key, "<absent>"), kustomize_side.get(key, "<absent>"), f"{path}.{key}"
            )
        ]
    if (
        isinstance(helm_side, list)
        and isinstance(kustomize_side, list)
        and len(helm_side) == len(kustomize_side)
    ):
        return [
            line
            for i, (h, k) in enumerate(zip(helm_side, kustomize_side, strict=True))
            for line in differences(h, k, f"{path}[{i}]")
        ]
    if helm_side == kustomize_side:
        return []
    return [f"{path}: chart {helm_side!r:.200} != kustomize {kustomize_side!r:.200}"]


def values_for(overlay: str, certs: Path) -> list[str]:
    if overlay == "cert-manager":
        return SETTINGS[overlay]
    return self_signed_values(certs) + SETTINGS[overlay]


@pytest.mark.parametrize("overlay", list(SETTINGS))
def test_the_chart_renders_the_objects_of_the_overlay_with_the_same_settings(tools, certs, overlay):
    from_kustomize = kustomize(tools, certs, overlay)
    from_helm = chart(tools, *values_for(overlay, certs))
    assert sorted(from_helm) == sorted(from_kustomize)
    drifted = [
        f"{kind}/{name}{line}"
        for (kind, name), obj in sorted(from_kustomize.items())
        for line in differences(from_helm[kind, name], obj)
    ]
    assert drifted == []


def test_the_chart_follows_the_image_it_is_given_into_the_static_env_s_init_container(tools, certs):
    rendered = chart(
        tools,
        *self_signed_values(certs),
        "--set",
        "image.repository=registry.example/whoexec",
        "--set",
        "image.tag=9.9.9",
    )
    webhook = rendered[("Deployment", "whoexec-webhook")]["spec"]["template"]["spec"]
    (container,) = webhook["containers"]
    assert container["image"] == "registry.example/whoexec:9.9.9"
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["WHOEXEC_STATIC_ENV_IMAGE"] == "registry.example/whoexec:9.9.9"
    consumer = rendered[("DaemonSet", "whoexec-consumer")]["spec"]["template"]["spec"]
    assert consumer["containers"][0]["image"] == "registry.example/whoexec:9.9.9"


@pytest.mark.parametrize("overlay", list(SETTINGS))
def test_helm_lint_passes_for_the_settings_of_every_overlay(tools, certs, overlay):
    done = helm(tools, "lint", "--strict", str(CHART), "-n", "whoexec", *values_for(overlay, certs))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout


def test_a_self_signed_install_without_its_certificates_names_the_command_that_makes_them(
    tools,
):
    done = helm(tools, "template", "whoexec", str(CHART), check=False)
    assert done.returncode != 0
    assert "tls.crt" in done.stderr
    assert "whoexec certs" in done.stderr


@pytest.mark.parametrize(
    ("setting", "named"),
    [
        ("webhook.failurePolicy=Sometimes", "failurePolicy"),
        ("tls.mode=letsencrypt", "mode"),
        ("webhook.replicas=0", "replicas"),
        ("webhook.controlPlaneCIDR=everyone", "controlPlaneCIDR"),
        ("postgres.enabled=yes-please", "enabled"),
        ("webhok.replicas=2", "webhok"),
    ],
)
def test_the_values_schema_refuses_a_wrong_setting_and_names_it(tools, certs, setting, named):
    done = helm(
        tools,
        "template",
        "whoexec",
        str(CHART),
        *self_signed_values(certs),
        "--set-string" if "yes-please" in setting else "--set",
        setting,
        check=False,
    )
    assert done.returncode != 0
    assert "values don't meet the specifications of the schema" in done.stderr
    assert named in done.stderr


def test_a_private_key_is_refused_where_the_certificate_goes(tools, certs):
    values = self_signed_values(certs)
    values[values.index(f"tls.crt={certs / 'tls.crt'}")] = f"tls.crt={certs / 'tls.key'}"
    done = helm(tools, "template", "whoexec", str(CHART), *values, check=False)
    assert done.returncode != 0
    assert "crt" in done.stderr


def test_the_notes_tell_the_operator_what_is_left_to_do(tools, certs):
    done = helm(
        tools,
        "install",
        "whoexec",
        str(CHART),
        "-n",
        "whoexec",
        "--dry-run=client",
        "--set",
        "tls.mode=cert-manager",
    )
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "pod-security.kubernetes.io/enforce=privileged" in notes
    assert "create secret generic whoexec-identity" in notes
    assert "192.0.2.1/32" in notes
    assert "rollout status deploy/whoexec-webhook" in notes
    done = helm(
        tools,
        "install",
        "whoexec",
        str(CHART),
        "-n",
        "whoexec",
        "--dry-run=client",
        *self_signed_values(certs),
        "--set",
        "webhook.controlPlaneCIDR=10.1.2.3/32",
    )
    notes = done.stdout.split("NOTES:", 1)[1]
    assert "whoexec-identity" not in notes
    assert "192.0.2.1" not in notes
