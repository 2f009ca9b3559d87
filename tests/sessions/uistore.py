"""A session store filled by the real commands, for the UI's tests.

Falco-shaped alerts (the shape of ``data/falco/make_fixtures.py``, which follows real
Falco 0.44.1 output) signed with a throwaway key go through ``whoexec consume --db``;
audit events in kube-apiserver's JSON-lines shape go through ``whoexec audit ingest``.
One session is hostile: its pod name, command and user name are HTML that would run
script if any page forgot to escape it.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from tests.conftest import DATA
from webhook.attribution.falco import format_time_ns
from webhook.identity import Identity, Signer, sign_identity

_spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "falco" / "make_fixtures.py")
assert _spec is not None and _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

S = 1_000_000_000
XSS_COMMAND = "<img src=x onerror=alert(1)>"
XSS_POD = 'web-"><script>document.title="pwned"</script>'
XSS_USER = "eve<script>alert(2)</script>@corp.example"
ALICE = "alice@corp.example"
BOB = "bob@corp.example"
SHOP = ("shop", "web-7d9f8b6c5-x2k4q", "app", "c0ffee00-1111-4222-8333-444455556666")
HOSTILE = ("shop", XSS_POD, "app", "c0ffee00-2222-4222-8333-444455556666")


@dataclass(frozen=True)
class FilledStore:
    url: str
    alice: str
    hostile: str
    bob_audit_id: str


def _audit(
    audit_id: str,
    t: int,
    user: str,
    where: tuple[str, str, str, str],
    command: list[str],
    session_id: str | None,
) -> dict:
    ns, pod, container, _ = where
    query = urllib.parse.urlencode(
        [*(("command", c) for c in command), ("container", container), ("stdin", "true")]
    )
    stamp = format_time_ns(t)
    annotations = {"authorization.k8s.io/decision": "allow"}
    if session_id:
        annotations |= {
            "exec.whoexec.io/outcome": "injected",
            "exec.whoexec.io/session-id": session_id,
            "exec.whoexec.io/user": user,
        }
    return {
        "kind": "Event",
        "apiVersion": "audit.k8s.io/v1",
        "level": "Metadata",
        "auditID": audit_id,
        "stage": "ResponseStarted",
        "requestURI": f"/api/v1/namespaces/{ns}/pods/{urllib.parse.quote(pod)}/exec?{query}",
        "verb": "create",
        "user": {"username": user, "groups": ["devs", "system:authenticated"]},
        "sourceIPs": ["10.0.8.14"],
        "userAgent": "kubectl/v1.37.2 (linux/amd64)",
        "objectRef": {
            "resource": "pods",
            "namespace": ns,
            "name": pod,
            "apiVersion": "v1",
            "subresource": "exec",
        },
        "requestReceivedTimestamp": stamp,
        "stageTimestamp": stamp,
        "annotations": annotations,
        "responseStatus": {"metadata": {}, "code": 101},
    }


def fill_store(where: Path, url: str) -> FilledStore:
    """Two sessions a few minutes old (alice's, and a hostile one), and bob's bypass."""
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    pub = where / "identity.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    t0 = (time.time_ns() // S - 600) * S
    alice_sid, hostile_sid, bob_audit = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())

    def token(sid: str, user: str, place: tuple[str, str, str, str], t: int) -> str:
        ns, pod, container, pod_uid = place
        return sign_identity(
            Identity(sid, user, "uid-1", ("devs",), ns, pod, container, t // S, pod_uid), signer
        )

    shim = [(3100, "containerd-shim")]
    alice = token(alice_sid, ALICE, SHOP, t0)
    hostile = token(hostile_sid, XSS_USER, HOSTILE, t0 + 60 * S)
    alerts = [
        fixtures.root_alert(t0 + S, 4242, t0 + S // 2, alice, "/bin/bash"),
        fixtures.alert(
            "Terminal shell in container",
            "Notice",
            t=t0 + 2 * S,
            pid=4242,
            vpid=7,
            pid_ts=t0 + S // 2,
            name="bash",
            args="",
            env_var=alice,
            ancestors=shim,
        ),
        fixtures.alert(
            "Read sensitive file untrusted",
            "Warning",
            t=t0 + 20 * S,
            pid=4300,
            vpid=19,
            pid_ts=t0 + 19 * S,
            name="cat",
            args="/etc/shadow",
            env_var=alice,
            ancestors=[(4242, "bash"), *shim],
            extra={"fd.name": "/etc/shadow"},
        ),
        fixtures.alert(
            "Drop and execute new binary in container",
            "Critical",
            t=t0 + 40 * S,
            pid=4310,
            vpid=23,
            pid_ts=t0 + 39 * S,
            name="miner",
            args="--pool x",
            env_var=alice,
            ancestors=[(4242, "bash"), *shim],
        ),
        fixtures.root_alert(t0 + 61 * S, 5252, t0 + 61 * S, hostile, XSS_COMMAND, where=HOSTILE),
        fixtures.alert(
            "Read sensitive file untrusted",
            "Warning",
            t=t0 + 62 * S,
            pid=5300,
            vpid=9,
            pid_ts=t0 + 62 * S,
            name="cat",
            args=f"{XSS_COMMAND} /etc/shadow",
            env_var=hostile,
            ancestors=[(5252, "sh"), *shim],
            where=HOSTILE,
        ),
    ]
    falco = where / "falco.jsonl"
    falco.write_text("".join(json.dumps(a) + "\n" for a in alerts))
    audit = where / "audit.log"
    audit.write_text(
        "".join(
            json.dumps(e) + "\n"
            for e in (
                _audit(str(uuid.uuid4()), t0, ALICE, SHOP, ["/bin/bash"], alice_sid),
                _audit(
                    str(uuid.uuid4()), t0 + 60 * S, XSS_USER, HOSTILE, [XSS_COMMAND], hostile_sid
                ),
                _audit(bob_audit, t0 + 90 * S, BOB, SHOP, ["sh", "-c", XSS_COMMAND], None),
            )
        )
    )
    whoexec = [sys.executable, "-m", "webhook.cli"]
    for argv in (
        [
            "consume",
            "--input",
            str(falco),
            "--identity-pub",
            str(pub),
            "--db",
            url,
            "--no-stdout",
            "--hold",
            "0",
            "--state-dir",
            str(where / "state"),
        ],
        ["audit", "ingest", str(audit), "--db", url, "--state-dir", str(where / "state")],
    ):
        done = subprocess.run(
            [*whoexec, *argv], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
    return FilledStore(url, alice_sid, hostile_sid, bob_audit)
