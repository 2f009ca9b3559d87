"""The real falcosidekick on both sides of whoexec (the README's two wirings).

falcosidekick is how most users ship Falco's alerts, so both wirings run the real one:

- Falco -> falcosidekick (webhook output) -> ``whoexec consume --listen``;
- ``whoexec consume --forward`` -> falcosidekick (webhook output) -> a receiver, which
  must get every ``whoexec.*`` field intact.

It needs a falcosidekick binary in ``WHOEXEC_FALCOSIDEKICK``. The Go module proxy this
project builds from does not serve ``github.com/falcosecurity/falcosidekick`` (403 for
every version, #12), so CI cannot build it; build it from its source
(``go build .`` in a checkout) and point the variable at it.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import DATA, http_ok
from tests.servers import ServerProcess

FALCOSIDEKICK = os.environ.get("WHOEXEC_FALCOSIDEKICK", "")
FALCO = DATA / "falco"
LINES = (FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not (FALCOSIDEKICK and Path(FALCOSIDEKICK).is_file()),
        reason="set WHOEXEC_FALCOSIDEKICK to a falcosidekick binary: the Go module proxy "
        "does not serve falcosidekick, so it cannot be built here (#12)",
    ),
]


class Receiver:
    """Records every POST body, as falcosidekick's webhook output sends them."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.arrived = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.arrived:
                    receiver.bodies.append(json.loads(body))
                    receiver.arrived.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, count: int) -> list[dict]:
        with self.arrived:
            assert self.arrived.wait_for(lambda: len(self.bodies) >= count, timeout=30), (
                f"{len(self.bodies)} of {count} bodies arrived"
            )
            return list(self.bodies)


@pytest.fixture
def servers(tmp_path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()


def start_falcosidekick(tmp_path: Path, webhook: str, started: list[ServerProcess]) -> int:
    # falcosidekick refuses port 0, so the port is chosen here; a lost race is retried
    for attempt in range(3):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        env = {
            "PATH": os.environ.get("PATH", ""),
            "LISTENADDRESS": "127.0.0.1",
            "LISTENPORT": str(port),
            "WEBHOOK_ADDRESS": webhook,
        }
        log = tmp_path / f"falcosidekick-{len(started)}-{attempt}.log"
        try:
            server = ServerProcess(
                [FALCOSIDEKICK], log, env, listening=rb"is up and listening on [\d.]+:(\d+)"
            )
        except AssertionError:
            if b"address already in use" in log.read_bytes():
                continue
            raise
        started.append(server)
        return port
    raise AssertionError("falcosidekick found no free port in 3 tries")


def start_consumer(tmp_path: Path, started: list[ServerProcess], *extra: str) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    n = len(started)
    server = ServerProcess(
        [
            sys.executable, "-m", "webhook.cli", "consume",
            "--listen", "127.0.0.1:0", "--identity-pub", str(FALCO / "identity.pub"),
            "--no-stdout", "--hold", "0", "--state-dir", str(tmp_path / f"state-{n}"), *extra,
        ],
        tmp_path / f"consumer-{n}.log",
        env,
    )  # fmt: skip
    started.append(server)
    return server


def post_to_falcosidekick(port: int, line: bytes) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("POST", "/", body=line, headers={"Content-Type": "application/json"})
    reply = conn.getresponse()
    assert reply.status == 200, reply.read()
    conn.close()


def test_falco_to_falcosidekick_to_whoexec_attributes_every_alert(tmp_path, servers):
    output = tmp_path / "enriched.jsonl"
    consumer = start_consumer(tmp_path, servers, "--output", str(output))
    port = start_falcosidekick(tmp_path, f"{consumer.url}/falco", servers)
    for line in LINES:  # Falco's http_output: one alert per POST
        post_to_falcosidekick(port, line)
    consumer.wait_until(
        lambda: output.exists() and len(output.read_bytes().splitlines()) >= 2,
        "the enriched alerts",
    )
    alerts = [json.loads(line) for line in output.read_bytes().splitlines()]
    assert [a["output_fields"]["whoexec.user.name"] for a in alerts] == ["alice@corp.example"] * 2
    assert all(a["output_fields"]["whoexec.attribution"] == "verified" for a in alerts)
    assert all(a.get("uuid") for a in alerts), "falcosidekick's uuid is kept"


def test_whoexec_forward_to_falcosidekick_keeps_every_whoexec_field(tmp_path, servers):
    receiver = Receiver()
    port = start_falcosidekick(tmp_path, f"http://127.0.0.1:{receiver.port}/", servers)
    output = tmp_path / "enriched.jsonl"
    consumer = start_consumer(
        tmp_path, servers, "--forward", f"http://127.0.0.1:{port}/", "--output", str(output)
    )

    def connect() -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", consumer.port, timeout=10)

    consumer.wait_until(lambda: http_ok(connect, "/healthz"), "the consumer")
    conn = connect()
    conn.request("POST", "/falco", body=b"\n".join(LINES))
    assert conn.getresponse().status == 200
    conn.close()
    delivered = receiver.wait_for(2)
    consumer.wait_until(
        lambda: output.exists() and len(output.read_bytes().splitlines()) >= 2, "the output"
    )
    sent = [json.loads(line) for line in output.read_bytes().splitlines()]

    def by_pid(alert: dict) -> int:
        return int(alert["output_fields"]["proc.pid"])

    assert len(delivered) == len(sent) == 2
    for ours, theirs in zip(sorted(sent, key=by_pid), sorted(delivered, key=by_pid), strict=True):
        expected = {k: v for k, v in ours["output_fields"].items() if k.startswith("whoexec.")}
        assert expected, "the alert was enriched"
        got = {k: v for k, v in theirs["output_fields"].items() if k.startswith("whoexec.")}
        assert got == expected, "every whoexec.* field arrives intact"
        assert theirs["rule"] == ours["rule"]
