"""Hostile clients against the real `whoexec consume --listen` (issue #21): Falco's alerts
keep being taken, and nothing acknowledged is lost.

The consumer runs as a user starts it, on 127.0.0.1, with deadlines of 1 s so that the
tests stay short; attackers come from other loopback addresses (127.0.0.2, ...) where a
test needs another peer. Every attack is bounded in connections and time. The promise
under test: while it lasts, Falco's posts are answered 200 within 2 s and come out of the
pipeline, or, past a cap, are refused with a 503, a log line and a metric; no 5xx
otherwise; the intake's memory stays bounded; the server closes hostile connections.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import DATA, http_ok
from tests.hostile import Hostile, metric_value, pipeline_unread, rss_bytes
from tests.servers import ServerProcess

pytestmark = pytest.mark.slow

FALCO = DATA / "falco"
ROOT, _, ALERT = (FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()
HEADERS = {"Content-Type": "application/json", "User-Agent": "falcosecurity/falco"}
BOUND = 2.0  # seconds: Falco waits for each answer before its next alert
DEADLINE = 1.0  # the intake's handshake, header and body deadlines in these tests
MiB = 1024 * 1024


class Consumer:
    def __init__(self, server: ServerProcess, output: Path, tls: ssl.SSLContext | None) -> None:
        self.server, self.port, self.output, self.tls = server, server.port, output, tls
        self.acknowledged: list[str] = []
        self.sent = 0

    def connection(self) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection("127.0.0.1", self.port, context=self.tls, timeout=10)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def post_alert(self, conn: http.client.HTTPConnection | None = None) -> tuple[int, float]:
        """One alert as Falco posts it (a new connection unless given one), marked so
        that it can be found in the pipeline's output: its status and seconds."""
        self.sent += 1
        marker = f"[hostile-test-{os.getpid()}-{self.sent}]"
        alert = json.loads(ALERT)
        alert["output"] = f"{alert['output']} {marker}"
        own = conn is None
        conn = conn or self.connection()
        started = time.monotonic()
        try:
            # refused and closed before the body went: the answer is still there to read
            with contextlib.suppress(BrokenPipeError):
                conn.request("POST", "/falco", body=json.dumps(alert), headers=HEADERS)
            reply = conn.getresponse()
            reply.read()
        finally:
            if own:
                conn.close()
        if reply.status == 200:
            self.acknowledged.append(marker)
        return reply.status, time.monotonic() - started

    def falco_during(self, seconds: float) -> list[float]:
        """Falco's posts for ``seconds``, with and without keep-alive (both are Falco's
        modes): each must be answered 200; how long each took."""
        took: list[float] = []
        kept = self.connection()
        try:
            stop = time.monotonic() + seconds
            while time.monotonic() < stop:
                for conn in (None, kept):
                    status, elapsed = self.post_alert(conn)
                    assert status == 200, status
                    took.append(elapsed)
                time.sleep(0.05)
        finally:
            kept.close()
        return took

    def nothing_acknowledged_is_lost(self) -> None:
        deadline = time.monotonic() + 20
        missing: set[str] = set(self.acknowledged)
        while missing and time.monotonic() < deadline:
            text = self.output.read_text() if self.output.exists() else ""
            missing = {marker for marker in missing if marker not in text}
            time.sleep(0.1)
        assert not missing, f"{len(missing)} acknowledged alerts never came out"

    def metric(self, name: str, labels: str) -> float:
        return metric_value(self.connection(), name, labels)

    def rss(self) -> int:
        return rss_bytes(self.server.pid)  # the intake is the main process


@pytest.fixture(scope="module")
def start_consumer(tmp_path_factory) -> Iterator[Callable[..., Consumer]]:
    started: list[ServerProcess] = []

    def start(*args: str, tls: ssl.SSLContext | None = None, **env_extra: str) -> Consumer:
        tmp = tmp_path_factory.mktemp("hostile-consume")
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
        env.update(
            {
                "WHOEXEC_HANDSHAKE_TIMEOUT": str(DEADLINE),
                "WHOEXEC_HEADER_TIMEOUT": str(DEADLINE),
                "WHOEXEC_BODY_TIMEOUT": str(DEADLINE),
                **env_extra,
            }
        )
        output = tmp / "enriched.jsonl"
        server = ServerProcess(
            [
                sys.executable, "-m", "webhook.cli", "consume", "--listen", "127.0.0.1:0",
                "--identity-pub", str(FALCO / "identity.pub"), "--output", str(output),
                "--no-stdout", "--hold", "0", "--state-dir", str(tmp / "state"), *args,
            ],
            tmp / "consumer.log",
            env,
        )  # fmt: skip
        started.append(server)
        consumer = Consumer(server, output, tls)
        server.wait_until(lambda: http_ok(consumer.connection, "/healthz"), "the consumer")
        conn = consumer.connection()
        conn.request("POST", "/falco", body=ROOT, headers=HEADERS)  # the session's root
        assert conn.getresponse().status == 200
        conn.close()
        return consumer

    yield start
    for server in started:
        assert server.stop() == 0, server.output()
        assert "Traceback" not in server.output(), server.output()


