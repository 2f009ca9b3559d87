"""whoexec installed as an operator installs it (README, "Deploying to a cluster"): the
image built from the Dockerfile, `kubectl apply -k manifests/overlays/self-signed`, the
webhook as a Deployment behind its Service (the apiserver calls it through the Service's
endpoints), the consumer as a DaemonSet. These tests run after every other e2e test
(conftest.py orders them last): installing replaces the MutatingWebhookConfiguration that
points at the webhook the other tests run on the host."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pgserver import TcpAccess
from webhook.identity import verify_token
from webhook.keyfiles import load_key_ring

from .conftest import Cluster, Webhook, token_from_environ
from .harness import BIN, MANIFESTS, WHOEXEC, eventually, wait_for_webhook

pytestmark = [pytest.mark.e2e, pytest.mark.installed]

WEBHOOK = ["-l", "app.kubernetes.io/component=webhook"]
#: the pod network's gateway: the node, as pods see it (e2e/cluster)
GATEWAY = "10.244.0.1"
SHOW = ["/bin/sh", "-c", 'echo "ok [$WHOEXEC_IDENTITY]"']


class Install:
    """A copy of the repository's manifests/, worked in as the README says."""

    def __init__(self, cluster: Cluster, where: Path) -> None:
        self.cluster = cluster
        self.where = where
        self.certs = where / "manifests" / "overlays" / "self-signed" / "certs"

    def run(self, command: str, timeout: float = 300) -> str:
        """A command of the README, as written there (kubectl and whoexec on the PATH)."""
        env = {
            "PATH": f"{BIN}:{WHOEXEC.parent}:/usr/bin:/bin",
            "KUBECONFIG": str(self.cluster.admin),
            "HOME": str(self.where),
        }
        done = subprocess.run(
            shlex.split(command),
            cwd=self.where,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        assert done.returncode == 0, f"{command}: {done.stderr[-3000:]}"
        return done.stdout

    def identity_ring(self):  # type: ignore[no-untyped-def]
        return load_key_ring([self.certs / "identity.pub"])

    def pods(self, *selector: str) -> list[dict[str, Any]]:
        return self.cluster.get("-n", "whoexec", "pods", *selector)["items"]  # type: ignore[no-any-return]


def readme_commands() -> list[str]:
    """The deploy guide's commands that install the self-signed overlay."""
    readme = (MANIFESTS.parent / "README.md").read_text()
    guide = readme.split("## Deploying to a cluster", 1)[1].split("\n## ", 1)[0]
    commands = [
        "whoexec certs --service whoexec --namespace whoexec --out "
        "manifests/overlays/self-signed/certs",
        "kubectl apply -k manifests/overlays/self-signed",
    ]
    flat = " ".join(guide.split())
    for command in commands:
        assert command in flat, f"the README no longer says {command!r}"
    return commands


@pytest.fixture(scope="module")
def installed(cluster: Cluster, webhook: Webhook, tmp_path_factory) -> Install:
    where = tmp_path_factory.mktemp("operator")
    subprocess.run(["cp", "-r", str(MANIFESTS), str(where / "manifests")], check=True)
    subprocess.run(["rm", "-rf", str(where / "manifests/overlays/self-signed/certs")], check=True)
    install = Install(cluster, where)
    # the host's webhook steps aside: this one takes its configuration's name
    webhook.stop()
    for command in readme_commands():
        install.run(command)
    rolled_out(install)
    wait_until_the_webhook_is_called(cluster)
    return install


def rolled_out(install: Install) -> None:
    """Until the webhook and the consumer are Ready; if never, why not."""
    try:
        install.run("kubectl -n whoexec rollout status deploy/whoexec-webhook --timeout 240s", 260)
        install.run("kubectl -n whoexec rollout status ds/whoexec-consumer --timeout 240s", 260)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{why_not_ready(install)}") from None


def why_not_ready(install: Install) -> str:
    """Each pod's container states, last termination, events and logs (this and the
    previous container): what a reader of a failed CI run needs to see."""
    said = []
    for pod in install.pods():
        name = pod["metadata"]["name"]
        said.append(
            f"--- pod {name} on {pod['spec'].get('nodeName')}: {pod['status'].get('phase')}"
        )
        for status in pod["status"].get("containerStatuses", []):
            said.append(
                f"{status['name']}: ready={status.get('ready')} "
                f"restarts={status.get('restartCount')} state={json.dumps(status.get('state'))} "
                f"last={json.dumps(status.get('lastState'))}"
            )
        events = install.cluster.kubectl(
            "get",
            "events",
            "-n",
            "whoexec",
            "--field-selector",
            f"involvedObject.name={name}",
            "-o",
            "custom-columns=AT:.lastTimestamp,N:.count,REASON:.reason,MESSAGE:.message",
            check=False,
        )
        said.append(events.stdout.decode(errors="replace")[-2000:])
        for which in ("--previous", "--tail=40"):
            logs = install.cluster.kubectl(
                "logs", "-n", "whoexec", name, "--all-containers", which, check=False
            )
            if logs.returncode == 0:
                said.append(f"logs {which}:\n" + logs.stdout.decode(errors="replace")[-3000:])
    return "\n".join(said)


def wait_until_the_webhook_is_called(cluster: Cluster) -> None:
    cluster.kubectl("create", "namespace", "installed", check=False)
    wait_for_webhook(cluster, 60)


@pytest.fixture(scope="module")
def carol(cluster: Cluster) -> Path:
    return cluster.user("carol", "devs")


@pytest.fixture(scope="module")
def shop(cluster: Cluster, installed: Install) -> dict[str, Any]:
    return cluster.pod("installed", "web-0", cluster.images["with-env"], hostNetwork=False)


def identity_in(output: bytes, install: Install):  # type: ignore[no-untyped-def]
    text = output.decode().strip()
    assert text.startswith("ok ["), text
    token = text[len("ok [") : -1]
    if not token:
        return None
    return verify_token(token, install.identity_ring(), now=int(time.time()))


def test_every_pod_is_running_and_ready_with_the_shipped_security_context(installed):
    webhooks = installed.pods(*WEBHOOK)
    consumers = installed.pods("-l", "app.kubernetes.io/component=consumer")
    assert len(webhooks) == 2
    assert len(consumers) == 1  # one node
    for pod in webhooks + consumers:
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert pod["status"]["phase"] == "Running"
        assert ready["Ready"] == "True", pod["metadata"]["name"]
        for status in pod["status"]["containerStatuses"]:
            assert status["restartCount"] == 0, f"{status['name']} restarted"
    (webhook_container,) = webhooks[0]["spec"]["containers"]
    assert webhooks[0]["spec"]["securityContext"]["runAsUser"] == 10001
    assert webhook_container["securityContext"]["readOnlyRootFilesystem"] is True
    assert webhook_container["image"] == installed.cluster.images["whoexec"]
    (consumer,) = consumers[0]["spec"]["containers"]
    assert consumer["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}


def test_the_webhook_runs_as_its_non_root_user_and_reads_its_keys(installed):
    (pod, *_) = installed.pods(*WEBHOOK)
    name = pod["metadata"]["name"]
    done = installed.cluster.kubectl(
        "exec",
        "-n",
        "whoexec",
        name,
        "--",
        "python",
        "-c",
        "import os; print(os.getuid(), os.getgid(), os.access('/etc/whoexec/identity.key', 4))",
    )
    assert done.stdout.decode().split() == ["10001", "10001", "True"]


def test_exec_as_carol_through_the_in_cluster_webhook_verifies_and_binds_the_pod(
    cluster, installed, shop, carol
):
    done = cluster.kubectl(
        "exec", "-n", "installed", "web-0", "--", "cat", "/proc/self/environ", user=carol
    )
    token = token_from_environ(done.stdout)
    identity = verify_token(token, installed.identity_ring(), now=int(time.time()))
    assert identity.user == "carol"
    assert (identity.namespace, identity.pod, identity.container) == ("installed", "web-0", "app")
    # the webhook pod's cache, fed by its in-cluster client through the kubernetes Service
    assert identity.pod_uid == shop["metadata"]["uid"]


def test_the_static_env_comes_from_the_real_image_and_a_distroless_pod_execs(
    cluster, installed, carol
):
    pod = cluster.pod("installed", "distroless-0", cluster.images["without-env"], hostNetwork=False)
    (init,) = [c for c in pod["spec"]["initContainers"] if c["name"] == "whoexec-env"]
    assert init["image"] == cluster.images["whoexec"]
    done = cluster.kubectl("exec", "-n", "installed", "distroless-0", "--", *SHOW, user=carol)
    identity = identity_in(done.stdout, installed)
    assert identity is not None and identity.user == "carol"


def test_exec_into_a_native_sidecar_and_the_main_container_through_the_in_cluster_webhook(
    cluster, installed, carol
):
    sidecar = {
        "name": "proxy",
        "image": cluster.images["without-env"],
        "imagePullPolicy": "Never",
        "restartPolicy": "Always",
        "command": ["/bin/sh", "-c", "sleep 100000"],
    }
    cluster.pod(
        "installed",
        "meshed-0",
        cluster.images["with-env"],
        hostNetwork=False,
        initContainers=[sidecar],
    )
    for container in ("proxy", "app"):
        done = cluster.kubectl(
            "exec", "-n", "installed", "meshed-0", "-c", container, "--", *SHOW, user=carol
        )
        identity = identity_in(done.stdout, installed)
        assert identity is not None and (identity.user, identity.container) == (
            "carol",
            container,
        )


@pytest.mark.parametrize(
    "which", ["windows", "quota", "limitrange", "our-name", "init-containers", "restricted"]
)
def test_every_pod_shape_the_suite_covers_is_admitted_through_the_in_cluster_webhook(
    cluster, installed, which
):
    from .test_never_breaks import admitted, init_names, pod_shape

    namespace = f"shape-{which}"
    body, expected = pod_shape(cluster, namespace, which)
    assert init_names(admitted(cluster, body)) == expected
    if which == "restricted":  # and it runs: the init container passes the restricted PSS
        cluster.kubectl("create", "-f", "-", stdin=json.dumps(body))
        cluster.kubectl(
            "wait", "-n", namespace, "--for=condition=Ready", "pod/shape", "--timeout=90s"
        )


def test_a_caller_who_sets_the_identity_is_refused_by_the_in_cluster_webhook(
    cluster, installed, shop, carol
):
    done = cluster.kubectl(
        "exec",
        "-n",
        "installed",
        "web-0",
        "--",
        "env",
        "WHOEXEC_IDENTITY=x",
        "true",
        user=carol,
        check=False,
    )
    assert done.returncode != 0
    assert "only the whoexec webhook may set" in done.stderr.decode()


def test_with_every_webhook_pod_gone_exec_still_works_and_the_audit_log_flags_it(
    cluster, installed, shop, carol
):
    installed.run("kubectl -n whoexec scale deploy/whoexec-webhook --replicas 0")
    try:
        eventually(lambda: not installed.pods(*WEBHOOK), 60, "the webhook pods gone")
        done = cluster.kubectl("exec", "-n", "installed", "web-0", "--", *SHOW, user=carol)
        assert identity_in(done.stdout, installed) is None, "ran as asked, without identity"

        def flagged() -> list[dict[str, Any]]:
            events = [json.loads(line) for line in cluster.audit_log.read_text().splitlines()]
            return [
                e
                for e in events
                if e["user"]["username"] == "carol"
                and e["objectRef"].get("subresource") == "exec"
                and any(k.startswith("failed-open.") for k in e.get("annotations", {}))
            ]

        (event, *_) = eventually(flagged, 30, "the audit event of the failed-open exec")
        assert "exec.whoexec.io" in event["annotations"].values()
    finally:
        installed.run("kubectl -n whoexec scale deploy/whoexec-webhook --replicas 2")
        installed.run("kubectl -n whoexec rollout status deploy/whoexec-webhook --timeout 240s")
    done = cluster.kubectl("exec", "-n", "installed", "web-0", "--", *SHOW, user=carol)
    identity = identity_in(done.stdout, installed)
    assert identity is not None and identity.user == "carol", "attributed again"


@pytest.fixture(scope="module")
def falco_pod(cluster: Cluster, installed: Install) -> str:
    """A pod in Falco's namespace (not mutated), on the pod network: it posts alerts to
    the consumer's node-local Service as Falco's http_output does (README, step 4)."""
    cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": "falco", "labels": {"whoexec.io/inject": "false"}},
        }
    )
    poster = cluster.pod(
        "falco",
        "falco-0",
        cluster.images["whoexec"],
        hostNetwork=False,
        command=["sleep", "100000"],
    )
    assert poster["status"]["podIP"].startswith("10.244.0.")
    return "falco-0"


