"""Regenerate the Falco alert fixtures in this folder: `python tests/data/falco/make_fixtures.py`.

Alerts follow Falco 0.44's `json_output` shape exactly: alphabetical keys, typed
`output_fields` (numbers are numbers, missing values `null`, bracketed field names) and
the `append_output` extra fields that `manifests/falco/values.yaml` configures. Tokens
are signed with a throwaway key; only `identity.pub` is kept, never the private key.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webhook.attribution.falco import format_time_ns
from webhook.identity import Identity, Signer, sign_identity

HERE = Path(__file__).parent
HOST = "ip-10-0-3-17.ec2.internal"
T0 = 1795341600_000_000_000  # 2026-11-22T10:00:00Z in ns
SHOP = ("shop", "web-7d9f8b6c5-x2k4q", "app", "c0ffee00-1111-4222-8333-444455556666")
CID = "3ad7c8e1f0b2"
SHIM = 3100  # containerd-shim-runc-v2, the parent of every exec'd process


def alert(
    rule: str,
    priority: str,
    *,
    t: int,
    pid: int,
    vpid: int,
    pid_ts: int,
    name: str,
    args: str,
    ancestors: list[tuple[int, str]],
    env_var: str | None = None,
    aenv_var: str | None = None,
    where: tuple[str, str, str, str] = SHOP,
    container_id: str = CID,
    tags: list[str] | None = None,
    extra: dict | None = None,
    iso_time: bool = False,
) -> dict:
    ns, pod, container, pod_uid = where
    fields = {
        "container.id": container_id,
        "container.name": container,
        "k8s.ns.name": ns,
        "k8s.pod.name": pod,
        "k8s.pod.uid": pod_uid,
        "proc.args": args,
        "proc.cmdline": f"{name} {args}".strip(),
        # real Falco prints "" for an absent variable, not null (shared/falco-0.44.1)
        "proc.env[WHOEXEC_IDENTITY]": env_var or "",
        "proc.aenv[WHOEXEC_IDENTITY]": aenv_var or "",
        "proc.name": name,
        "proc.pid": pid,
        "proc.pid.ts": pid_ts,
        "proc.pname": ancestors[0][1] if ancestors else None,
        "proc.ppid": ancestors[0][0] if ancestors else 0,
        "proc.tty": 34816,
        "proc.vpid": vpid,
        "thread.tid": pid,
        "user.loginuid": -1,
        "user.name": "root",
    }
    for n in range(1, 9):
        known = ancestors[n - 1] if n <= len(ancestors) else (None, None)
        fields[f"proc.apid[{n}]"] = known[0]
        fields[f"proc.aname[{n}]"] = known[1]
    if iso_time:
        fields["evt.time.iso8601"] = format_time_ns(t)
    else:
        fields["evt.time"] = t
    fields.update(extra or {})
    clock = format_time_ns(t)[11:29]
    output = (
        f"{clock}: {priority} {rule} (user=root user_loginuid=-1 process={name} "
        f"proc_exepath=/bin/{name} parent={fields['proc.pname']} command={fields['proc.cmdline']} "
        f"terminal=34816 container_id={container_id} container_name={container} "
        f"k8s_ns={ns} k8s_pod_name={pod})"
    )
    body = {
        "hostname": HOST,
        "output": output,
        "output_fields": dict(sorted(fields.items())),
        "priority": priority,
        "rule": rule,
        "source": "syscall",
        "tags": sorted(tags or ["container", "maturity_stable", "mitre_execution", "shell"]),
        "time": format_time_ns(t),
    }
    return dict(sorted(body.items()))


def root_alert(t: int, pid: int, pid_ts: int, token: str, command: str, **kw) -> dict:
    """The shipped rule `Whoexec exec session root`: the env execve that carries the token."""
    return alert(
        "Whoexec exec session root",
        "Informational",
        t=t,
        pid=pid,
        vpid=kw.pop("vpid", 7),
        pid_ts=pid_ts,
        name="env",
        args=f"WHOEXEC_IDENTITY={token} {command}",
        ancestors=[(SHIM, "containerd-shim")],
        tags=["whoexec", "whoexec_root"],
        **kw,
    )


def main() -> None:
    key = Ed25519PrivateKey.generate()
    signer = Signer(key)
    forger = Signer(Ed25519PrivateKey.generate())
    (HERE / "identity.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )

    def token(sid: str, where=SHOP, user="alice@corp.example", by=signer, iat=None) -> str:
        ns, pod, container, pod_uid = where
        return sign_identity(
            Identity(
                session_id=sid,
                user=user,
                uid="5b2f1e7c-1d0a-4c3e-9b7a-2f6d8e9c0a11" if user.startswith("alice") else "",
                groups=("platform-admins", "devs", "system:authenticated"),
                namespace=ns,
                pod=pod,
                container=container,
                issued_at=iat if iat is not None else (T0 // 1_000_000_000) - 1,
                pod_uid=pod_uid,
            ),
            by,
        )

    alice = token("0d3c4a8e-7f21-4b6a-9c55-1e2f3a4b5c6d")
    s = 1_000_000_000  # one second in ns
    root_ts = T0 + 100
    shell = dict(ancestors=[(SHIM, "containerd-shim")])
    long_env = " ".join(f"SVC_{i}_SERVICE_HOST=10.96.{i}.1" for i in range(200))
    scenarios: dict[str, list[dict]] = {}

    # 1. a shell, its child and its grandchild
    scenarios["shell_and_grandchild"] = [
        root_alert(T0 + 200, 4242, root_ts, alice, "/bin/bash"),
        alert(
            "Terminal shell in container",
            "Notice",
            t=T0 + 300,
            pid=4242,
            vpid=7,
            pid_ts=root_ts,
            name="bash",
            args="",
            env_var=alice,
            **shell,
        ),
        alert(
            "Read sensitive file untrusted",
            "Warning",
            t=T0 + 5 * s,
            pid=4300,
            vpid=19,
            pid_ts=T0 + 4 * s,
            name="cat",
            args="/etc/shadow",
            env_var=alice,
            aenv_var=alice,
            ancestors=[(4290, "sh"), (4242, "bash"), (SHIM, "containerd-shim")],
            tags=["filesystem", "maturity_stable", "mitre_credential_access"],
            extra={"fd.name": "/etc/shadow"},
        ),
    ]
    # 2. the root's environment was cut at 4 KiB: the variable is in no proc.env at all,
    #    only in the env execve's args
    scenarios["env_cut_at_4k"] = [
        root_alert(T0 + 200, 4242, root_ts, alice, "/bin/sh", extra={"proc.env": long_env[:4096]}),
        alert(
            "Search Private Keys or Passwords",
            "Warning",
            t=T0 + 9 * s,
            pid=4501,
            vpid=31,
            pid_ts=T0 + 8 * s,
            name="grep",
            args="-r BEGIN RSA PRIVATE /",
            iso_time=True,
            ancestors=[(4242, "sh"), (SHIM, "containerd-shim")],
            extra={"proc.env": long_env[:4096]},
        ),
    ]
    # 3. inside the session: export WHOEXEC_IDENTITY=<bob's real token>; cat /etc/shadow
    bob = token("9f9f9f9f-0000-4000-8000-000000000001", user="bob@corp.example")
    scenarios["shadowed_export"] = [
        root_alert(T0 + 200, 4242, root_ts, alice, "/bin/bash"),
        alert(
            "Read sensitive file untrusted",
            "Warning",
            t=T0 + 6 * s,
            pid=4310,
            vpid=21,
            pid_ts=T0 + 6 * s - 5000,
            name="cat",
            args="/etc/shadow",
            env_var=bob,
            aenv_var=alice,
            ancestors=[(4242, "bash"), (SHIM, "containerd-shim")],
        ),
        alert(
            "Read sensitive file untrusted",
            "Warning",
            t=T0 + 7 * s,
            pid=4320,
            vpid=22,
            pid_ts=T0 + 7 * s - 5000,
            name="head",
            args="/etc/shadow",
            env_var=bob,
            aenv_var=bob,
            ancestors=[(4315, "sh"), (4242, "bash"), (SHIM, "containerd-shim")],
        ),
    ]
    # 4. the root exits, and its pid is reused by an unrelated process in another container
    scenarios["pid_reuse"] = [
        root_alert(T0 + 200, 4242, root_ts, alice, "/bin/bash"),
        alert(
            "Drop and execute new binary in container",
            "Critical",
            t=T0 + 3600 * s,
            pid=4242,
            vpid=1,
            pid_ts=T0 + 3599 * s,
            name="payload",
            args="",
            ancestors=[(3900, "containerd-shim")],
            container_id="77aa88bb99cc",
            where=("batch", "job-28411-zzk2p", "worker", "aaaa0000-1111-4222-8333-999988887777"),
        ),
    ]
    # 5. an alert from an unrelated container's own workload
    scenarios["unrelated_container"] = [
        root_alert(T0 + 200, 4242, root_ts, alice, "/bin/bash"),
        alert(
            "Run shell untrusted",
            "Notice",
            t=T0 + 2 * s,
            pid=8100,
            vpid=40,
            pid_ts=T0 + 2 * s - 900,
            name="sh",
            args="-c ping -c 4 google.com",
            ancestors=[(8001, "apache2"), (8000, "main.sh"), (7990, "containerd-shim")],
            container_id="bf4d401d1c5e",
            where=(
                "dvwa",
                "dvwa-app-54f998c8c5-b85m2",
                "dvwa",
                "0b0b0b0b-1111-4222-8333-123412341234",
            ),
        ),
    ]
    # 6. forged tokens: a key we do not trust, and our kid with someone else's signature
    forged = token("66666666-0000-4000-8000-000000000006", by=forger)
    _, _, payload, sig = forged.split(".")
    wrong_sig = f"v1.{signer.kid}.{payload}.{sig}"
    scenarios["forged_token"] = [
        root_alert(T0 + 200, 4242, root_ts, forged, "/bin/bash"),
        alert(
            "Terminal shell in container",
            "Notice",
            t=T0 + 300,
            pid=4242,
            vpid=7,
            pid_ts=root_ts,
            name="bash",
            args="",
            env_var=forged,
            **shell,
        ),
        root_alert(T0 + 400, 4600, T0 + 350, wrong_sig, "/bin/sh", vpid=9),
        alert(
            "Terminal shell in container",
            "Notice",
            t=T0 + 500,
            pid=4600,
            vpid=9,
            pid_ts=T0 + 350,
            name="sh",
            args="",
            env_var=wrong_sig,
            **shell,
        ),
    ]
    # 7. a real token minted for another pod, replayed here (while the webhook was down)
    elsewhere = ("shop", "payments-0", "app", "dddd0000-1111-4222-8333-000000000000")
    replayed = token("77777777-0000-4000-8000-000000000007", where=elsewhere)
    scenarios["token_for_another_pod"] = [
        root_alert(T0 + 200, 4242, root_ts, replayed, "/bin/bash"),
        alert(
            "Terminal shell in container",
            "Notice",
            t=T0 + 300,
            pid=4242,
            vpid=7,
            pid_ts=root_ts,
            name="bash",
            args="",
            env_var=replayed,
            **shell,
        ),
    ]
    # 8. out of order: the grandchild's alert arrives before the session root's
    scenarios["out_of_order"] = [
        alert(
            "Read sensitive file untrusted",
            "Warning",
            t=T0 + 5 * s,
            pid=4300,
            vpid=19,
            pid_ts=T0 + 4 * s,
            name="cat",
            args="/etc/shadow",
            ancestors=[(4290, "sh"), (4242, "bash"), (SHIM, "containerd-shim")],
        ),
        root_alert(T0 + 200, 4242, root_ts, alice, "/bin/bash"),
    ]
    # 9. an exec that bypassed the webhook (down, excluded, or direct to the kubelet)
    scenarios["exec_without_identity"] = [
        alert(
            "Terminal shell in container",
            "Notice",
            t=T0 + 300,
            pid=4700,
            vpid=12,
            pid_ts=T0 + 250,
            name="bash",
            args="",
            **shell,
        ),
    ]
    # 10. a token issued an hour after the event it is seen in
    future = token("88888888-0000-4000-8000-000000000008", iat=T0 // 1_000_000_000 + 3600)
    scenarios["token_from_future"] = [root_alert(T0 + 200, 4242, root_ts, future, "/bin/sh")]

    # 11-15. a real token replayed as a session root (webhook down, nodes/proxy, node shell)
    def replay_of(sid: str, user: str, where=SHOP, iat=None, pid=5242, start=root_ts) -> list:
        stolen = token(sid, where=where, user=user, iat=iat)
        return [
            root_alert(start + 100, pid, start, stolen, "/bin/sh", vpid=40),
            alert(
                "Read sensitive file untrusted",
                "Warning",
                t=start + 2 * s,
                pid=pid + 1,
                vpid=41,
                pid_ts=start + s,
                name="cat",
                args="/etc/shadow",
                env_var=stolen,
                aenv_var=stolen,
                ancestors=[(pid, "sh"), (SHIM, "containerd-shim")],
                extra={"fd.name": "/etc/shadow"},
            ),
        ]

    # bob's token, minted three hours earlier for this very pod
    scenarios["replay_stale"] = replay_of(
        "b0b00000-0000-4000-8000-000000000011",
        "bob@corp.example",
        iat=T0 // 1_000_000_000 - 3 * 3600,
    )
    # carol's token: its genuine root, then a second root with it a minute later (past
    # the freshness window) and one 10 s later (inside it: only single use catches it)
    carol = "ca201000-0000-4000-8000-000000000012"
    for name, later in (("replay_reused_a_minute_later", 60), ("replay_reused_within_window", 10)):
        genuine = replay_of(carol, "carol@corp.example", pid=6100)
        scenarios[name] = genuine + replay_of(
            carol, "carol@corp.example", pid=6200, start=root_ts + later * s
        )
    # dave's token minted for pod db-0, planted as the root in pod web-1
    db0 = ("shop", "db-0", "postgres", "db000000-1111-4222-8333-444455556666")
    scenarios["replay_bound_elsewhere"] = replay_of(
        "da7e0000-0000-4000-8000-000000000013", "dave@corp.example", where=db0
    )
    # a StatefulSet pod recreated under the same name: the old pod's token, the new pod UID
    old_uid = (SHOP[0], SHOP[1], SHOP[2], "01d00000-1111-4222-8333-444455556666")
    scenarios["replay_recreated_pod"] = replay_of(
        "e1e10000-0000-4000-8000-000000000014", "erin@corp.example", where=old_uid
    )

    for name, alerts in scenarios.items():
        with (HERE / f"{name}.jsonl").open("w") as out:
            for item in alerts:
                out.write(json.dumps(item, separators=(",", ":")) + "\n")
    print(f"wrote {len(scenarios)} scenarios and identity.pub (kid {signer.kid})")


if __name__ == "__main__":
    main()