@pytest.fixture(scope="module")
def consumer(start_consumer) -> Consumer:
    """`whoexec consume --listen` as shipped, but for its 1 s deadlines."""
    return start_consumer()


@pytest.mark.parametrize(
    ("attack", "count", "reason"),
    [
        ("silent", 40, "header_timeout"),
        ("partial_headers", 20, "header_timeout"),
        ("slow_body", 20, "body_timeout"),
    ],
)
def test_falco_is_served_while_clients_stall_and_they_are_closed(consumer, attack, count, reason):
    before = consumer.metric(
        "whoexec_consumer_intake_connections_closed_total", f'reason="{reason}"'
    )
    path = "/falco" if attack == "slow_body" else "/healthz"
    with Hostile(consumer.port, {attack: count}, path=path, drip=0.3) as hostile:
        took = consumer.falco_during(3 * DEADLINE)
        assert max(took) < BOUND, sorted(took)[-5:]
        hostile.reopen = False
        deadline = time.monotonic() + 15
        while hostile.open_now() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hostile.open_now() == 0, "the server closes them itself"
    if attack != "silent":  # a late request is told why
        assert all(a.startswith(b"HTTP/1.1 408 ") for a in hostile.closed[attack].answers)
    after = consumer.metric(
        "whoexec_consumer_intake_connections_closed_total", f'reason="{reason}"'
    )
    assert after - before >= count
    consumer.nothing_acknowledged_is_lost()


def test_clients_that_pipeline_and_never_read_are_paused_and_memory_stays_bounded(consumer):
    rss_before = consumer.rss()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    results: list[tuple[int, bool]] = []

    def attack() -> None:
        # up to 20 s: on a loaded machine the server takes longer to fill its buffers and stop
        results.append(pipeline_unread(consumer.port, request, seconds=20, max_bytes=512 * MiB))

    attackers = [threading.Thread(target=attack) for _ in range(2)]
    for thread in attackers:
        thread.start()
    took = consumer.falco_during(3.0)
    for thread in attackers:
        thread.join(30)
    assert max(took) < BOUND, sorted(took)[-5:]
    # each stopped being read (its kernel buffers filled), or was closed past the write
    # deadline: neither got anywhere near the 512 MiB it would have sent
    assert [stopped for _, stopped in results] == [True, True]
    assert all(sent < 64 * MiB for sent, _ in results), results
    assert consumer.rss() < rss_before + 64 * MiB
    consumer.nothing_acknowledged_is_lost()


def test_a_client_that_stops_reading_its_answers_is_closed_at_the_write_deadline(consumer):
    from tests.hostile_servers import eventually

    def closed() -> float:
        return consumer.metric(
            "whoexec_consumer_intake_connections_closed_total", 'reason="write_timeout"'
        )

    before = closed()
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    _, stopped = pipeline_unread(
        consumer.port,
        request,
        seconds=20,
        max_bytes=64 * MiB,
        # the client stays, reading nothing: its answers wait unread past the deadline
        while_open=lambda: eventually(lambda: closed() > before, what="a write_timeout close"),
    )
    assert stopped
    consumer.nothing_acknowledged_is_lost()


def test_a_peer_past_its_cap_is_refused_with_a_503_a_log_line_and_a_metric(start_consumer):
    consumer = start_consumer(WHOEXEC_MAX_CONNECTIONS_PER_PEER="10")
    # another address of this machine: another peer
    with Hostile(consumer.port, {"idle": 15}, source="127.0.0.2", seconds=30):
        with socket.create_connection(
            ("127.0.0.1", consumer.port), timeout=10, source_address=("127.0.0.2", 0)
        ) as one_more:
            answer = one_more.recv(4096)  # sent nothing: told at once, then closed
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After" in answer, answer
        took = consumer.falco_during(1.0)  # Falco, from 127.0.0.1, has its own cap
        assert max(took) < BOUND
    assert consumer.metric("whoexec_consumer_intake_connections_refused_total", 'cap="per_peer"')
    assert "connection from 127.0.0.2 refused: per peer cap of 10" in consumer.server.output()
    consumer.nothing_acknowledged_is_lost()