def consumer_verdicts(installed: Install, falco_pod: str, alert: dict[str, Any]) -> dict[str, Any]:
    """Post one Falco-shaped alert from ``falco_pod`` to the consumer's Service, and the
    whoexec.* fields the consumer printed for it."""
    cluster = installed.cluster
    service = cluster.get("-n", "whoexec", "service", "whoexec-consumer")["spec"]["clusterIP"]
    post = (
        "import sys, urllib.request\n"
        f"request = urllib.request.Request('http://{service}:2802/falco', "
        "data=sys.stdin.buffer.read(), headers={'Content-Type': 'application/json'})\n"
        "print(urllib.request.urlopen(request, timeout=10).status)"
    )
    done = cluster.kubectl(
        "exec",
        "-i",
        "-n",
        "falco",
        falco_pod,
        "--",
        "python",
        "-c",
        post,
        stdin=json.dumps(alert),
    )
    assert done.stdout.decode().strip() in {"200", "202", "204"}
    pid = alert["output_fields"]["proc.pid"]

    def printed() -> dict[str, Any] | None:
        logs = installed.run("kubectl -n whoexec logs ds/whoexec-consumer")
        for line in reversed(logs.splitlines()):
            if line.startswith("{"):
                fields: dict[str, Any] = json.loads(line).get("output_fields", {})
                if fields.get("proc.pid") == pid and "whoexec.attribution" in fields:
                    return fields
        return None

    found: dict[str, Any] = eventually(printed, 60, f"the consumer's alert about pid {pid}")
    return found


