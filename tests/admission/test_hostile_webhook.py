"""Hostile clients against the real `whoexec serve` (issue #21): admissions keep coming.

The server runs as a user starts it, on 127.0.0.1, with deadlines of 1 s so that the
tests stay short. Every attack is bounded in connections and time. The promise under
test: while it lasts, every admission is answered 200, correctly, within 2 s (a
correctness bound: the apiserver gives up at 3 s), and the server closes the hostile
connections itself.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import http_ok, load_json
from tests.hostile import Hostile, metric_value, tree_rss
from tests.servers import ServerProcess, serve_argv

pytestmark = pytest.mark.slow

REVIEW = load_json("admission/exec_interactive_shell.json")
BOUND = 2.0  # seconds: an admission later than this would be as good as lost
DEADLINE = 1.0  # the server's handshake, header and body deadlines in these tests
PER_WORKER = 50  # connections per worker in small_webhook: its cap is reached cheaply


class Webhook:
    def __init__(self, server: ServerProcess, certs: Path) -> None:
        self.server, self.port = server, server.port
        self.ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        self.ctx.check_hostname = False  # the certificate names localhost; we dial 127.0.0.1

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx, timeout=10)

    def admit(self, conn: http.client.HTTPSConnection | None = None) -> float:
        """One exec admission (on a new connection unless given one): its seconds; it
        must be answered 200 with the rewrite."""
        own = conn is None
        conn = conn or self.connection()
        started = time.monotonic()
        try:
            conn.request(
                "POST",
                "/mutate",
                body=json.dumps(REVIEW),
                headers={"Content-Type": "application/json"},
            )
            reply = conn.getresponse()
            body = reply.read()
        finally:
            if own:
                conn.close()
        elapsed = time.monotonic() - started
        assert reply.status == 200, body[:300]
        response = json.loads(body)["response"]
        assert response["uid"] == REVIEW["request"]["uid"] and response["allowed"] is True
        command = json.loads(base64.b64decode(response["patch"]))[0]["value"]
        assert command[0] == "/usr/bin/env" and command[2:] == ["/bin/bash"]
        return elapsed

    def admissions_during(self, seconds: float) -> list[float]:
        """Admissions for ``seconds``, half on new connections and half on one kept alive
        (the apiserver does both): how long each took."""
        took: list[float] = []
        kept = self.connection()
        try:
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                took.append(self.admit())
                took.append(self.admit(kept))
                time.sleep(0.05)
        finally:
            kept.close()
        return took

    def metric(self, name: str, labels: str) -> float:
        return metric_value(self.connection(), name, labels)

    def raw(self, data: bytes) -> bytes:
        """Bytes sent as they are over TLS; everything answered until the server closes."""
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=10) as plain,
            self.ctx.wrap_socket(plain, server_hostname="localhost") as sock,
        ):
            sock.sendall(data)
            chunks = []
            while True:
                try:
                    chunk = sock.recv(65536)
                except (ssl.SSLError, ConnectionError):
                    break
                if not chunk:
                    break
                chunks.append(chunk)
        return b"".join(chunks)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    import subprocess

    out = tmp_path_factory.mktemp("hostile-tls") / "certs"
    subprocess.run(
        [sys.executable, "-m", "webhook.cli", "certs", "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


def start_webhook(certs: Path, log: Path, **env_extra: str) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    env.update(
        {
            "WHOEXEC_HANDSHAKE_TIMEOUT": str(DEADLINE),
            "WHOEXEC_HEADER_TIMEOUT": str(DEADLINE),
            "WHOEXEC_BODY_TIMEOUT": str(DEADLINE),
            **env_extra,
        }
    )
    return ServerProcess(
        serve_argv(
            certs,
            "--workers",
            "2",
            "--env-trusted-namespace",
            "*",
        ),
        log,
        env,
    )


@pytest.fixture(scope="module")
def webhook(certs: Path, tmp_path_factory) -> Iterator[Webhook]:
    """`whoexec serve` as shipped, but for its 1 s deadlines."""
    served = start_webhook(certs, tmp_path_factory.mktemp("hostile-serve") / "serve.log")
    hook = Webhook(served, certs)
    served.wait_until(lambda: http_ok(hook.connection, "/readyz"), "whoexec serve")
    yield hook
    assert served.stop() == 0, served.output()
    assert "Traceback" not in served.output(), served.output()


@pytest.fixture(scope="module")
def small_webhook(certs: Path, tmp_path_factory) -> Iterator[Webhook]:
    """The same with a cap of PER_WORKER connections per worker, reached cheaply."""
    served = start_webhook(
        certs,
        tmp_path_factory.mktemp("hostile-serve-small") / "serve.log",
        WHOEXEC_WORKER_CONNECTIONS=str(PER_WORKER),
    )
    hook = Webhook(served, certs)
    served.wait_until(lambda: http_ok(hook.connection, "/readyz"), "whoexec serve")
    yield hook
    assert served.stop() == 0, served.output()
    assert "Traceback" not in served.output(), served.output()


def wait_all_closed(hostile: Hostile, seconds: float = 15.0) -> None:
    """Open no more, and wait until the server has closed every hostile connection left."""
    hostile.reopen = False
    deadline = time.monotonic() + seconds
    while hostile.open_now() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert hostile.open_now() == 0, f"{hostile.open_now()} hostile connections still open"


@pytest.mark.parametrize(
    ("attack", "count", "reason"),
    [
        ("tls_stall", 120, "handshake_timeout"),
        ("silent", 40, "handshake_timeout"),
        ("partial_headers", 20, "header_timeout"),
        ("slow_body", 20, "body_timeout"),
    ],
)
def test_admissions_are_answered_in_time_while_clients_stall(webhook, attack, count, reason):
    before = webhook.metric("whoexec_webhook_connections_closed_total", f'reason="{reason}"')
    with Hostile(
        webhook.port, {attack: count}, tls=webhook.ctx, path="/mutate", drip=0.3
    ) as hostile:
        took = webhook.admissions_during(3 * DEADLINE)
        assert max(took) < BOUND, sorted(took)[-5:]
        wait_all_closed(hostile)
    after = webhook.metric("whoexec_webhook_connections_closed_total", f'reason="{reason}"')
    assert after - before >= count, "each was closed at its deadline, and counted"


def test_a_client_past_its_header_or_body_deadline_is_told_408(webhook):
    attacks = {"partial_headers": 2, "slow_body": 2}
    with Hostile(webhook.port, attacks, tls=webhook.ctx, path="/mutate") as h:
        wait_all_closed(h)
    for attack in ("partial_headers", "slow_body"):
        assert h.closed[attack].answers[0].startswith(b"HTTP/1.1 408 "), h.closed[attack].answers


@pytest.mark.parametrize("attack", ["partial_headers", "slow_body"])
def test_a_client_that_stops_sending_mid_request_is_told_408_at_the_deadline(webhook, attack):
    """Not only a client that drips past the deadline (its next byte meets it): one that
    sends nothing more at all, after its handshake, is closed when its phase is due."""
    with Hostile(webhook.port, {attack: 2}, tls=webhook.ctx, path="/mutate", drip=60) as h:
        wait_all_closed(h, seconds=10 * DEADLINE)
    assert all(a.startswith(b"HTTP/1.1 408 ") for a in h.closed[attack].answers), h.closed


def test_two_hundred_hostile_connections_at_once_delay_no_admission(webhook):
    attacks = {"tls_stall": 80, "silent": 40, "partial_headers": 40, "slow_body": 40}
    rss_before = tree_rss(webhook.server.pid)
    with Hostile(webhook.port, attacks, tls=webhook.ctx, path="/mutate", drip=0.3) as hostile:
        took = webhook.admissions_during(4 * DEADLINE)
        assert max(took) < BOUND, sorted(took)[-5:]
        # each of the 200 was opened, closed by the server and opened again meanwhile
        assert all(len(hostile.closed[a].closed_after) >= n for a, n in attacks.items())
    assert tree_rss(webhook.server.pid) < rss_before + 64 * 1024 * 1024


@pytest.mark.parametrize("attack", ["idle", "tls_stall"])
def test_connections_past_the_cap_give_way_to_new_admissions(small_webhook, attack):
    # both workers' connections filled, and more: idle kept-alive connections, or
    # stalled handshakes opened again as soon as they are closed
    hook = small_webhook
    before = hook.metric("whoexec_webhook_connections_closed_total", 'reason="made_room"')
    with Hostile(hook.port, {attack: 2 * PER_WORKER + 20}, tls=hook.ctx, seconds=60):
        took = [hook.admit() for _ in range(20)]  # new connections: they need room
        assert max(took) < BOUND, sorted(took)[-5:]
    assert hook.metric("whoexec_webhook_connections_closed_total", 'reason="made_room"') > before


def test_at_the_cap_a_request_under_way_never_gives_way(certs, tmp_path):
    """Only a connection waiting on its client (handshake, headers, idle) may be closed
    for a new one: a body still arriving is a request under way, ended by its own
    deadline with a 408, never by the cap."""
    served = start_webhook(
        certs,
        tmp_path / "serve.log",
        WHOEXEC_WORKER_CONNECTIONS=str(PER_WORKER),
        WHOEXEC_BODY_TIMEOUT="6",  # time for the flood to come while the bodies arrive
    )
    hook = Webhook(served, certs)
    try:
        served.wait_until(lambda: http_ok(hook.connection, "/readyz"), "whoexec serve")
        # fewer than a worker's reserve below its cap, however the two workers share them
        count = PER_WORKER // 3
        bodies = Hostile(hook.port, {"slow_body": count}, tls=hook.ctx, drip=0.3)
        with bodies:
            time.sleep(2.0)  # past every handshake and header: each body is under way
            bodies.reopen = False
            with Hostile(hook.port, {"silent": 3 * PER_WORKER}, seconds=30):
                wait_all_closed(bodies, seconds=20)
        assert hook.metric("whoexec_webhook_connections_closed_total", 'reason="made_room"')
        answers = bodies.closed["slow_body"].answers
        assert len(answers) == count, "none was closed before the flood"
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers), answers
    finally:
        assert served.stop() == 0, served.output()


def test_a_client_that_pipelines_and_never_reads_holds_no_memory(webhook):
    from tests.hostile_servers import eventually

    def closed() -> float:
        return webhook.metric("whoexec_webhook_connections_closed_total", 'reason="write_timeout"')

    rss_before = tree_rss(webhook.server.pid)
    before = closed()
    with (
        socket.create_connection(("127.0.0.1", webhook.port), timeout=10) as plain,
        webhook.ctx.wrap_socket(plain, server_hostname="localhost") as tls,
    ):
        tls.setblocking(False)
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n" * 2000
        sent, stop = 0, time.monotonic() + 5
        while time.monotonic() < stop and sent < 256 * 1024 * 1024:
            try:
                sent += tls.send(request)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                time.sleep(0.01)
            except OSError:
                break  # closed by the server: its answers went unread past the deadline
        assert webhook.admit() < BOUND
        # still connected, reading nothing: closed at the write deadline, and counted
        eventually(lambda: closed() > before, what="a write_timeout close")
    assert tree_rss(webhook.server.pid) < rss_before + 64 * 1024 * 1024


SMUGGLING = {
    "cl-and-te": b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 40\r\n\r\n{}",
    "obs-fold": b"POST /mutate HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "bad-chunk": b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_request_smuggling_gets_400_and_the_connection_closes(webhook, request_bytes):
    trailer = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # must never be served
    answer = webhook.raw(request_bytes + trailer)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer


def test_pipelined_requests_are_answered_in_order(webhook):
    body = json.dumps(REVIEW).encode()
    mutate = b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    answer = webhook.raw(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + mutate
        + b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    statuses = [part[:3] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200"] * 3
    assert answer.index(b'"ok"') < answer.index(b'"patch"') < answer.index(b'"ready"')


def test_expect_100_continue_gets_its_interim_answer_then_the_admission(webhook):
    # curl sends "Expect: 100-continue" for bodies over 1 KiB and waits for it
    body = json.dumps(REVIEW).encode()
    answer = webhook.raw(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    )
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ")
    assert b'"patch"' in answer


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_of_exactly_the_limit_is_read_and_the_connection_kept_alive(webhook, chunked):
    limit = 3 * 1024 * 1024  # kube-apiserver's own, the webhook's default
    body = b"[" + b" " * (limit - 2) + b"]"  # JSON, but no AdmissionReview: a 400
    headers = {"Content-Type": "application/json"}
    if not chunked:
        headers["Content-Length"] = str(limit)
    conn = webhook.connection()
    try:
        conn.request("POST", "/mutate", body=iter([body]) if chunked else body, headers=headers)
        first = conn.getresponse()
        first.read()
        assert first.status == 400 and first.getheader("Connection") != "close"
        webhook.admit(conn)  # the same connection, its next request
    finally:
        conn.close()


def test_a_body_over_the_limit_gets_413_and_the_rest_is_never_read(webhook):
    answer = webhook.raw(
        b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n" + b"x" * 100
    )
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
