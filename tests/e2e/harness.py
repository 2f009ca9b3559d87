"""The real single-node cluster (``e2e/cluster``) and a real ``whoexec serve`` in front of it,
for the e2e tests (``conftest.py``) and the benchmarks (``bench/cluster.py``).

Everything here goes through the real kube-apiserver: the MutatingWebhookConfiguration
from ``manifests/``, RBAC, PodSecurity, the kubelet and containerd, the audit log.
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import http_ok
from tests.servers import ServerProcess

ROOT = Path(__file__).parent.parent.parent
CLUSTER = ROOT / "e2e" / "cluster"
MANIFESTS = ROOT / "manifests"
BIN = Path(os.environ.get("WHOEXEC_E2E_CACHE", "/var/cache/whoexec-e2e")) / "bin"
WHOEXEC = Path(sys.executable).parent / "whoexec"


@dataclass
class Cluster:
    dir: Path
    images: dict[str, str]

    @property
    def admin(self) -> Path:
        return self.dir / "admin.kubeconfig"

    @property
    def audit_log(self) -> Path:
        return self.dir / "audit.log"

    def kubectl(
        self,
        *args: str,
        user: Path | None = None,
        check: bool = True,
        stdin: str | bytes | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[bytes]:
        data = stdin.encode() if isinstance(stdin, str) else stdin
        done = subprocess.run(
            [str(BIN / "kubectl"), "--kubeconfig", str(user or self.admin), *args],
            input=data,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} failed ({done.returncode}): "
                f"{done.stderr.decode(errors='replace')}"
            )
        return done

    def apply(self, obj: dict[str, Any] | list[dict[str, Any]]) -> None:
        items = obj if isinstance(obj, list) else [obj]
        self.kubectl(
            "apply",
            "-f",
            "-",
            stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": items}),
        )

    def user(self, name: str, *groups: str) -> Path:
        out = subprocess.run(
            [str(CLUSTER), "user", str(self.dir), name, *groups],
            capture_output=True,
            check=True,
            text=True,
        )
        return Path(out.stdout.strip())

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def pod(self, namespace: str, name: str, image: str, **spec: Any) -> dict[str, Any]:
        """A host-network pod that sleeps, ready to exec into."""
        container = {
            "name": "app",
            "image": image,
            "imagePullPolicy": "Never",
            "command": spec.pop("command", ["/bin/sh", "-c", "sleep 100000"]),
        }
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "hostNetwork": True,
                "terminationGracePeriodSeconds": 0,
                "containers": [container],
                **spec,
            },
        }
        self.apply(body)
        self.kubectl(
            "wait",
            "-n",
            namespace,
            "--for=condition=Ready",
            f"pod/{name}",
            "--timeout=90s",
            timeout=100,
        )
        return self.get("-n", namespace, "pod", name)


def reserved_socket(port: int = 0, *, listening: bool) -> socket.socket:
    """A socket on 127.0.0.1:port with SO_REUSEPORT, so that a listening one and a merely
    bound one can hand the port over to each other without ever letting it go."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    if listening:
        sock.listen(128)
        sock.set_inheritable(True)
    return sock


@dataclass
class Webhook:
    """``whoexec serve`` on a listening socket that this process holds for the whole run:
    gunicorn takes it as ``--bind fd://N``, so a restart serves the same port (the one
    the MutatingWebhookConfiguration names). While stopped, the port is held by a socket
    that is bound and not listening: the apiserver's call is refused, as with a webhook
    that is down, and no other program can take the port meanwhile."""

    listener: socket.socket
    certs: Path
    identity_pub: Path
    env: dict[str, str]
    args: list[str]
    log_dir: Path
    server: ServerProcess | None = None
    placeholder: socket.socket | None = None

    @property
    def port(self) -> int:
        sock = self.placeholder or self.listener
        return int(sock.getsockname()[1])

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.placeholder is None:
            self.placeholder = reserved_socket(self.port, listening=False)
            self.listener.close()

    def close(self) -> None:
        """The end of the run: stop the server and let the port go."""
        self.stop()
        for sock in (self.listener, self.placeholder):
            if sock is not None:
                sock.close()

    def start(self) -> None:
        if self.placeholder is not None:
            self.listener = reserved_socket(self.port, listening=True)
            self.placeholder.close()
            self.placeholder = None
        fd = self.listener.fileno()
        self.server = ServerProcess(
            [*self.args, "--bind", f"fd://{fd}"],
            self.log_dir / f"serve-{time.monotonic_ns()}.log",
            self.env,
            pass_fds=(fd,),
        )
        context = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))

        def probe() -> bool:
            return http_ok(
                lambda: http.client.HTTPSConnection(
                    "127.0.0.1", self.port, context=context, timeout=2
                ),
                "/readyz",
            )

        self.server.wait_until(probe, "whoexec serve", seconds=60)