def test_a_falco_alert_posted_from_a_pod_is_attributed_by_the_consumer_daemonset(
    cluster, installed, shop, carol, falco_pod
):
    """Falco-shaped, from a real exec'd process's /proc facts (Falco itself is not built
    here), posted from a pod labelled as Falco's to the node-local Service; the consumer
    walks the node's /proc from its pod (hostPID, /host/proc) and names the user."""
    from .test_audit_and_chain import falco_alert_for, host_pid_of

    session = exec_in_background(carol, "sleep 41.75; true")
    try:
        pid = host_pid_of(b"sleep\x0041.75\x00")
        verdict = consumer_verdicts(installed, falco_pod, falco_alert_for(pid, shop))
    finally:
        session.kill()
        session.wait()
    assert (verdict["whoexec.attribution"], verdict["whoexec.user.name"]) == ("verified", "carol")
    # README step 7: the enriched alert in the consumer's log, the session in its store
    logs = installed.run("kubectl -n whoexec logs ds/whoexec-consumer")
    assert any("k8s_user=carol" in line for line in logs.splitlines())
    sessions = installed.run(
        "kubectl -n whoexec exec ds/whoexec-consumer -- whoexec sessions --since 1h"
    )
    assert "carol" in sessions


def test_kubectl_debug_through_the_in_cluster_webhook_carries_the_identity(
    cluster, installed, shop, carol
):
    cluster.kubectl(
        "debug",
        "-n",
        "installed",
        "web-0",
        "--image",
        cluster.images["with-env"],
        "--image-pull-policy",
        "Never",
        "--target",
        "app",
        "-c",
        "debugger",
        "--attach=false",
        "--",
        *SHOW[:2],
        f"{SHOW[2]}; sleep 100000",
        user=carol,
    )

    def logged() -> bytes:
        logs = cluster.kubectl("logs", "-n", "installed", "web-0", "-c", "debugger", check=False)
        return logs.stdout if logs.returncode == 0 else b""

    identity = identity_in(eventually(logged, 60, "the debug container's output"), installed)
    assert identity is not None
    assert (identity.user, identity.pod, identity.container) == ("carol", "web-0", "debugger")
    assert identity.pod_uid == shop["metadata"]["uid"]


