"""The real thing: `whoexec certs` then `whoexec serve` (gunicorn, gthread, TLS) on 127.0.0.1."""

from __future__ import annotations

import base64
import datetime
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.conftest import http_ok, load_json
from tests.hostile_servers import tls_1_1_client
from tests.servers import ServerProcess, serve_argv
from webhook.admission.certs import issue_serving_certificate, service_dns_names
from webhook.identity import verify_token
from webhook.keyfiles import load_key_ring

pytestmark = pytest.mark.slow
SERVER_NAME = "whoexec.whoexec.svc"


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """Connects to 127.0.0.1 but checks the certificate for the Service's DNS name."""

    def __init__(self, port: int, context: ssl.SSLContext, server_name: str = SERVER_NAME):
        super().__init__("127.0.0.1", port, context=context, timeout=10)
        self._server_name = server_name
        self._ctx = context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._ctx.wrap_socket(sock, server_hostname=self._server_name)


def whoexec(*args: str, **kwargs) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "webhook.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        **kwargs,
    )


def client_context(certs: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tls") / "certs"
    result = whoexec("certs", "--service", "whoexec", "--namespace", "whoexec", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def server(certs: Path, tmp_path_factory) -> Iterator[int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    served = ServerProcess(
        serve_argv(
            certs,
            "--workers",
            "2",
            "--threads",
            "4",
            "--env-trusted-namespace",
            "*",
        ),
        tmp_path_factory.mktemp("serve") / "serve.log",
        env,
    )
    served.wait_until(
        lambda: http_ok(
            lambda: PinnedHTTPSConnection(served.port, client_context(certs)), "/readyz"
        ),
        "whoexec serve",
    )
    yield served.port
    assert served.stop() == 0, served.output()


Connect = Callable[..., PinnedHTTPSConnection]


@pytest.fixture
def connect(server: int, certs: Path) -> Iterator[Connect]:
    opened: list[http.client.HTTPConnection] = []

    def factory(context: ssl.SSLContext | None = None) -> PinnedHTTPSConnection:
        conn = PinnedHTTPSConnection(server, context or client_context(certs))
        opened.append(conn)
        return conn

    yield factory
    for conn in opened:
        conn.close()


def post_review(conn: http.client.HTTPSConnection, review: dict) -> dict:
    conn.request(
        "POST", "/mutate", body=json.dumps(review), headers={"Content-Type": "application/json"}
    )
    reply = conn.getresponse()
    assert reply.status == 200
    return json.loads(reply.read())


def test_exec_review_over_tls_returns_a_verified_patch(connect, certs):
    conn = connect()
    review = load_json("admission/exec_interactive_shell.json")
    response = post_review(conn, review)["response"]
    assert response["uid"] == review["request"]["uid"]
    ops = json.loads(base64.b64decode(response["patch"]))
    command = ops[0]["value"]
    assert command[0] == "/usr/bin/env" and command[2:] == ["/bin/bash"]
    token = command[1].removeprefix("WHOEXEC_IDENTITY=")
    identity = verify_token(token, load_key_ring([certs / "identity.pub"]), now=int(time.time()))
    assert identity.user == "alice@corp.example"


def test_connection_is_kept_alive_across_admissions(connect):
    conn = connect()
    review = load_json("admission/exec_kubectl_cp_tar.json")
    post_review(conn, review)
    first_socket = conn.sock
    for _ in range(5):
        post_review(conn, review)
    assert conn.sock is first_socket, "gunicorn closed the keep-alive connection"


def test_malformed_review_over_tls_gets_400(connect):
    conn = connect()
    conn.request("POST", "/mutate", body=b"{]", headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 400
    assert "not JSON" in json.loads(reply.read())["error"]


def test_tls_below_1_2_is_refused(connect, certs):
    conn = connect(tls_1_1_client(certs / "ca.crt"))
    with pytest.raises(ssl.SSLError):
        conn.connect()


def test_plain_http_is_not_served(server):
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    try:
        conn.request("GET", "/healthz")  # plain text into a TLS listener
        with pytest.raises((http.client.HTTPException, ConnectionError)):
            conn.getresponse()
    finally:
        conn.close()


def test_metrics_are_aggregated_across_workers(connect):
    conn = connect()
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    injected = [
        line
        for line in text.splitlines()
        if line.startswith('whoexec_admissions_total{outcome="injected"}')
    ]
    assert injected and float(injected[0].split()[1]) >= 1


def test_rotated_certificate_is_served_to_new_connections_without_dropping_old_ones(connect, certs):
    old = connect()
    post_review(old, load_json("admission/exec_interactive_shell.json"))
    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    cert, key = issue_serving_certificate(
        ca,
        ca_key,
        service_dns_names("whoexec", "whoexec"),  # type: ignore[arg-type]
        datetime.datetime.now(datetime.UTC),
        days=30,
    )
    # the way kubelet updates a projected Secret: new files, then an atomic swap
    for name, data in (
        (
            "tls.key",
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        ),
        ("tls.crt", cert.public_bytes(serialization.Encoding.PEM)),
    ):
        tmp = certs / f".{name}.new"
        tmp.write_bytes(data)
        tmp.chmod(0o600)
        tmp.replace(certs / name)
    new = connect()
    new.connect()
    served = x509.load_der_x509_certificate(new.sock.getpeercert(binary_form=True))
    assert served.serial_number == cert.serial_number
    post_review(new, load_json("admission/exec_interactive_shell.json"))
    post_review(old, load_json("admission/exec_interactive_shell.json"))


def test_serve_without_certificates_fails_with_a_clear_error(tmp_path):
    result = whoexec("serve", "--certs", str(tmp_path / "missing"), "--bind", "127.0.0.1:1")
    assert result.returncode == 1
    assert "run `whoexec certs" in result.stderr
    assert "Traceback" not in result.stderr