def service_account_kubeconfig(cluster: Cluster, token: str) -> Path:
    admin = yaml.safe_load(cluster.admin.read_text())
    config = copy.deepcopy(admin)
    config["users"] = [{"name": "whoexec-webhook", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "whoexec-webhook"
    path = cluster.dir / "whoexec-webhook.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def webhook_configuration(port: int, ca_bundle: str) -> dict[str, Any]:
    """The manifests' MutatingWebhookConfiguration, pointed at the local server."""
    config = yaml.safe_load((MANIFESTS / "base" / "mutatingwebhookconfiguration.yaml").read_text())
    for hook in config["webhooks"]:
        hook["clientConfig"] = {"url": f"https://127.0.0.1:{port}/mutate", "caBundle": ca_bundle}
    return config


def wait_for_webhook(cluster: Cluster, seconds: float = 30) -> None:
    """Until a pod created now gets the static env (the pod CREATE webhook answered)."""
    cluster.kubectl("create", "namespace", "probe", check=False)

    def mutated() -> bool:
        done = cluster.kubectl(
            "run",
            "-n",
            "probe",
            f"p{int(time.monotonic() * 1000)}",
            "--image",
            cluster.images["with-env"],
            "--image-pull-policy",
            "Never",
            "--dry-run=server",
            "-o",
            "json",
            "--",
            "true",
        )
        return '"whoexec-env"' in done.stdout.decode()

    try:
        eventually(mutated, seconds, "the apiserver calling the whoexec webhook")
    except AssertionError as exc:
        raise RuntimeError(str(exc)) from None


def eventually(check: Any, seconds: float = 30, what: str = "the condition") -> Any:
    """Poll ``check`` until it returns something true, and return that."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} never happened in {seconds:g}s")


def token_from_environ(environ: bytes) -> str:
    for entry in environ.split(b"\0"):
        if entry.startswith(b"WHOEXEC_IDENTITY="):
            return entry.split(b"=", 1)[1].decode()
    raise AssertionError(f"no WHOEXEC_IDENTITY in {environ[:300]!r}")


def start_cluster(where: Path) -> Cluster:
    """``e2e/cluster up``: builds what is missing (cached), then waits for the node."""
    up = subprocess.run(
        [str(CLUSTER), "up", str(where)], capture_output=True, text=True, timeout=2400, check=False
    )
    if up.returncode != 0:
        # a negative code is the signal that ended it (the OOM killer says nothing itself)
        raise RuntimeError(
            f"e2e/cluster up exited with {up.returncode}:\n{up.stderr[-4000:]}"
            f"\nits last output:\n{up.stdout[-1000:]}"
        )
    return Cluster(where, json.loads((where / "images.json").read_text()))


def stop_cluster(where: Path) -> None:
    """``e2e/cluster down``, then the directory goes (etcd data, keys, logs)."""
    subprocess.run([str(CLUSTER), "down", str(where)], capture_output=True, check=False)
    shutil.rmtree(where, ignore_errors=True)


def install_webhook(cluster: Cluster) -> Webhook:
    """``whoexec serve --kube`` as the manifests' ServiceAccount, and the manifests'
    MutatingWebhookConfiguration pointed at it. Pods made before it are in ``legacy``."""
    # the manifests' namespace, ServiceAccount and least-privilege ClusterRole
    for name in ("namespace.yaml", "serviceaccounts.yaml"):
        cluster.kubectl("apply", "-n", "whoexec", "-f", str(MANIFESTS / "base" / name))
    token = (
        cluster.kubectl("create", "token", "whoexec-webhook", "-n", "whoexec", "--duration", "3h")
        .stdout.decode()
        .strip()
    )
    kubeconfig = service_account_kubeconfig(cluster, token)
    certs = cluster.dir / "whoexec-certs"
    subprocess.run([str(WHOEXEC), "certs", "--out", str(certs)], check=True, capture_output=True)
    listener = reserved_socket(listening=True)
    env = {
        **os.environ,
        "WHOEXEC_STATIC_ENV_IMAGE": cluster.images["whoexec"],
        "WHOEXEC_LOG_LEVEL": "info",
    }
    args = [
        str(WHOEXEC),
        "serve",
        "--certs",
        str(certs),
        "--workers",
        "2",
        "--kube",
        str(kubeconfig),
    ]
    # pods created before whoexec is installed: they never get the static env
    cluster.kubectl("create", "namespace", "legacy", check=False)
    cluster.pod("legacy", "old-debian", cluster.images["with-env"])
    cluster.pod("legacy", "old-distroless", cluster.images["without-env"])
    hook = Webhook(listener, certs, certs / "identity.pub", env, args, cluster.dir)
    hook.start()
    ca_bundle = base64.b64encode((certs / "ca.crt").read_bytes()).decode()
    cluster.apply(webhook_configuration(hook.port, ca_bundle))
    # RBAC for the people of the tests: exec, attach, debug in any namespace
    cluster.apply(
        [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": "e2e-exec"},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
                    {
                        "apiGroups": [""],
                        "resources": ["pods/exec", "pods/attach", "pods/ephemeralcontainers"],
                        "verbs": ["get", "create", "patch", "update"],
                    },
                ],
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": "e2e-exec"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": "e2e-exec",
                },
                "subjects": [
                    {"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}
                ],
            },
        ]
    )
    # the apiserver reads webhook configurations through an informer: wait until it calls us
    wait_for_webhook(cluster)
    return hook
