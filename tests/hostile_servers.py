"""What the hostile-client tests share: keys, Falco-shaped sessions, and the real servers
started as a user starts them (``whoexec consume --listen``, ``whoexec ui``, ``whoexec
serve``) on 127.0.0.1, each stopped after its test."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import socket
import ssl
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webhook.identity import Identity, Signer, sign_identity

from .conftest import DATA, http_ok
from .servers import ServerProcess, serve_argv

_spec = importlib.util.spec_from_file_location("make_fixtures", DATA / "falco" / "make_fixtures.py")
assert _spec is not None and _spec.loader is not None
fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fixtures)

S = 1_000_000_000
FALCO_HEADERS = {"Content-Type": "application/json", "User-Agent": "falcosecurity/falco"}


class Keys:
    """A throwaway identity key pair: the public key in a file, tokens signed with it."""

    def __init__(self, folder: Path) -> None:
        key = Ed25519PrivateKey.generate()
        self.signer = Signer(key)
        self.pub = folder / "identity.pub"
        self.pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )

    def token(self, sid: str, user: str, t0: int) -> str:
        ns, pod, container, pod_uid = fixtures.SHOP
        identity = Identity(sid, user, "", ("devs",), ns, pod, container, t0 // S - 1, pod_uid)
        return sign_identity(identity, self.signer)


def session_alerts(keys: Keys, sid: str, user: str, n: int = 1) -> list[dict[str, Any]]:
    """A session root and one alert under it, a few minutes old."""
    t0 = (time.time_ns() // S - 300) * S
    token = keys.token(sid, user, t0)
    root_pid = 4000 + 10 * n
    root = fixtures.root_alert(t0 + 200, root_pid, t0 + 100, token, "/bin/sh")
    child = fixtures.alert(
        f"Read sensitive file {n}",
        "Warning",
        t=t0 + 500,
        pid=root_pid + 1,
        vpid=9,
        pid_ts=t0 + 400,
        name="cat",
        args="/etc/shadow",
        env_var=token,
        ancestors=[(root_pid, "sh"), (fixtures.SHIM, "containerd-shim")],
    )
    return [root, child]


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    return env | extra


class Served:
    """A real server and plain-HTTP requests to it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.port = server.port

    def connection(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            reply = conn.getresponse()
            return reply.status, dict(reply.getheaders()), reply.read()
        finally:
            conn.close()

    def json(self, method: str, path: str, body: bytes | None = None, **headers: str) -> Any:
        status, _, data = self.request(method, path, body, headers)
        assert status == 200, (path, status, data[:300])
        return json.loads(data)

    def stored(self, path: str) -> Any:
        """``GET path`` as JSON, or None while it is 404 (not written by the store yet)."""
        status, _, data = self.request("GET", path)
        if status == 404:
            return None
        assert status == 200, (path, status, data[:300])
        return json.loads(data)


def start_consumer(folder: Path, keys: Keys, *extra: str) -> Served:
    """``whoexec consume --listen 127.0.0.1:0 --db sqlite:///...``, its pipeline up."""
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "webhook.cli",
            "consume",
            "--listen",
            "127.0.0.1:0",
            "--identity-pub",
            str(keys.pub),
            "--db",
            f"sqlite:///{folder}/whoexec.db",
            "--state-dir",
            str(folder / "state"),
            "--output",
            str(folder / "enriched.jsonl"),
            "--no-stdout",
            "--hold",
            "0",
            *extra,
        ],
        folder / "consumer.log",
        clean_env(),
    )
    served = Served(server)
    server.wait_until(lambda: http_ok(served.connection, "/readyz"), "the consumer's pipeline")
    return served


def start_ui(db: str, folder: Path, token: str, *extra: str, certs: Path | None = None) -> Served:
    """``whoexec ui --bind 127.0.0.1:0`` with a token, as served to others; with ``certs``,
    over TLS with their serving certificate."""
    tls = ["--tls-cert", f"{certs}/tls.crt", "--tls-key", f"{certs}/tls.key"] if certs else []
    server = ServerProcess(
        [sys.executable, "-m", "webhook.cli", "ui", "--db", db, "--bind", "127.0.0.1:0", *tls,
         *extra],
        folder / "ui.log",
        clean_env(WHOEXEC_UI_TOKEN=token, WHOEXEC_STATE_DIR=str(folder / "ui-state")),
    )  # fmt: skip
    served = Served(server) if certs is None else ServedTLS(server, certs)
    server.wait_until(lambda: http_ok(served.connection, "/healthz"), "whoexec ui")
    return served


def eventually(probe: Callable[[], Any], what: str, seconds: float = 20) -> Any:
    """Poll until ``probe`` returns something true (the pipeline runs in its own process)."""
    deadline = time.monotonic() + seconds
    while True:
        found = probe()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {seconds} s")
        time.sleep(0.05)


def json_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class ServedTLS(Served):
    """``whoexec serve``: TLS, checked against the CA for the Service's name."""

    def __init__(self, server: ServerProcess, certs: Path) -> None:
        super().__init__(server)
        self.context = ssl.create_default_context(cafile=str(certs / "ca.crt"))

    def connection(self) -> http.client.HTTPConnection:
        context, port = self.context, self.port

        class Pinned(http.client.HTTPSConnection):
            def connect(self) -> None:
                sock = socket.create_connection(("127.0.0.1", port), 15)
                self.sock = context.wrap_socket(sock, server_hostname="whoexec.whoexec.svc")

        return Pinned("127.0.0.1", port, timeout=15)


def start_webhook(folder: Path, certs: Path, *extra: str) -> ServedTLS:
    """``whoexec serve`` as the apiserver meets it, vouching for ``/usr/bin/env`` everywhere
    (no pod cache here)."""
    server = ServerProcess(
        serve_argv(
            certs,
            "--workers",
            "1",
            "--threads",
            "4",
            "--env-trusted-namespace",
            "*",
            *extra,
        ),
        folder / f"serve-{len(list(folder.glob('serve-*.log')))}.log",
        clean_env(),
    )
    served = ServedTLS(server, certs)
    server.wait_until(lambda: http_ok(served.connection, "/readyz"), "whoexec serve")
    return served


def tls_1_1_client(ca: Path) -> ssl.SSLContext:
    """A client that trusts ``ca`` and offers nothing newer than TLS 1.1."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(ca))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: the point
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    return context