def test_at_the_global_cap_idle_connections_give_way_to_falco(start_consumer):
    consumer = start_consumer(WHOEXEC_MAX_CONNECTIONS="30", WHOEXEC_MAX_CONNECTIONS_PER_PEER="15")
    attackers = [
        Hostile(consumer.port, {"idle": 15}, source=f"127.0.0.{n}", seconds=30) for n in (2, 3)
    ]
    try:
        for hostile in attackers:
            hostile.start()
        took = consumer.falco_during(2 * DEADLINE)
        assert max(took) < BOUND, sorted(took)[-5:]
    finally:
        for hostile in attackers:
            hostile.stop()
    assert consumer.metric("whoexec_consumer_intake_connections_closed_total", 'reason="made_room"')
    consumer.nothing_acknowledged_is_lost()


def test_at_the_global_cap_with_nothing_idle_falco_is_refused_aloud(start_consumer):
    consumer = start_consumer(
        WHOEXEC_MAX_CONNECTIONS="20",
        WHOEXEC_MAX_CONNECTIONS_PER_PEER="10",
        WHOEXEC_BODY_TIMEOUT="5",
    )
    # slow bodies are requests under way: none of them may give way
    attackers = [
        Hostile(consumer.port, {"slow_body": 10}, path="/falco", source=f"127.0.0.{n}", seconds=30)
        for n in (2, 3)
    ]
    try:
        for hostile in attackers:
            hostile.start()
        status, _ = consumer.post_alert()
    finally:
        for hostile in attackers:
            hostile.stop()
    assert status == 503, "refused: the one way the intake may fail Falco, and never silently"
    assert consumer.metric("whoexec_consumer_intake_connections_refused_total", 'cap="global"')
    assert "refused: global cap of 20" in consumer.server.output()
    assert consumer.post_alert()[0] == 200, "served again once the attack is over"
    consumer.nothing_acknowledged_is_lost()


SMUGGLING = {
    "cl-and-te": b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "duplicate-cl": b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
    b"Content-Length: 40\r\n\r\n{}",
    "obs-fold": b"POST /falco HTTP/1.1\r\nHost: x\r\nX-A: a\r\n folded\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "bad-chunk": b"POST /falco HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
}


def raw(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
def test_request_smuggling_gets_400_and_the_connection_closes(consumer, request_bytes):
    trailer = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"  # must never be served
    answer = raw(consumer.port, request_bytes + trailer)
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert answer.count(b"HTTP/1.1 ") == 1, answer


def test_pipelined_requests_are_answered_in_order(consumer):
    alert = json.dumps({**json.loads(ALERT), "output": "pipelined"}).encode()
    post = b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(alert), alert)
    answer = raw(
        consumer.port,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        + post
        + b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    statuses = [part[:3] for part in answer.split(b"HTTP/1.1 ")[1:]]
    assert statuses == [b"200"] * 3, answer
    assert answer.index(b'"ok"') < answer.index(b'"accepted":1') < answer.index(b'"ready"')


def test_a_tls_intake_closes_stalled_handshakes_and_serves_falco(start_consumer, tmp_path):
    certs = tmp_path / "certs"
    subprocess.run(
        [sys.executable, "-m", "webhook.cli", "certs", "--out", str(certs)],
        check=True,
        capture_output=True,
    )
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.check_hostname = False  # the certificate names localhost; we dial 127.0.0.1
    consumer = start_consumer(
        "--tls-cert",
        str(certs / "tls.crt"),
        "--tls-key",
        str(certs / "tls.key"),
        tls=ctx,
        WHOEXEC_MAX_CONNECTIONS_PER_PEER="500",  # 160 stalled from one address: no refusal
    )
    before = consumer.metric(
        "whoexec_consumer_intake_connections_closed_total", 'reason="handshake_timeout"'
    )
    attacks = {"tls_stall": 120, "silent": 40}
    with Hostile(consumer.port, attacks, tls=ctx, source="127.0.0.2") as hostile:
        took = consumer.falco_during(3 * DEADLINE)
        assert max(took) < BOUND, sorted(took)[-5:]
        hostile.reopen = False
        deadline = time.monotonic() + 15
        while hostile.open_now() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert hostile.open_now() == 0, "the server closes them itself"
    after = consumer.metric(
        "whoexec_consumer_intake_connections_closed_total", 'reason="handshake_timeout"'
    )
    assert after - before >= 160
    consumer.nothing_acknowledged_is_lost()
