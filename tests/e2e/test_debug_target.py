"""kubectl debug --target on the real cluster: the debug container shares the target's
PID namespace (no process of it is pid 1), its session is attributed from the real /proc
when the alerting process has exited, and its audit event links to the session."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from webhook.attribution.falco import format_time_ns
from webhook.attribution.procfs import ProcFS
from webhook.identity import verify_token
from webhook.keyfiles import load_key_ring

from .conftest import Cluster, Webhook, token_from_environ
from .harness import eventually
from .test_audit_and_chain import host_pid_of, ingest, wait_for_audit, whoexec

pytestmark = pytest.mark.e2e

MARKER = "41.75"


@pytest.fixture(scope="module")
def erin(cluster: Cluster) -> Path:
    return cluster.user("erin", "devs")


@pytest.fixture(scope="module")
def debugged(cluster: Cluster, webhook: Webhook, erin: Path) -> dict:
    """A debug container in pod tgt/web-0, sharing the PID namespace of its container app."""
    cluster.kubectl("create", "namespace", "tgt", check=False)
    cluster.pod("tgt", "web-0", cluster.images["with-env"])
    cluster.kubectl(
        "debug",
        "-n",
        "tgt",
        "web-0",
        "--image",
        cluster.images["with-env"],
        "--image-pull-policy",
        "Never",
        "-c",
        "debugger",
        "--target",
        "app",
        "--attach=false",
        "--",
        "/bin/sh",
        "-c",
        # the apiserver expands $(VAR) in a container's command: $$ is its escape for $
        f'echo "pid $$$$"; sleep {MARKER}000; true',
        user=erin,
    )
    shell = host_pid_of(f"sleep\0{MARKER}000\0".encode(), 90)
    parent = ProcFS(Path("/proc")).read(shell)
    assert parent is not None
    return {
        "pod": cluster.get("-n", "tgt", "pod", "web-0"),
        "sleep": shell,
        "shell": parent.ppid,
    }


def test_no_process_of_a_target_debug_container_is_pid_1(cluster, debugged):
    def logged() -> bytes:
        logs = cluster.kubectl("logs", "-n", "tgt", "web-0", "-c", "debugger", check=False)
        return logs.stdout if logs.returncode == 0 else b""

    first = eventually(logged, 60, "the debug container's output").decode().split()
    assert first[0] == "pid" and int(first[1]) > 1, "it shares the target's PID namespace"


def alert_of_an_exited_command(shell: int, pod: dict) -> dict:
    """Falco's alert of a command the debug shell ran (`cat /etc/shadow`), read after the
    command exited: what is real is its parent, the shell, named by proc.apid[1]. Falco
    names the shell's own parent nowhere (runc is gone), and the 4 KiB cut hid the token."""
    cgroup = Path(f"/proc/{shell}/cgroup").read_text()
    now = time.time_ns()
    gone = max(int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()) + 100_000
    fields = {
        "container.id": cgroup.strip().split("/")[-1][:12],
        "container.name": cgroup.strip().split("/")[-1][:12],  # the containerd engine's name
        "container.label[io.kubernetes.container.name]": "debugger",
        "evt.time": now,
        "k8s.ns.name": pod["metadata"]["namespace"],
        "k8s.pod.name": pod["metadata"]["name"],
        "k8s.pod.uid": pod["metadata"]["uid"],
        "proc.aenv[WHOEXEC_IDENTITY]": "",
        "proc.apid[1]": shell,
        "proc.aname[1]": "sh",
        "proc.apid[2]": None,
        "proc.aname[2]": None,
        "proc.cmdline": "cat /etc/shadow",
        "proc.env[WHOEXEC_IDENTITY]": "",
        "proc.name": "cat",
        "proc.pid": gone,
        "proc.pid.ts": now - 1_000_000,
        "proc.pname": "sh",
        "proc.ppid": shell,
        "proc.vpid": 57,
        "thread.tid": gone,
    }
    return {
        "hostname": "localhost",
        "output": "Sensitive file opened for reading by non-trusted program (cat)",
        "output_fields": fields,
        "priority": "Warning",
        "rule": "Read sensitive file untrusted",
        "source": "syscall",
        "tags": ["filesystem"],
        "time": format_time_ns(now),
    }


def test_an_exited_command_of_a_target_debug_container_is_attributed_through_proc(
    cluster, webhook, debugged, tmp_path
):
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_text(json.dumps(alert_of_an_exited_command(debugged["shell"], debugged["pod"])))
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
    fields = enriched["output_fields"]
    assert fields["whoexec.attribution"] == "verified", fields
    assert fields["whoexec.user.name"] == "erin"
    assert fields["whoexec.binding"] == "checked", "through the kubelet's label"


def test_the_debug_container_s_audit_event_links_to_its_session(
    cluster, webhook, debugged, tmp_path
):
    (event,) = wait_for_audit(
        cluster,
        "web-0",
        lambda e: (
            e["objectRef"].get("subresource") == "ephemeralcontainers"
            and e["objectRef"].get("namespace") == "tgt"
            and e["verb"] in ("patch", "update")
        ),
    )
    session_id = event["annotations"]["exec.whoexec.io/session-id"]
    token = token_from_environ(Path(f"/proc/{debugged['shell']}/environ").read_bytes())
    identity = verify_token(token, load_key_ring([webhook.identity_pub]), now=int(time.time()))
    assert (identity.session_id, identity.container) == (session_id, "debugger")
    db = f"sqlite:///{tmp_path / 'store.db'}"
    ingest(cluster, db)
    found = json.loads(whoexec("session", session_id, "--db", db, "--format", "json").stdout)
    assert found["user_name"] == "erin"
    assert [(a["audit_id"], a["subresource"]) for a in found["audit_events"]] == [
        (event["auditID"], "ephemeralcontainers")
    ]
