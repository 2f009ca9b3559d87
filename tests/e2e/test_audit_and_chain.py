"""The real audit log into the store, and the whole chain on real processes:
kubectl exec -> a real process in a real container -> a Falco-shaped alert from its real
/proc facts -> whoexec consume --procfs /proc -> the alert attributed to its user."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from webhook.attribution.falco import format_time_ns
from webhook.attribution.procfs import ProcFS

from .conftest import BIN, WHOEXEC, Cluster, Webhook
from .harness import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def carol(cluster: Cluster) -> Path:
    return cluster.user("carol", "devs")


@pytest.fixture(scope="module")
def ops(cluster: Cluster, webhook: Webhook) -> dict:
    cluster.kubectl("create", "namespace", "ops", check=False)
    return cluster.pod("ops", "tools-0", cluster.images["with-env"])


def whoexec(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(WHOEXEC), *args], capture_output=True, text=True, timeout=120, check=False
    )


def ingest(cluster: Cluster, db: str) -> None:
    done = whoexec("audit", "ingest", str(cluster.audit_log), "--db", db)
    assert done.returncode == 0, done.stderr


def audit_events(cluster: Cluster, pod: str) -> list[dict]:
    events = [json.loads(line) for line in cluster.audit_log.read_text().splitlines() if line]
    return [e for e in events if e.get("objectRef", {}).get("name") == pod]


def wait_for_audit(cluster: Cluster, pod: str, match: Any = None) -> list[dict]:
    """The apiserver writes the audit log in the background: wait for the events."""

    def found() -> list[dict]:
        return [
            e
            for e in audit_events(cluster, pod)
            if e["stage"] == "ResponseComplete" and (match is None or match(e))
        ]

    return eventually(found, what=f"an audit event for {pod}")


def test_each_exec_links_to_its_session_through_the_audit_annotation(
    cluster, webhook, ops, carol, tmp_path
):
    cluster.kubectl("exec", "-n", "ops", "tools-0", "--", "true", user=carol)
    (event,) = wait_for_audit(cluster, "tools-0")
    annotations = event["annotations"]
    assert annotations["exec.whoexec.io/outcome"] == "injected"
    session_id = annotations["exec.whoexec.io/session-id"]
    db = f"sqlite:///{tmp_path / 'store.db'}"
    ingest(cluster, db)
    found = json.loads(whoexec("session", session_id, "--db", db, "--format", "json").stdout)
    assert found["user_name"] == "carol"
    assert found["command"] == ["true"], "the original command, from the audit event"
    assert found["audit_events"][0]["audit_id"] == event["auditID"]


def test_attach_is_recorded_as_not_attributable(cluster, webhook, carol, tmp_path):
    cluster.kubectl("create", "namespace", "att", check=False)
    cluster.pod(
        "att", "reader", cluster.images["with-env"], command=["/bin/sh", "-c", "sleep 1000"]
    )
    attach = subprocess.Popen(
        [str(BIN / "kubectl"), "--kubeconfig", str(carol), "attach", "-n", "att", "reader"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        # the attach lasts until killed, so its event is ResponseStarted
        events = eventually(
            lambda: [
                e
                for e in audit_events(cluster, "reader")
                if e.get("objectRef", {}).get("subresource") == "attach"
            ],
            what="the attach's audit event",
        )
    finally:
        attach.kill()
        attach.wait()
    assert events, "the attach was never audited"
    assert events[0]["annotations"]["exec.whoexec.io/outcome"] == "skipped-attach"


def test_with_the_webhook_down_exec_still_works_and_becomes_a_finding(
    cluster, webhook, ops, carol, tmp_path
):
    webhook.stop()
    try:
        done = cluster.kubectl(
            "exec",
            "-n",
            "ops",
            "tools-0",
            "--",
            "sh",
            "-c",
            "echo webhook-down-$((6*7))",
            user=carol,
        )
        assert done.stdout.decode().strip() == "webhook-down-42"
        down = wait_for_audit(cluster, "tools-0", lambda e: "webhook-down" in e["requestURI"])
        assert down and "exec.whoexec.io/outcome" not in down[0].get("annotations", {})
    finally:
        webhook.start()
    db = f"sqlite:///{tmp_path / 'store.db'}"
    ingest(cluster, db)
    findings = json.loads(
        whoexec("findings", "--db", db, "--since", "1h", "--format", "json").stdout
    )
    unattributed = [f for f in findings if f["kind"] == "Exec not attributed by the webhook"]
    assert any(
        down[0]["auditID"] in f["detail"] and f["user_name"] == "carol" for f in unattributed
    )


def host_pid_of(marker: bytes, seconds: float = 30) -> int:
    """The host pid of the process whose argv is exactly ``marker``."""

    def running() -> int | None:
        for entry in Path("/proc").iterdir():
            try:
                if entry.name.isdigit() and (entry / "cmdline").read_bytes() == marker:
                    return int(entry.name)
            except OSError:
                continue
        return None

    pid: int = eventually(running, seconds, f"a process running {marker!r}")
    return pid


def falco_alert_for(pid: int, pod: dict) -> dict:
    """What Falco would send about this real process; only the stand-in is ours.

    The environment is given as Falco shows it when the 4 KiB cut hid the variable (""),
    so the consumer must find the session root by walking the real /proc.
    """
    procfs = ProcFS(Path("/proc"))
    info = procfs.read(pid)
    assert info is not None
    cgroup = Path(f"/proc/{pid}/cgroup").read_text()
    container_id = cgroup.strip().split("/")[-1][:12]
    now = time.time_ns()
    fields = {
        "container.id": container_id,
        "container.name": "app",
        "evt.time": now,
        "k8s.ns.name": pod["metadata"]["namespace"],
        "k8s.pod.name": pod["metadata"]["name"],
        "k8s.pod.uid": pod["metadata"]["uid"],
        "proc.aenv[WHOEXEC_IDENTITY]": "",
        "proc.cmdline": (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")).decode(),
        "proc.env[WHOEXEC_IDENTITY]": "",
        "proc.name": "sleep",
        "proc.pid": pid,
        "proc.pid.ts": info.start_ns,
        "proc.ppid": info.ppid,
        "thread.tid": pid,
    }
    return {
        "hostname": "localhost",
        "output": f"Read sensitive file untrusted (pid={pid})",
        "output_fields": fields,
        "priority": "Warning",
        "rule": "Read sensitive file untrusted",
        "source": "syscall",
        "tags": ["filesystem"],
        "time": format_time_ns(now),
    }


def test_a_real_process_in_a_real_exec_session_is_attributed_to_its_user(
    cluster, webhook, ops, carol, tmp_path
):
    marker = "31.25"
    session = subprocess.Popen(
        [
            str(BIN / "kubectl"),
            "--kubeconfig",
            str(carol),
            "exec",
            "-n",
            "ops",
            "tools-0",
            "--",
            "sh",
            "-c",
            f"sleep {marker}; true",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        pid = host_pid_of(f"sleep\0{marker}\0".encode())
        alerts = tmp_path / "alerts.jsonl"
        alerts.write_text(json.dumps(falco_alert_for(pid, ops)) + "\n")
        done = whoexec(
            "consume",
            "--input",
            str(alerts),
            "--identity-pub",
            str(webhook.identity_pub),
            "--procfs",
            "/proc",
            "--hold",
            "0",
        )
        assert done.returncode == 0, done.stderr
        (enriched,) = [json.loads(line) for line in done.stdout.splitlines()]
    finally:
        session.kill()
        session.wait()
    fields = enriched["output_fields"]
    assert fields["whoexec.attribution"] == "verified", fields
    assert fields["whoexec.user.name"] == "carol"
    assert fields["whoexec.user.groups"] == ["devs", "system:authenticated"]
    assert enriched["output"].endswith(f"k8s_session={fields['whoexec.session.id']}")
