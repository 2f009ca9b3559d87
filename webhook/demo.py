"""``whoexec demo``: the whole pipeline on one machine, with real components, in a minute.

1. certificates and identity keys in a temporary directory;
2. the real webhook (``whoexec serve``: gunicorn, TLS) and the real consumer
   (``whoexec consume --listen``) with the embedded SQLite store;
3. this process acts as kube-apiserver: it sends alice's exec AdmissionReview over TLS,
   checked against the generated CA, and applies the returned JSON patch (RFC 6902);
4. the patched command runs as real local processes, standing in for the container: a
   shell that runs a child that runs a grandchild reading a file; this process plays
   the container runtime (containerd-shim) that parents them;
5. this process stands in for Falco: it turns those real processes (their pids, parents,
   start times, argv and environment, read from /proc) into alerts in Falco's JSON shape
   and POSTs them one by one, as Falco's ``http_output`` does;
6. it prints the enriched alerts, the session, and the findings, among them an exec that
   bypassed the webhook. Then it stops everything and removes its files.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import jsonpatch

from webhook.admission.certs import generate_certs
from webhook.attribution.falco import format_time_ns
from webhook.attribution.procfs import ProcFS
from webhook.errors import WhoexecError

NAMESPACE, POD, CONTAINER = "shop", "web-7d9f8b6c5-x2k4q", "app"
POD_UID = "c0ffee00-1111-4222-8333-444455556666"
CONTAINER_ID = "3ad7c8e1f0b2"
WEBHOOK = "exec.whoexec.io"
ALICE = {
    "username": "alice@corp.example",
    "uid": "5b2f1e7c-1d0a-4c3e-9b7a-2f6d8e9c0a11",
    "groups": ["platform-admins", "devs", "system:authenticated"],
    "extra": {"authentication.kubernetes.io/credential-id": ["JTI=6a5d3b0e-demo"]},
}
BOB = {"username": "bob@corp.example", "uid": "77e0b2b4-demo", "groups": ["devs"]}


class DemoError(WhoexecError):
    """A step of the demo failed."""


_LISTENING = re.compile(rb"Listening at: https?://127\.0\.0\.1:(\d+)")


def _bound_port(what: str, proc: Any, log: Path, seconds: float = 30) -> int:
    """The port a server bound for ``127.0.0.1:0``, read from its log: asking the
    kernel for a free port first and binding it later races every other program."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = _LISTENING.search(log.read_bytes())
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise DemoError(f"{what} exited: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    raise DemoError(f"{what} did not start listening: {log.read_text()[-2000:]}")


class Demo:
    def __init__(self, say: Callable[[str], None], keep: bool = False) -> None:
        self.say = say
        self.keep = keep
        self.whoexec = [sys.executable, "-m", "webhook.cli"]
        self.host = socket.gethostname()

    # -- plumbing ----------------------------------------------------------------------

    @contextmanager
    def _process(self, argv: list[str], log: Path, env: dict[str, str]) -> Iterator[Any]:
        handle = log.open("wb")
        proc = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            handle.close()

    def _wait_ready(
        self, connect: Callable[[], http.client.HTTPConnection], what: str, proc: Any, log: Path
    ) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoError(f"{what} exited: {log.read_text()[-2000:]}")
            conn = connect()
            try:
                conn.request("GET", "/readyz")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            finally:
                conn.close()
            time.sleep(0.1)
        raise DemoError(f"{what} did not become ready: {log.read_text()[-2000:]}")

    # -- the story -----------------------------------------------------------------------

    def run(self) -> int:
        with ExitStack() as stack:
            tmp = Path(tempfile.mkdtemp(prefix="whoexec-demo-"))
            if not self.keep:
                stack.callback(shutil.rmtree, tmp, True)
            env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
            certs = tmp / "certs"

            self.say("1/6 generating a CA, the webhook's TLS certificate and identity keys")
            generate_certs(certs, "whoexec", "whoexec", datetime.datetime.now(datetime.UTC))

            self.say(
                "2/6 starting the webhook (whoexec serve: gunicorn, TLS) and the consumer "
                "(whoexec consume --listen, SQLite store)"
            )
            db = f"sqlite:///{tmp}/whoexec.db"
            serve = stack.enter_context(
                self._process(
                    [
                        *self.whoexec,
                        "serve",
                        "--certs",
                        str(certs),
                        "--bind",
                        "127.0.0.1:0",
                        "--workers",
                        "1",
                        "--threads",
                        "2",
                        # the demo's "container" is a process on this machine, whose
                        # /usr/bin/env the demo vouches for (there is no pod to look up)
                        "--env-trusted-namespace",
                        NAMESPACE,
                    ],
                    tmp / "webhook.log",
                    env,
                )
            )
            consume = stack.enter_context(
                self._process(
                    [
                        *self.whoexec,
                        "consume",
                        "--listen",
                        "127.0.0.1:0",
                        "--identity-pub",
                        str(certs / "identity.pub"),
                        "--db",
                        db,
                        "--state-dir",
                        str(tmp / "state"),
                        "--output",
                        str(tmp / "enriched.jsonl"),
                        "--no-stdout",
                        "--hold",
                        "1",
                    ],
                    tmp / "consumer.log",
                    env,
                )
            )
            webhook_port = _bound_port("whoexec serve", serve, tmp / "webhook.log")
            consumer_port = _bound_port("whoexec consume", consume, tmp / "consumer.log")
            ca = ssl.create_default_context(cafile=str(certs / "ca.crt"))

            def webhook() -> http.client.HTTPSConnection:
                # checked against the CA for the Service's name, as the apiserver does
                return _ServerNameConnection(webhook_port, ca, "whoexec.whoexec.svc")

            def consumer() -> http.client.HTTPConnection:
                return http.client.HTTPConnection("127.0.0.1", consumer_port, timeout=10)

            self._wait_ready(webhook, "whoexec serve", serve, tmp / "webhook.log")
            self._wait_ready(consumer, "whoexec consume", consume, tmp / "consumer.log")

            self.say(
                "3/6 acting as kube-apiserver: alice runs `kubectl exec -it web -- sh`; "
                "the AdmissionReview goes to the webhook over TLS"
            )
            original = [
                "/bin/sh",
                "-c",
                f"sh -c 'tail -f {tmp / 'secrets.txt'} >/dev/null; true' & wait",
            ]
            (tmp / "secrets.txt").write_text("db-password=hunter2\n")
            review_uid = str(uuid.uuid4())
            admitted_at = datetime.datetime.now(datetime.UTC)
            review: dict[str, Any] = {
                "kind": "AdmissionReview",
                "apiVersion": "admission.k8s.io/v1",
                "request": {
                    "uid": review_uid,
                    "kind": {"group": "", "version": "v1", "kind": "PodExecOptions"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "subResource": "exec",
                    "requestKind": {"group": "", "version": "v1", "kind": "PodExecOptions"},
                    "requestResource": {"group": "", "version": "v1", "resource": "pods"},
                    "requestSubResource": "exec",
                    "name": POD,
                    "namespace": NAMESPACE,
                    "operation": "CONNECT",
                    "userInfo": ALICE,
                    "object": {
                        "kind": "PodExecOptions",
                        "apiVersion": "v1",
                        "stdin": True,
                        "stdout": True,
                        "tty": True,
                        "container": CONTAINER,
                        "command": original,
                    },
                    "oldObject": None,
                    "dryRun": False,
                    "options": None,
                },
            }
            conn = webhook()
            try:
                conn.request(
                    "POST",
                    "/mutate",
                    body=json.dumps(review),
                    headers={"Content-Type": "application/json"},
                )
                reply = conn.getresponse()
                answer = json.loads(reply.read())
            finally:
                conn.close()
            response = answer["response"]
            if reply.status != 200 or not response.get("allowed") or "patch" not in response:
                raise DemoError(f"unexpected admission answer: {answer}")
            patch = json.loads(base64.b64decode(response["patch"]))
            patched = jsonpatch.apply_patch(review["request"]["object"], patch)
            command: list[str] = [str(arg) for arg in patched["command"]]
            annotations = response["auditAnnotations"]
            self.say(
                f"    webhook answered: allowed, outcome={annotations['outcome']}, "
                f"session-id={annotations['session-id']}"
            )
            self.say(
                f"    patched command: {command[0]} {command[1][:40]}... {' '.join(command[2:])}"
            )

            self.say(
                "4/6 running the patched command as real processes (standing in for the "
                "container): a shell, its child shell, a grandchild reading a file"
            )
            session = stack.enter_context(self._spawn(command, env))
            bypass = stack.enter_context(self._spawn(["/bin/sh", "-c", "sleep 60; true"], env))
            procfs = ProcFS(Path("/proc"))
            chain = self._chain(session.pid, 3)
            infos = [procfs.read(pid) for pid in [*chain, bypass.pid]]
            if any(info is None for info in infos):
                raise DemoError("a demo process ended too early")
            root, child, grandchild, stray = (info for info in infos if info is not None)

            self.say(
                "5/6 STANDING IN FOR FALCO: turning those real processes into alerts in "
                "Falco's JSON shape and POSTing them one by one like http_output"
            )
            me = os.getpid()
            alerts = [
                # the env execve: its argv carries the token (what the shipped root rule sees)
                self._alert(
                    "Whoexec exec session root",
                    "Informational",
                    root,
                    "env",
                    " ".join(command[1:]),
                    [(me, "containerd-shim")],
                    tags=["whoexec", "whoexec_root"],
                    with_env=False,
                ),
                self._alert(
                    "Terminal shell in container",
                    "Notice",
                    root,
                    "sh",
                    " ".join(command[3:]),
                    [(me, "containerd-shim")],
                ),
                self._alert(
                    "Read sensitive file untrusted",
                    "Warning",
                    grandchild,
                    "tail",
                    f"-f {tmp / 'secrets.txt'}",
                    [(child.pid, "sh"), (root.pid, "sh"), (me, "containerd-shim")],
                    extra={"fd.name": str(tmp / "secrets.txt")},
                ),
                # bob's exec went around the webhook: no token anywhere
                self._alert(
                    "Terminal shell in container",
                    "Notice",
                    stray,
                    "sh",
                    "-c sleep 60; true",
                    [(me, "containerd-shim")],
                    with_env=False,
                ),
            ]
            for alert in alerts:
                status = self._post(
                    consumer,
                    "/falco",
                    json.dumps(alert).encode(),
                    {"User-Agent": "falcosecurity/falco"},
                )
                if status != 200:
                    raise DemoError(f"the consumer answered {status} to an alert")
            # and kube-apiserver's audit webhook backend reports both execs
            events = self._audit_events(admitted_at, annotations, original)
            status = self._post(consumer, "/k8s-audit", json.dumps(events).encode(), {})
            if status != 200:
                raise DemoError(f"the consumer answered {status} to the audit events")

            self.say("6/6 results")
            enriched = self._wait_enriched(tmp / "enriched.jsonl", 4)
            self.say("\n--- enriched alerts (what falcosidekick or your SIEM receives) ---")
            for alert in enriched:
                fields = alert["output_fields"]
                who = fields.get("whoexec.user.name") or "-"
                self.say(
                    f"[{alert['priority']}] {alert['rule']}: attribution="
                    f"{fields.get('whoexec.attribution', alert['source'])} user={who}"
                )
                output = alert["output"]
                self.say(f"    {'...' if len(output) > 150 else ''}{output[-150:]}")
            sid = annotations["session-id"]
            time.sleep(0.5)  # let the pipeline commit its last batch
            for title, argv in (
                (f"whoexec session {sid}", ["session", sid]),
                ("whoexec findings", ["findings", "--since", "1h"]),
            ):
                self.say(f"\n--- {title} ---")
                out = subprocess.run(
                    [*self.whoexec, *argv, "--db", db],
                    capture_output=True,
                    text=True,
                    env=env,
                    timeout=60,
                    check=False,
                )
                if out.returncode != 0:
                    raise DemoError(f"`{title}` failed: {out.stderr}")
                self.say(out.stdout.rstrip())
            named = [a for a in enriched if a["output_fields"].get("whoexec.user.name")]
            if len(named) < 2 or any(
                a["output_fields"]["whoexec.user.name"] != ALICE["username"] for a in named
            ):
                raise DemoError("the session's alerts were not attributed to alice")
            if self.keep:
                self.say(f"\nkept {tmp} (logs, certificates, whoexec.db)")
                self.say(
                    "explore the session in a browser, then open http://127.0.0.1:8080:\n"
                    f"    whoexec ui --db {db}"
                )
        if not self.keep:
            self.say(
                "\ndone: processes stopped, temporary files removed\n"
                "to explore the session in a browser: whoexec demo --keep, then the "
                "`whoexec ui` command it prints"
            )
        else:
            self.say("\ndone")
        return 0

    # -- helpers -------------------------------------------------------------------------

    @contextmanager
    def _spawn(self, argv: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
        proc = subprocess.Popen(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            yield proc
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    @staticmethod
    def _chain(pid: int, depth: int) -> list[int]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            chain = [pid]
            while len(chain) < depth:
                kids: list[int] = []
                for task in Path(f"/proc/{chain[-1]}/task").iterdir():
                    kids += [int(k) for k in (task / "children").read_text().split()]
                if not kids:
                    break
                chain.append(kids[0])
            if len(chain) == depth:
                return chain
            time.sleep(0.05)
        raise DemoError("the demo's processes did not start")

    def _alert(
        self,
        rule: str,
        priority: str,
        proc: Any,
        name: str,
        args: str,
        ancestors: list[tuple[int, str]],
        tags: list[str] | None = None,
        with_env: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        token = proc.token if with_env else None
        now = time.time_ns()
        fields: dict[str, Any] = {
            "container.id": CONTAINER_ID,
            "container.name": CONTAINER,
            "evt.time": now,
            "k8s.ns.name": NAMESPACE,
            "k8s.pod.name": POD,
            "k8s.pod.uid": POD_UID,
            "proc.args": args,
            "proc.cmdline": f"{name} {args}".strip(),
            "proc.env[WHOEXEC_IDENTITY]": token,
            "proc.aenv[WHOEXEC_IDENTITY]": None,
            "proc.name": name,
            "proc.pid": proc.pid,
            "proc.pid.ts": proc.start_ns,
            "proc.pname": ancestors[0][1],
            "proc.ppid": ancestors[0][0],
            "proc.tty": 34816,
            "proc.vpid": proc.pid % 1000 + 2,
            "user.loginuid": -1,
            "user.name": "root",
        }
        for n in range(1, 9):
            pid, aname = ancestors[n - 1] if n <= len(ancestors) else (None, None)
            fields[f"proc.apid[{n}]"] = pid
            fields[f"proc.aname[{n}]"] = aname
        fields.update(extra or {})
        clock = format_time_ns(now)[11:29]
        output = (
            f"{clock}: {priority} {rule} (user=root process={name} "
            f"parent={ancestors[0][1]} command={fields['proc.cmdline'][:60]} "
            f"container_id={CONTAINER_ID} k8s_ns={NAMESPACE} k8s_pod_name={POD})"
        )
        return dict(
            sorted(
                {
                    "hostname": self.host,
                    "output": output,
                    "output_fields": dict(sorted(fields.items())),
                    "priority": priority,
                    "rule": rule,
                    "source": "syscall",
                    "tags": tags or ["container", "maturity_stable", "mitre_execution", "shell"],
                    "time": format_time_ns(now),
                }.items()
            )
        )

    @staticmethod
    def _post(
        connect: Callable[[], http.client.HTTPConnection],
        path: str,
        body: bytes,
        headers: dict[str, str],
    ) -> int:
        conn = connect()
        try:
            conn.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
            )
            reply = conn.getresponse()
            reply.read()
            return int(reply.status)
        finally:
            conn.close()

    @staticmethod
    def _audit_events(
        admitted_at: datetime.datetime, annotations: dict[str, str], original: list[str]
    ) -> dict[str, Any]:
        now = admitted_at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

        def event(
            user: dict[str, Any], command: list[str], extra: dict[str, str]
        ) -> dict[str, Any]:
            from urllib.parse import urlencode

            query = urlencode(
                [("command", c) for c in command]
                + [("container", CONTAINER), ("stdin", "true"), ("stdout", "true"), ("tty", "true")]
            )
            return {
                "kind": "Event",
                "apiVersion": "audit.k8s.io/v1",
                "level": "Metadata",
                "auditID": str(uuid.uuid4()),
                "stage": "ResponseStarted",
                "requestURI": f"/api/v1/namespaces/{NAMESPACE}/pods/{POD}/exec?{query}",
                "verb": "create",
                "user": {k: v for k, v in user.items() if k != "extra"},
                "sourceIPs": ["127.0.0.1"],
                "userAgent": "kubectl/v1.34.1 (linux/amd64)",
                "objectRef": {
                    "resource": "pods",
                    "namespace": NAMESPACE,
                    "name": POD,
                    "apiVersion": "v1",
                    "subresource": "exec",
                },
                "responseStatus": {"metadata": {}, "code": 101},
                "requestReceivedTimestamp": now,
                "stageTimestamp": now,
                "annotations": {"authorization.k8s.io/decision": "allow", **extra},
            }

        ours = {f"{WEBHOOK}/{key}": value for key, value in annotations.items()}
        return {
            "kind": "EventList",
            "apiVersion": "audit.k8s.io/v1",
            "metadata": {},
            "items": [
                event(ALICE, original, ours),
                event(BOB, ["/bin/sh", "-c", "sleep 60; true"], {}),
            ],
        }

    @staticmethod
    def _wait_enriched(path: Path, count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if path.exists():
                lines = path.read_bytes().splitlines()
                if len(lines) >= count:
                    return [json.loads(line) for line in lines]
            time.sleep(0.1)
        raise DemoError("the consumer did not pass the alerts on")


class _ServerNameConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 and checks the certificate for the Service's DNS name."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__("127.0.0.1", port, context=context, timeout=10)
        self._context_for_name = context
        self._server_name = server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context_for_name.wrap_socket(sock, server_hostname=self._server_name)