def test_a_rolling_restart_of_the_webhook_under_a_loop_of_execs_fails_none_and_drops_no_identity(
    cluster, installed, shop, carol
):
    before = {pod["metadata"]["name"] for pod in installed.pods(*WEBHOOK)}
    installed.run("kubectl -n whoexec rollout restart deploy/whoexec-webhook")
    rollout = subprocess.Popen(
        [
            str(BIN / "kubectl"),
            "--kubeconfig",
            str(cluster.admin),
            "-n",
            "whoexec",
            "rollout",
            "status",
            "deploy/whoexec-webhook",
            "--timeout",
            "240s",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    outcomes: list[tuple[int, str | None]] = []
    try:
        while rollout.poll() is None or len(outcomes) < 5:
            done = cluster.kubectl(
                "exec", "-n", "installed", "web-0", "--", *SHOW, user=carol, check=False
            )
            identity = identity_in(done.stdout, installed) if done.returncode == 0 else None
            outcomes.append((done.returncode, identity.user if identity else None))
    finally:
        if rollout.poll() is None:
            rollout.kill()
        rollout.wait()
    assert rollout.returncode == 0, "the rollout finished"
    assert [code for code, _ in outcomes if code != 0] == [], "no exec failed"
    # with failurePolicy Ignore a webhook that cannot be reached lets the exec through
    # unchanged: readiness, the PodDisruptionBudget and the pods' grace must prevent it
    missing = sum(1 for _, user in outcomes if user != "carol")
    assert missing == 0, f"{missing} of {len(outcomes)} execs during the rollout had no identity"

    def replaced() -> bool:  # rollout status returns while the old pods still terminate
        after = {pod["metadata"]["name"] for pod in installed.pods(*WEBHOOK)}
        return len(after) == 2 and not before & after

    eventually(replaced, 120, "every webhook pod replaced")


def readme_rotation_commands() -> list[str]:
    """The deploy guide's "Rotating the identity key", as it is shown."""
    readme = (MANIFESTS.parent / "README.md").read_text()
    section = readme.split("### Rotating the identity key", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [" ".join(line.split()) for line in block.splitlines() if line.strip()]


def exec_in_background(user: Path, script: str) -> subprocess.Popen[bytes]:
    """``kubectl exec`` into web-0 as ``user``, left running."""
    kubectl = [str(BIN / "kubectl"), "--kubeconfig", str(user), "exec", "-n", "installed"]
    return subprocess.Popen(
        [*kubectl, "web-0", "--", "sh", "-c", script],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def test_rotating_the_identity_key_as_the_readme_says_signs_anew_and_old_sessions_still_verify(
    cluster, installed, shop, carol, falco_pod
):
    from webhook.identity import token_key_id

    from .test_audit_and_chain import falco_alert_for, host_pid_of

    old_kid = next(iter(installed.identity_ring()))
    old = exec_in_background(carol, "sleep 43.21; true")
    new = None
    try:
        old_pid = host_pid_of(b"sleep\x0043.21\x00")
        commands = readme_rotation_commands()
        assert commands[0].startswith("whoexec certs --rotate-identity")
        for command in commands:
            installed.run(command)
        rolled_out(installed)
        (new_kid,) = installed.identity_ring()
        assert new_kid != old_kid

        def signed_anew() -> str | None:  # until no webhook pod of before answers
            done = cluster.kubectl("exec", "-n", "installed", "web-0", "--", *SHOW, user=carol)
            token = done.stdout.decode().strip()[len("ok [") : -1]
            return token if token_key_id(token) == new_kid else None

        eventually(signed_anew, 120, "a token signed with the new key")
        new = exec_in_background(carol, "sleep 43.22; true")
        new_pid = host_pid_of(b"sleep\x0043.22\x00")
        before = consumer_verdicts(installed, falco_pod, falco_alert_for(old_pid, shop))
        after = consumer_verdicts(installed, falco_pod, falco_alert_for(new_pid, shop))
    finally:
        for session in (old, new):
            if session is not None:
                session.kill()
                session.wait()
    assert (before["whoexec.attribution"], before["whoexec.user.name"]) == ("verified", "carol")
    assert (after["whoexec.attribution"], after["whoexec.user.name"]) == ("verified", "carol")
    assert before["whoexec.session.id"] != after["whoexec.session.id"]


@pytest.fixture(scope="module")
def postgres_on_the_pod_network() -> Iterator[TcpAccess]:
    """A real PostgreSQL (Debian's) on the node, listening on the pod network's gateway
    for the role whoexec with a password: a database outside the cluster, as the
    postgres overlay expects (db.example in its comment)."""
    import secrets
    import socket

    import psycopg

    from tests.pgserver import throwaway_postgres

    with socket.socket() as probe:  # a free port on the gateway
        probe.bind((GATEWAY, 0))
        port = probe.getsockname()[1]
    tcp = TcpAccess(GATEWAY, port, "10.244.0.0/24", secrets.token_urlsafe(18))
    with throwaway_postgres(tcp) as admin:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE whoexec")
        yield tcp


def overlay_command(overlay: str, starts: str) -> str:
    """A command an overlay's kustomization.yaml tells the operator to run."""
    text = (MANIFESTS / "overlays" / overlay / "kustomization.yaml").read_text()
    lines = [line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("#")]
    (command,) = [line for line in lines if line.startswith(starts)]
    return command


def test_the_postgres_overlay_stores_sessions_in_a_real_postgresql_and_the_ui_shows_them(
    cluster, installed, shop, carol, falco_pod, postgres_on_the_pod_network
):
    import urllib.request

    import psycopg

    from webhook.sessions.store.model import RANK_ATTRIBUTION

    from .test_audit_and_chain import falco_alert_for, host_pid_of

    tcp = postgres_on_the_pod_network
    secret = overlay_command("postgres", "kubectl -n whoexec create secret generic whoexec-db")
    example = secret.split("--from-literal=url=", 1)[1]
    installed.run(secret.replace(example, tcp.url("whoexec")))
    installed.run("kubectl apply -k manifests/overlays/postgres")
    rolled_out(installed)
    installed.run("kubectl -n whoexec rollout status deploy/whoexec-ui --timeout 240s", 260)

    session = exec_in_background(carol, "sleep 43.24; true")
    try:
        pid = host_pid_of(b"sleep\x0043.24\x00")
        verdict = consumer_verdicts(installed, falco_pod, falco_alert_for(pid, shop))
    finally:
        session.kill()
        session.wait()
    assert (verdict["whoexec.attribution"], verdict["whoexec.user.name"]) == ("verified", "carol")
    session_id = verdict["whoexec.session.id"]

    def stored() -> tuple[str, str] | None:
        with psycopg.connect(tcp.url("whoexec")) as conn:
            row = conn.execute(
                "SELECT user_name, attribution_rank FROM sessions WHERE session_id = %s",
                (session_id,),
            ).fetchone()
        return (row[0], RANK_ATTRIBUTION[row[1]]) if row else None

    assert eventually(stored, 60, "the session in PostgreSQL") == ("carol", "verified")

    # the UI as its manifest says to reach it: kubectl port-forward to its loopback
    kubectl = [str(BIN / "kubectl"), "--kubeconfig", str(cluster.admin), "-n", "whoexec"]
    forward = subprocess.Popen(
        [*kubectl, "port-forward", "deploy/whoexec-ui", "18080:8080"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:

        def listed() -> list[dict[str, Any]] | None:
            url = "http://127.0.0.1:18080/sessions?format=json&user=carol&since=1h"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    rows: list[dict[str, Any]] = json.loads(answer.read())
            except OSError:
                return None
            return rows or None

        rows = eventually(listed, 60, "the UI's session list through port-forward")
    finally:
        forward.terminate()
        forward.wait(10)
    assert session_id in {row["session_id"] for row in rows}


def test_uninstall_leaves_nothing_behind_that_breaks_pod_creation(cluster, installed):
    # the overlay applied last (the postgres test's): it holds the self-signed one
    installed.run("kubectl delete -k manifests/overlays/postgres --wait=true", 300)
    assert cluster.kubectl("get", "mutatingwebhookconfiguration", "whoexec", check=False).returncode
    pod = cluster.pod("installed", "after-uninstall", cluster.images["with-env"], hostNetwork=False)
    assert "initContainers" not in pod["spec"]
    assert (
        cluster.kubectl("exec", "-n", "installed", "after-uninstall", "--", "true").returncode == 0
    )


def readme_helm_commands() -> list[str]:
    """The deploy guide's Helm install, line by line as it is shown."""
    readme = (MANIFESTS.parent / "README.md").read_text()
    after = readme.split("**Or with Helm**", 1)[1]
    block = after.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [" ".join(line.split()) for line in lines if line.strip()]


def test_helm_install_as_the_readme_says_attributes_exec_again(cluster, installed, carol):
    installed.run("whoexec certs --service whoexec --namespace whoexec --out certs")
    commands = readme_helm_commands()
    assert commands[0].startswith("helm install whoexec manifests/chart -n whoexec")
    for command in commands:
        installed.run(command)
    try:
        rolled_out(installed)
        wait_until_the_webhook_is_called(cluster)
        pod = cluster.pod("installed", "after-helm", cluster.images["with-env"], hostNetwork=False)
        done = cluster.kubectl(
            "exec", "-n", "installed", "after-helm", "--", "cat", "/proc/self/environ", user=carol
        )
        ring = load_key_ring([installed.where / "certs" / "identity.pub"])
        identity = verify_token(token_from_environ(done.stdout), ring, now=int(time.time()))
        assert (identity.user, identity.pod_uid) == ("carol", pod["metadata"]["uid"])
    finally:
        installed.run("helm uninstall whoexec -n whoexec --wait")
    assert cluster.kubectl("get", "mutatingwebhookconfiguration", "whoexec", check=False).returncode
