"""The HTTP intake: every body is durable before its 200, or refused whole with a reason."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.conftest import DATA
from tests.hostile_servers import eventually
from webhook.attribution.inbox import InboxLogReader, InboxWriter
from webhook.attribution.intake import (
    FalcoEndpoint,
    IntakeServer,
    _Connection,
    accept_lines,
    bind,
    new_event_loop,
)
from webhook.errors import SpoolFull

LINES = (DATA / "falco" / "shell_and_grandchild.jsonl").read_bytes().splitlines()
FALCO_HEADERS = {"Content-Type": "application/json", "User-Agent": "falcosecurity/falco"}


def echo_app(environ, start_response):
    """A WSGI app that shows what it was handed."""
    body = environ["wsgi.input"].read()
    seen = {
        "method": environ["REQUEST_METHOD"],
        "path": environ["PATH_INFO"],
        "query": environ["QUERY_STRING"],
        "agent": environ.get("HTTP_USER_AGENT"),
        "type": environ.get("CONTENT_TYPE"),
        "length": environ["CONTENT_LENGTH"],
        "body": body.decode(),
        "peer": environ["REMOTE_ADDR"],
    }
    start_response("201 CREATED", [("Content-Type", "application/json"), ("X-Seen", "yes")])
    return [json.dumps(seen).encode()]


class Running:
    """An IntakeServer on its own event loop thread, on a port the kernel picked."""

    def __init__(self, server: IntakeServer, inbox_dir: Path) -> None:
        self.server, self.inbox_dir = server, inbox_dir
        self.sock = bind("127.0.0.1:0")
        self.port = self.sock.getsockname()[1]
        self.loop = new_event_loop(server.tls is not None)  # as run_intake does
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.loop.run_until_complete(self.server.serve(self.sock, self.stop))

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()

    def connection(self, ctx: ssl.SSLContext | None = None) -> http.client.HTTPConnection:
        if ctx is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return http.client.HTTPSConnection("localhost", self.port, context=ctx, timeout=10)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict, dict]:
        conn = self.connection()
        try:
            conn.request("POST", "/falco", body=body, headers=headers or FALCO_HEADERS)
            reply = conn.getresponse()
            return reply.status, dict(reply.getheaders()), json.loads(reply.read())
        finally:
            conn.close()

    def raw(self, data: bytes, then: bytes = b"") -> bytes:
        """Send bytes as they are; everything the server answers until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as sock:
            sock.sendall(data)
            if then:
                sock.sendall(then)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)

    def inbox(self) -> list[bytes]:
        reader = InboxLogReader(self.inbox_dir)
        found: list[bytes] = []
        while batch := reader.read(100):
            found.extend(body for _, body in batch)
        return found


@pytest.fixture
def start(tmp_path) -> Iterator:
    running: list[Running] = []

    def start_server(
        inbox=None, *, max_body_bytes=1 << 20, app=echo_app, heartbeat=None, **options
    ) -> Running:
        inbox_dir = tmp_path / f"inbox-{len(running)}"
        writer = inbox if inbox is not None else InboxWriter(inbox_dir)
        falco = FalcoEndpoint(writer, max_body_bytes, heartbeat=heartbeat)
        server = IntakeServer(falco, app, max_body_bytes=max_body_bytes, **options)
        running.append(Running(server, inbox_dir))
        return running[-1]

    yield start_server
    for server in running:
        server.close()


def test_one_post_per_alert_on_new_connections_like_falco(start):
    intake = start()
    for line in LINES:
        status, _, reply = intake.post(line)
        assert (status, reply) == (200, {"accepted": 1, "rejected": 0, "errors": []})
    assert intake.inbox() == LINES


def test_posts_on_one_kept_alive_connection_like_falco_with_keep_alive(start):
    intake = start()
    conn = intake.connection()
    for line in LINES:
        conn.request("POST", "/falco", body=line, headers=FALCO_HEADERS)
        reply = conn.getresponse()
        assert reply.status == 200 and reply.getheader("Connection") is None
        reply.read()
    conn.close()
    assert intake.inbox() == LINES


def test_curl_s_expect_100_continue_is_answered_before_the_body(start):
    # curl (Falco's http_output) sends the body only after "100 Continue", or after 1 s
    intake = start()
    head = (
        b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n"
        b"Content-Length: %d\r\n\r\n" % len(LINES[0])
    )
    with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
        sock.sendall(head)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n", "asked for the body"
        sock.sendall(LINES[0])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n")
    assert intake.inbox() == LINES[:1]


def test_an_ndjson_batch_and_a_chunked_body_are_accepted_whole(start):
    intake = start()
    assert intake.post(b"\n".join(LINES) + b"\n")[2]["accepted"] == 3
    body = LINES[0]
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = intake.raw(
        b"POST /falco HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunked
    )
    assert answer.startswith(b"HTTP/1.1 200 OK")
    assert intake.inbox() == [*LINES, LINES[0]]


@pytest.mark.parametrize(
    ("body", "status", "error", "kept"),
    [
        (b"this is not json", 400, "line 1: not JSON", []),
        (LINES[0] + b"\n{broken\n" + LINES[1], 200, "line 2: not JSON", [LINES[0], LINES[1]]),
        (b"\n".join(LINES * 4), 413, "12 lines in one body, over 10", []),
    ],
    ids=["not-json", "one-bad-line", "too-many-lines"],
)
def test_bad_bodies_are_refused_whole_or_their_bad_lines_counted(start, body, status, error, kept):
    intake = start()
    intake.server.falco.max_lines = 10
    got, _, reply = intake.post(body)
    assert got == status
    assert error in (reply.get("error") or reply["errors"][0])
    assert intake.inbox() == kept


def test_a_declared_body_over_the_limit_is_refused_before_a_byte_of_it_is_sent(start):
    intake = start(max_body_bytes=1024)
    # the 1 GiB body is never sent: the answer comes on the headers alone
    answer = intake.raw(b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 413 ")
    assert b"body over 1024 bytes" in answer and b"Connection: close" in answer


def test_a_chunked_body_is_refused_once_it_passes_the_limit(start):
    intake = start(max_body_bytes=1024)
    chunk = b"%x\r\n%s\r\n" % (600, b"x" * 600)
    answer = intake.raw(
        b"POST /falco HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk + chunk
    )
    assert answer.startswith(b"HTTP/1.1 413 ") and intake.inbox() == []


# --- every bound of the intake, at it and one past it ---------------------------------------
# A sender drops what it was refused (Falco ignores the status): a bound that is one off
# loses a body that was within it.


def json_body(size: int) -> bytes:
    """A one-line JSON body of exactly ``size`` bytes."""
    body = b'{"p":"' + b"a" * (size - 8) + b'"}'
    assert len(body) == size
    return body


@pytest.mark.parametrize(("extra", "status"), [(0, 200), (1, 413)], ids=["at", "over"])
def test_a_body_of_max_lines_lines_is_accepted_and_one_more_is_refused_whole(start, extra, status):
    intake = start()
    intake.server.falco.max_lines = 3
    lines = [json_body(20 + n) for n in range(3 + extra)]
    # blank lines are no lines: they neither count nor reach the inbox
    got, _, reply = intake.post(b"\n\n".join(lines) + b"\n  \n")
    assert got == status
    if status == 200:
        assert reply == {"accepted": 3, "rejected": 0, "errors": []}
        assert intake.inbox() == lines
    else:
        assert reply == {"error": "4 lines in one body, over 3", "accepted": 0}
        assert intake.inbox() == []


def test_the_default_line_bound_is_10000_lines():
    assert FalcoEndpoint(FullInbox(), 1024).max_lines == 10_000


@pytest.mark.parametrize(("size", "status"), [(1024, 200), (1025, 413)], ids=["at", "over"])
def test_a_declared_body_of_the_byte_limit_is_accepted_and_one_byte_more_is_refused(
    start, size, status
):
    intake = start(max_body_bytes=1024)
    body = json_body(size)
    # one byte over is refused on the headers alone: its body is never sent (a body sent
    # after the refusal would meet a closed connection, and a reset)
    answer = intake.raw(
        b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"
        % size,
        body if status == 200 else b"",
    )
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert intake.inbox() == ([body] if status == 200 else [])


@pytest.mark.parametrize(("size", "status"), [(1024, 200), (1025, 413)], ids=["at", "over"])
def test_a_chunked_body_of_the_byte_limit_is_accepted_and_one_byte_more_is_refused(
    start, size, status
):
    intake = start(max_body_bytes=1024)
    body = json_body(size)
    half = size // 2
    chunked = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], size - half, body[half:])
    answer = intake.raw(
        b"POST /falco HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Connection: close\r\n\r\n" + chunked
    )
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    assert intake.inbox() == ([body] if status == 200 else [])


@pytest.mark.parametrize("chunked", [False, True], ids=["declared", "chunked"])
@pytest.mark.parametrize(("size", "status"), [(1024, 201), (1025, 413)], ids=["at", "over"])
def test_a_body_for_another_route_is_held_to_the_same_byte_limit(start, chunked, size, status):
    # an audit webhook batch (POST /k8s-audit) goes to the Flask app
    intake = start(max_body_bytes=1024)
    body = b"x" * size
    head = b"POST /k8s-audit HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    if chunked:
        answer = intake.raw(
            head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (size, body)
        )
    else:
        answer = intake.raw(
            head + b"Content-Length: %d\r\n\r\n" % size, body if status == 201 else b""
        )
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
    if status == 201:
        assert answer.endswith(b'"body": "%s", "peer": "127.0.0.1"}' % body)


def request_with_headers(header_bytes: int, count: int = 1) -> bytes:
    """A GET whose ``count`` headers weigh ``header_bytes`` as the intake counts them
    (name, value and 4 bytes of ": " and CRLF each)."""
    pads = [b"X-%03d" % n for n in range(count)]
    value_bytes = header_bytes - sum(len(p) + 4 for p in pads)
    values = [b"v" * (value_bytes // count + (n < value_bytes % count)) for n in range(count)]
    lines = b"".join(b"%s: %s\r\n" % (p, v) for p, v in zip(pads, values, strict=True))
    return b"GET /h HTTP/1.1\r\n" + lines + b"\r\n"


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (request_with_headers(2048), 201),
        (request_with_headers(2049), 431),
        (request_with_headers(1200, count=100), 201),
        (request_with_headers(1200, count=101), 431),
        (b"GET /" + b"t" * 2047 + b" HTTP/1.1\r\n\r\n", 201),  # a target of 2048 bytes
        (b"GET /" + b"t" * 2048 + b" HTTP/1.1\r\n\r\n", 431),
    ],
    ids=["header-bytes-at", "header-bytes-over", "100-headers", "101-headers", "target-at",
         "target-over"],
)  # fmt: skip
def test_headers_and_the_target_are_accepted_up_to_their_bounds_and_refused_past_them(
    start, request_bytes, status
):
    intake = start(max_header_bytes=2048)
    with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
        sock.sendall(request_bytes)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]


def test_at_max_connections_the_longest_idle_gives_way_and_the_new_one_is_served(start):
    # #21: at the global cap the connection that has waited longest with no request under
    # way is closed to make room; a new connection is never dropped in silence
    intake = start(max_connections=2)
    open_ones = [intake.connection(), intake.connection()]
    try:
        for conn in open_ones:  # both accepted and served, and kept open
            conn.request("GET", "/healthz")
            assert conn.getresponse().read()
        with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 2"), answer[:40]
        open_ones[1].request("GET", "/healthz")  # the younger idle one is still served
        assert open_ones[1].getresponse().status == 201
    finally:
        for conn in open_ones:
            conn.close()


@pytest.mark.parametrize(("age", "refused"), [(30.0, False), (30.5, True)])
def test_the_pipeline_is_down_only_once_its_heartbeat_is_older_than_stale_after(
    tmp_path, age, refused
):
    now = 1000.0
    heartbeat = tmp_path / "pipeline.alive"
    heartbeat.touch()
    os.utime(heartbeat, (now - age, now - age))
    falco = FalcoEndpoint(
        InboxWriter(tmp_path / "inbox"), 1024, heartbeat=heartbeat, clock=lambda: now
    )
    assert (falco.before_body(10) is not None) is refused


class FullInbox:
    def put_many(self, bodies: list[bytes]) -> None:
        raise SpoolFull("the inbox holds 100 of 100 bytes: 1 more do not fit")


class FailingDisk:
    def put_many(self, bodies: list[bytes]) -> None:
        raise OSError(28, "No space left on device")


@pytest.mark.parametrize(
    ("inbox", "error"),
    [(FullInbox(), "holds 100 of 100 bytes"), (FailingDisk(), "cannot write the inbox")],
    ids=["full", "disk-failing"],
)
def test_an_inbox_that_cannot_take_a_body_answers_503_with_retry_after(start, inbox, error):
    intake = start(inbox)
    status, headers, reply = intake.post(LINES[0])
    assert (status, headers["Retry-After"], reply["accepted"]) == (503, "5", 0)
    assert error in reply["error"]


def test_intake_refuses_while_the_pipeline_has_not_run_for_a_while(tmp_path):
    now = [1000.0]
    heartbeat = tmp_path / "pipeline.alive"
    writer = InboxWriter(tmp_path / "inbox")
    falco = FalcoEndpoint(writer, 1 << 20, heartbeat=heartbeat, clock=lambda: now[0])
    assert falco.before_body(100) is None  # starting: the same grace
    heartbeat.touch()
    os.utime(heartbeat, (now[0] - 31, now[0] - 31))
    now[0] += 2  # past the once-a-second cache
    status, reply = falco.before_body(100) or (0, b"")
    assert status == 503 and b"has not run for 33s" in reply
    os.utime(heartbeat, (now[0], now[0]))
    now[0] += 2
    assert falco.before_body(100) is None


@pytest.mark.parametrize(
    ("request_bytes", "status", "error"),
    [
        (b"NOT HTTP AT ALL\r\n\r\n", 400, "malformed HTTP request: "),
        (b"POST /falco HTTP/1.1\r\nContent-Length: abc\r\n\r\n", 400,
         "malformed HTTP request: "),
        (b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n", 431, "request target too long"),
        (b"GET / HTTP/1.1\r\nX-Big: " + b"b" * 70_000 + b"\r\n\r\n", 431,
         "request headers too large"),
        (b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", 400,
         "protocol upgrades are not supported"),
    ],
    ids=["garbage", "bad-length", "long-target", "big-header", "upgrade"],
)  # fmt: skip
def test_a_malformed_request_gets_a_clear_answer_and_the_connection_closes(
    start, request_bytes, status, error
):
    answer = start().raw(request_bytes)
    assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:100]
    assert b"Connection: close" in answer
    said = json.loads(answer.partition(b"\r\n\r\n")[2])["error"]
    assert said.startswith(error) and (said == error) is (not error.endswith(": "))


def test_a_failure_inside_the_parser_s_callbacks_is_a_400_and_logged(start, monkeypatch, caplog):
    from webhook.attribution import intake as intake_module

    def broken(self, url: bytes) -> None:
        raise ValueError("a bug of ours")

    monkeypatch.setattr(intake_module._Connection, "on_url", broken)
    answer = start().raw(b"GET / HTTP/1.1\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"error": "malformed HTTP request"}
    assert "the HTTP parser failed: ValueError('a bug of ours')" in caplog.messages


def test_every_other_route_goes_to_the_wsgi_app_with_its_request(start):
    intake = start()
    conn = intake.connection()
    conn.request(
        "POST", "/k8s-audit?x=1&y=%2F", body=b'{"items":[]}', headers={"User-Agent": "kube"}
    )
    reply = conn.getresponse()
    seen = json.loads(reply.read())
    assert (reply.status, reply.getheader("X-Seen")) == (201, "yes")
    assert seen == {
        "method": "POST",
        "path": "/k8s-audit",
        "query": "x=1&y=%2F",
        "agent": "kube",
        "type": None,
        "length": "12",
        "body": '{"items":[]}',
        "peer": "127.0.0.1",
    }
    conn.request("GET", "/falco")  # not a POST: the app's, not the intake's
    reply = conn.getresponse()
    assert json.loads(reply.read())["method"] == "GET"
    conn.close()


def test_pipelined_requests_are_answered_in_order(start):
    intake = start()
    one = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
    two = b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (
        len(LINES[0]),
        LINES[0],
    )
    three = b"GET /third HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = intake.raw(one + two + three)
    assert answer.index(b'"path": "/first"') < answer.index(b'"accepted":1')
    assert answer.index(b'"accepted":1') < answer.index(b'"path": "/third"')


def test_an_app_that_fails_gets_a_500_and_the_server_goes_on(start):
    def broken(environ, start_response):
        raise RuntimeError("boom")

    intake = start(app=broken)
    conn = intake.connection()
    conn.request("GET", "/api/sessions")
    reply = conn.getresponse()
    assert (reply.status, json.loads(reply.read())) == (500, {"error": "internal error"})
    conn.close()
    assert intake.post(LINES[0])[0] == 200


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive(start):
    intake = start(keepalive=0.2)
    with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):  # returns b"" once the server closed it
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201 ")


@pytest.fixture
def tls_certs(tmp_path) -> Path:
    from click.testing import CliRunner

    from webhook.cli import main

    certs = tmp_path / "certs"
    assert CliRunner().invoke(main, ["certs", "--out", str(certs)]).exit_code == 0
    return certs


def test_tls_takes_a_rotated_certificate_for_new_connections(start, tls_certs):
    from click.testing import CliRunner

    from webhook.cli import main
    from webhook.tls import ReloadingContext

    certs = tls_certs
    intake = start(tls=ReloadingContext(certs / "tls.crt", certs / "tls.key").current)

    def served_certificate() -> bytes:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        ctx.check_hostname = False
        with (
            socket.create_connection(("127.0.0.1", intake.port), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname="localhost") as tls_sock,
        ):
            assert tls_sock.version() in ("TLSv1.2", "TLSv1.3")
            der = tls_sock.getpeercert(binary_form=True)
            assert der is not None
            return der

    first = served_certificate()
    assert CliRunner().invoke(main, ["certs", "--out", str(certs), "--force"]).exit_code == 0
    assert served_certificate() != first, "the new certificate, without a restart"


class FakeTransport:
    """What a connection writes, and whether it closed."""

    def __init__(self) -> None:
        self.written, self.closed = b"", False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 1234)

    def set_write_buffer_limits(self, high: int) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=300), max_size=6))
def test_hostile_bytes_never_break_the_server_and_never_reach_the_inbox_unless_json(
    tmp_path_factory, pieces
):
    inbox = InboxWriter(tmp_path_factory.mktemp("inbox"))
    kept: list[bytes] = []

    class Recording:
        def put_many(self, bodies: list[bytes]) -> None:
            for body in bodies:
                json.loads(body)  # only JSON lines get this far
            kept.extend(bodies)
            inbox.put_many(bodies)

    server = IntakeServer(FalcoEndpoint(Recording(), 4096), echo_app, max_body_bytes=4096)
    loop = asyncio.new_event_loop()
    server.loop = loop
    transport = FakeTransport()
    connection = _Connection(server)
    connection.connection_made(transport)  # type: ignore[arg-type]
    for piece in pieces:
        connection.data_received(b"POST /falco HTTP/1.1\r\nContent-Length: 10\r\n\r\n" + piece)
    loop.close()
    for answer in transport.written.split(b"HTTP/1.1 ")[1:]:
        assert answer[:3].isdigit(), "every answer is a status line"
    inbox.close()


def test_refused_bodies_are_logged_once_per_reason_in_an_interval(tmp_path, caplog, monkeypatch):
    from webhook.attribution import intake
    from webhook.attribution.pipeline import RateLimitedLog

    now = [0.0]
    monkeypatch.setattr(intake, "_intake_log", RateLimitedLog(clock=lambda: now[0], topic="intake"))
    falco = FalcoEndpoint(InboxWriter(tmp_path / "inbox"), 1024)
    caplog.set_level("WARNING", logger="whoexec.consumer")
    for _ in range(200):
        assert (falco.before_body(5000) or (0, b""))[0] == 413
        assert falco.accept(b"not json")[0] == 400
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines  # one per reason, not 400
    now[0] += 11
    assert falco.accept(b"not json")[0] == 400
    assert "(199 more since the last report)" in caplog.records[-1].getMessage()


def test_a_refusal_on_the_headers_comes_after_the_answers_before_it(start):
    intake = start(max_body_bytes=1024)
    first = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n"
    huge = b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: 1073741824\r\n\r\n"
    answer = intake.raw(first + huge)
    assert answer.index(b'"path": "/first"') < answer.index(b"HTTP/1.1 413 ")
    assert answer.endswith(b'{"error":"body over 1024 bytes","accepted":0}')


def test_a_request_that_arrives_before_the_connection_is_handed_over_is_answered(tmp_path):
    # under TLS, start_tls passes on the first request (it rides with the client's
    # Finished) before it returns the connection's transport
    inbox = InboxWriter(tmp_path / "inbox")
    server = IntakeServer(FalcoEndpoint(inbox, 4096), echo_app)
    server.loop = asyncio.new_event_loop()
    connection = _Connection(server)
    connection.data_received(
        b"POST /falco HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(LINES[0]), LINES[0])
    )
    transport = FakeTransport()
    connection.connection_made(transport)  # type: ignore[arg-type]
    server.loop.close()
    assert transport.written.startswith(b"HTTP/1.1 200 OK\r\n")
    inbox.close()
    reader = InboxLogReader(tmp_path / "inbox")
    assert [body for _, body in reader.read(10)] == LINES[:1]


# --- what one POST /falco body becomes: accept_lines, without a server ------------------


class MemoryInbox:
    def __init__(self) -> None:
        self.lines: list[bytes] = []

    def put_many(self, bodies: list[bytes]) -> None:
        self.lines.extend(bodies)


def _metric(name: str, reason: str, label: str = "reason") -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value(name, {label: reason}) or 0.0


@pytest.mark.parametrize("body", [b"", b"\n", b"  \n\t\n"])
def test_a_body_without_a_line_is_refused_and_says_so(body):
    inbox = MemoryInbox()
    status, reply = accept_lines(inbox, body)
    assert (status, json.loads(reply)) == (
        400,
        {"accepted": 0, "rejected": 0, "errors": ["the body holds no JSON line"]},
    )
    assert inbox.lines == []


def test_good_lines_are_kept_in_order_and_each_bad_one_is_named_by_its_number():
    inbox = MemoryInbox()
    before = _metric("whoexec_consumer_lines_skipped_total", "not_json")
    status, reply = accept_lines(inbox, b'{"a": 1}\nnot json\n\n{"b": 2}\n')
    answer = json.loads(reply)
    assert (status, answer["accepted"], answer["rejected"]) == (200, 2, 1)
    (error,) = answer["errors"]
    assert error.startswith("line 2: not JSON: ")
    assert inbox.lines == [b'{"a": 1}', b'{"b": 2}']
    assert _metric("whoexec_consumer_lines_skipped_total", "not_json") == before + 1


def test_a_body_of_only_bad_lines_is_refused_and_names_the_first_five():
    inbox = MemoryInbox()
    status, reply = accept_lines(inbox, b"\n".join(b"bad %d" % n for n in range(7)))
    answer = json.loads(reply)
    assert (status, answer["accepted"], answer["rejected"]) == (400, 0, 7)
    assert [e.split(":")[0] for e in answer["errors"]] == [f"line {n}" for n in range(1, 6)]
    assert inbox.lines == []


def test_exactly_ten_thousand_lines_by_default_are_accepted_and_one_more_is_refused_whole():
    line = b'{"rule": "r"}'
    inbox = MemoryInbox()
    status, reply = accept_lines(inbox, b"\n".join([line] * 10_000))
    assert (status, json.loads(reply)["accepted"]) == (200, 10_000)
    before = _metric("whoexec_consumer_intake_refused_total", "too_many_lines")
    fresh = MemoryInbox()
    status, reply = accept_lines(fresh, b"\n".join([line] * 10_001))
    assert (status, json.loads(reply)) == (
        413,
        {"error": "10001 lines in one body, over 10000", "accepted": 0},
    )
    assert fresh.lines == []
    assert _metric("whoexec_consumer_intake_refused_total", "too_many_lines") == before + 1


@pytest.mark.parametrize(
    ("inbox", "reason", "says"),
    [
        (
            FullInbox(),
            "inbox_full",
            "the inbox holds 100 of 100 bytes: 1 more do not fit; retry later",
        ),
        (FailingDisk(), "inbox_unwritable", "cannot write the inbox: [Errno 28] No space left"),
    ],
)
def test_an_inbox_that_cannot_take_the_body_refuses_it_whole_with_503(inbox, reason, says):
    before = _metric("whoexec_consumer_intake_refused_total", reason)
    status, reply = accept_lines(inbox, b'{"a": 1}\n{"b": 2}\n')
    answer = json.loads(reply)
    assert (status, answer["accepted"]) == (503, 0)
    assert answer["error"].startswith(says)
    assert _metric("whoexec_consumer_intake_refused_total", reason) == before + 1


# --- the caps and deadlines of #21, in process (the hostile suite runs them against
# `whoexec consume` as started; these pin each number, answer, log line and metric) ------


def _refused(cap: str) -> float:
    return _metric("whoexec_consumer_intake_connections_refused_total", cap, label="cap")


def _closed(reason: str) -> float:
    return _metric("whoexec_consumer_intake_connections_closed_total", reason)


def served(conn: http.client.HTTPConnection) -> int:
    conn.request("GET", "/healthz")
    reply = conn.getresponse()
    reply.read()
    return reply.status


CONNECTIONS_FULL = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"


def test_a_peer_past_its_cap_is_refused_aloud_and_served_again_once_one_closes(start, caplog):
    # the refusal is written before a byte is read: the refused client sends nothing here,
    # or its bytes could meet the closed socket and reset the connection before it reads
    intake = start(max_connections_per_peer=2)
    before = _refused("per_peer")
    first, second = intake.connection(), intake.connection()
    try:
        assert (served(first), served(second)) == (201, 201)
        answer = intake.raw(b"")
        assert answer.startswith(CONNECTIONS_FULL), answer[:80]
        assert answer.endswith(b'{"error":"too many open connections; retry later"}')
        assert _refused("per_peer") == before + 1
        assert (
            "intake: connection_cap_per_peer: connection from 127.0.0.1 refused: per peer cap "
            "of 2 open connections reached" in caplog.messages
        )
        first.close()
        eventually(lambda: intake.server.per_peer == {"127.0.0.1": 1}, "the close seen")
        for _ in range(3):  # its slot is free, and each one closed frees its own again
            again = intake.connection()
            assert served(again) == 201
            again.close()
            eventually(lambda: intake.server.per_peer == {"127.0.0.1": 1}, "the close seen")
    finally:
        first.close()
        second.close()
    eventually(lambda: intake.server.per_peer == {} and not intake.server.slots, "all released")


def test_at_the_global_cap_with_no_connection_idle_a_new_one_is_refused_aloud(start, caplog):
    intake = start(max_connections=2, max_connections_per_peer=2, body_timeout=30)
    before = _refused("global")
    under_way = []
    for source in ("127.0.0.2", "127.0.0.3"):  # a body still arriving never gives way
        sock = socket.create_connection(
            ("127.0.0.1", intake.port), timeout=10, source_address=(source, 0)
        )
        sock.sendall(b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        under_way.append(sock)
    try:
        eventually(lambda: len(intake.server.slots) == 2, "both connections taken")
        answer = intake.raw(b"")  # answered at once, before a byte is read
    finally:
        for sock in under_way:
            sock.close()
    assert answer.startswith(CONNECTIONS_FULL), answer[:80]
    assert _refused("global") == before + 1
    assert (
        "intake: connection_cap_global: connection from 127.0.0.1 refused: global cap of 2 "
        "open connections reached" in caplog.messages
    )


TIMED_OUT = b'{"error":"the request did not arrive in time"}'


@pytest.mark.parametrize(
    ("sent", "reason"),
    [
        (b"POST /falco HTTP/1.1\r\nHost: x\r\n", "header_timeout"),
        (b"POST /falco HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{", "body_timeout"),
    ],
)
def test_a_request_that_stalls_is_told_408_and_closed_and_counted_by_its_phase(start, sent, reason):
    intake = start(header_timeout=0.2, body_timeout=0.2)
    before = _closed(reason)
    answer = intake.raw(sent)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:80]
    assert answer.endswith(TIMED_OUT)
    assert _closed(reason) == before + 1
    eventually(lambda: not intake.server.slots, "the slot released")


def test_an_idle_connection_past_the_keepalive_is_closed_without_an_answer(start):
    intake = start(keepalive=0.2, header_timeout=5)
    before = _closed("keepalive")
    answer = intake.raw(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 201 ") and TIMED_OUT not in answer
    assert _closed("keepalive") == before + 1


def test_falco_posts_over_tls_and_a_stalled_handshake_gives_its_slot_back(start, tls_certs):
    from webhook.tls import ReloadingContext

    tls = ReloadingContext(tls_certs / "tls.crt", tls_certs / "tls.key").current
    intake = start(tls=tls, handshake_timeout=0.3, max_connections_per_peer=1)
    client = ssl.create_default_context(cafile=str(tls_certs / "ca.crt"))
    before = _closed("handshake_timeout")
    with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as stalled:
        stalled.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello, cut
        assert stalled.recv(65536) == b"", "closed at the handshake deadline"
    # asyncio closes the socket before start_tls raises in the gate, which counts it
    eventually(lambda: _closed("handshake_timeout") == before + 1, "the close counted")
    eventually(lambda: not intake.server.slots, "the stalled one's slot released")
    with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as garbage:
        garbage.sendall(b"GET / HTTP/1.1\r\n\r\n")  # plain HTTP to a TLS port
        garbage.recv(65536)
    eventually(lambda: not intake.server.slots, "the failed one's slot released")
    conn = intake.connection(client)
    try:
        conn.request("POST", "/falco", body=LINES[0], headers=FALCO_HEADERS)
        reply = conn.getresponse()
        assert (reply.status, json.loads(reply.read())["accepted"]) == (200, 1)
    finally:
        conn.close()
    assert intake.inbox() == [LINES[0]]


# --- the WSGI bridge: what the consumer's Flask app is handed, and what it answers -------


def test_the_app_is_handed_a_pep_3333_environ_and_its_answer_is_framed_by_the_intake(tmp_path):
    from wsgiref.validate import validator

    from webhook.attribution.intake import _Request

    seen: dict = {}
    closed: list[bool] = []

    class Answer:
        def __init__(self) -> None:
            self.parts = iter([b"a", b"bc"])

        def __iter__(self):
            return self

        def __next__(self) -> bytes:
            return next(self.parts)

        def close(self) -> None:
            closed.append(True)

    def app(environ, start_response):
        seen.update(environ)
        start_response(
            "201 Created",
            [("Content-Type", "text/plain"), ("content-length", "999"),
             ("Connection", "keep-alive"), ("X-Kept", "1")],
        )  # fmt: skip
        return Answer()

    server = IntakeServer(FalcoEndpoint(InboxWriter(tmp_path / "inbox"), 4096), validator(app))
    server.port = 8443
    request = _Request(
        method="POST",
        target=b"/api/v1/sessions%2Fx?since=1h&user=a%20b",
        headers=[
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"2"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-Forwarded-For", b"10.0.0.1"),
            (b"x-forwarded-for", b"10.0.0.2"),
            (b"Authorization", b"Bearer \xe9t\xe9"),
        ],
        body=b"{}",
        keep_alive=False,
    )
    raw = server.call_wsgi(request, "192.0.2.7")

    assert {k: seen[k] for k in (
        "REQUEST_METHOD", "SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "SERVER_NAME",
        "SERVER_PORT", "SERVER_PROTOCOL", "REMOTE_ADDR", "CONTENT_TYPE", "CONTENT_LENGTH",
        "HTTP_X_FORWARDED_FOR", "HTTP_AUTHORIZATION", "wsgi.version", "wsgi.url_scheme",
        "wsgi.multithread", "wsgi.multiprocess", "wsgi.run_once",
    )} == {
        "REQUEST_METHOD": "POST", "SCRIPT_NAME": "", "PATH_INFO": "/api/v1/sessions/x",
        "QUERY_STRING": "since=1h&user=a%20b", "SERVER_NAME": "whoexec",
        "SERVER_PORT": "8443", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "192.0.2.7",
        "CONTENT_TYPE": "application/json", "CONTENT_LENGTH": "2",
        # repeated headers are joined, as RFC 9110 section 5.3 reads them
        "HTTP_X_FORWARDED_FOR": "10.0.0.1,10.0.0.2",
        "HTTP_AUTHORIZATION": "Bearer \xe9t\xe9",  # bytes as latin-1, as PEP 3333 says
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http",
        # the app runs in the intake's thread pool, in one process, again and again
        "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
    }  # fmt: skip
    assert "HTTP_TRANSFER_ENCODING" not in seen and "HTTP_CONTENT_LENGTH" not in seen
    assert seen["wsgi.input"].read(2) == b"{}"
    assert closed == [True], "the answer's close() is called (PEP 3333)"
    head, _, body = raw.partition(b"\r\n\r\n")
    assert body == b"abc"
    # the intake frames the answer itself: the app's length and connection are dropped
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 201 Created",
        b"Content-Type: text/plain",
        b"X-Kept: 1",
        b"Content-Length: 3",
        b"Connection: close",
    ]


def test_only_a_post_to_falco_is_an_alert_batch_every_other_request_is_the_app_s(start):
    intake = start()
    for request in (b"GET /falco HTTP/1.1\r\n", b"POST /falco/x HTTP/1.1\r\n",
                    b"PUT /falco?x=1 HTTP/1.1\r\n"):  # fmt: skip
        answer = intake.raw(request + b"Content-Length: 2\r\nConnection: close\r\n\r\n{}")
        assert answer.startswith(b"HTTP/1.1 201 CREATED\r\n"), "the app's echo"
    answer = intake.raw(
        b"POST /falco?x=1 HTTP/1.1\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}"
    )
    assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(
        b'"accepted":1,"rejected":0,"errors":[]}'
    )
    assert intake.inbox() == [b"{}"]


def test_the_intake_s_own_answers_keep_or_close_the_connection_and_only_200s_are_reused(
    monkeypatch,
):
    from webhook.attribution import intake

    monkeypatch.setattr(intake, "_OK", {})

    one = orjson.dumps({"accepted": 1, "rejected": 0, "errors": []})
    kept = intake._json_response(200, one, keep_alive=True)
    assert b"Connection: close" not in kept and kept.startswith(b"HTTP/1.1 200 OK\r\n")
    closing = intake._json_response(200, one, keep_alive=False)
    assert closing.split(b"\r\n\r\n")[0].endswith(b"Connection: close")
    assert intake._json_response(200, one, keep_alive=True) is kept, "built once"
    busy = intake._json_response(503, b'{"error":"full"}', keep_alive=True)
    assert b"\r\nRetry-After: 5\r\n" in busy
    assert b"Retry-After" not in intake._json_response(400, b"{}", keep_alive=True)
    # every distinct reply of a full server: the reused answers stay few, and right
    for n in range(200):
        reply = orjson.dumps({"accepted": n, "rejected": 0, "errors": []})
        answer = intake._json_response(200, reply, keep_alive=n % 2 == 0)
        assert answer.endswith(b"\r\n\r\n" + reply)
        assert (b"Connection: close" in answer) is (n % 2 == 1)
        intake._json_response(400, reply, keep_alive=True)
    assert len(intake._OK) == 64
    assert all(key[0] != b"{}" for key in intake._OK), "a 4xx is never kept"


def chunked(path: bytes, body: bytes) -> bytes:
    return (
        b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"%x\r\n%s\r\n0\r\n\r\n" % (path, len(body), body)
    )


def test_a_chunked_body_is_held_to_its_route_s_own_limit_as_it_arrives(tmp_path):
    # a chunked body has no length to refuse on the headers: it is counted as it comes,
    # against Falco's limit on /falco and the app's elsewhere
    server = IntakeServer(
        FalcoEndpoint(InboxWriter(tmp_path / "inbox"), 100), echo_app, max_body_bytes=1000
    )
    running = Running(server, tmp_path / "inbox")
    try:
        falco = running.raw(chunked(b"/falco", b"x" * 150))
        assert falco.startswith(b"HTTP/1.1 413 ")
        assert json.loads(falco.partition(b"\r\n\r\n")[2]) == {
            "error": "body over 100 bytes",
            "accepted": 0,
        }
        app = running.raw(chunked(b"/k8s-audit", b"x" * 150))
        assert app.startswith(b"HTTP/1.1 201 "), "under the app's own limit"
        too_big = running.raw(chunked(b"/k8s-audit", b"x" * 1500))
        assert too_big.startswith(b"HTTP/1.1 413 ")
        assert json.loads(too_big.partition(b"\r\n\r\n")[2]) == {"error": "body too large"}
    finally:
        running.close()


def test_an_app_that_fails_is_a_500_logged_with_its_request_and_the_connection_goes_on(
    start, caplog
):
    def failing(environ, start_response):
        if environ["PATH_INFO"] == "/boom":
            raise RuntimeError("a bug of ours")
        return echo_app(environ, start_response)

    intake = start(app=failing)
    conn = intake.connection()
    try:
        conn.request("GET", "/boom?" + "q" * 300)
        reply = conn.getresponse()
        assert (reply.status, json.loads(reply.read())) == (500, {"error": "internal error"})
        conn.request("GET", "/after")  # the same connection: kept alive
        assert conn.getresponse().status == 201
    finally:
        conn.close()
    (logged,) = [r for r in caplog.records if r.getMessage().startswith("GET b'/boom?")]
    assert logged.getMessage() == f"GET {(b'/boom?' + b'q' * 300)[:200]!r} failed"
    assert logged.exc_info is not None


@pytest.mark.parametrize(
    ("listen", "family", "host"),
    [
        ("127.0.0.1:0", socket.AF_INET, "127.0.0.1"),
        ("[::1]:0", socket.AF_INET6, "::1"),
        ("::1:0", socket.AF_INET6, "::1"),  # the port is after the last colon
        (":0", socket.AF_INET, "0.0.0.0"),  # noqa: S104 (--listen :PORT: every IPv4 address)
    ],
)
def test_the_intake_listens_on_the_address_and_family_it_is_given(listen, family, host):
    sock = bind(listen)
    try:
        assert (sock.family, sock.getsockname()[0]) == (family, host)
        assert sock.getsockname()[1] > 0, "port 0: the kernel picked one"
        assert sock.type == socket.SOCK_STREAM and not sock.getblocking(), "for the loop"
    finally:
        sock.close()


def test_a_tls_client_that_leaves_mid_handshake_gives_its_slot_back(start, tls_certs):
    from webhook.tls import ReloadingContext

    tls = ReloadingContext(tls_certs / "tls.crt", tls_certs / "tls.key").current
    intake = start(tls=tls, handshake_timeout=30, max_connections_per_peer=2)
    for _ in range(3):  # each would hold a slot of the peer's 2 until the 30 s deadline
        with socket.create_connection(("127.0.0.1", intake.port), timeout=10) as leaving:
            leaving.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello, cut
            eventually(lambda: intake.server.slots, "the connection taken in")
        eventually(lambda: not intake.server.slots, "the slot of the one that left released")
    client = ssl.create_default_context(cafile=str(tls_certs / "ca.crt"))
    conn = intake.connection(client)
    try:
        conn.request("POST", "/falco", body=LINES[0], headers=FALCO_HEADERS)
        assert conn.getresponse().status == 200
    finally:
        conn.close()


def test_a_tls_peer_past_its_cap_is_refused_before_its_handshake_and_others_are_served(
    start, tls_certs
):
    """The cap counts by address under TLS too: from the TCP connection, before a
    handshake costs the server anything."""
    from webhook.tls import ReloadingContext

    tls = ReloadingContext(tls_certs / "tls.crt", tls_certs / "tls.key").current
    intake = start(tls=tls, handshake_timeout=10, max_connections_per_peer=2)
    client = ssl.create_default_context(cafile=str(tls_certs / "ca.crt"))
    before = _refused("per_peer")
    other = ("127.0.0.2", 0)  # another address of this machine: another peer
    held = [socket.create_connection(("127.0.0.1", intake.port), 10, other) for _ in range(2)]
    try:
        eventually(lambda: intake.server.per_peer == {"127.0.0.2": 2}, "both counted")
        with socket.create_connection(("127.0.0.1", intake.port), 10, other) as one_more:
            assert one_more.recv(4096) == b"", "closed at once, with no 503: no TLS yet"
        assert _refused("per_peer") == before + 1
        conn = intake.connection(client)  # Falco, from 127.0.0.1: a cap of its own
        try:
            conn.request("POST", "/falco", body=LINES[0], headers=FALCO_HEADERS)
            assert conn.getresponse().status == 200
        finally:
            conn.close()
    finally:
        for sock in held:
            sock.close()
    eventually(lambda: intake.server.per_peer == {} and not intake.server.slots, "all released")


def test_a_client_that_reads_its_answers_late_is_then_kept_alive_not_cut_at_the_write_deadline(
    start,
):
    """Answers left unread pause the connection under a write deadline; once the client
    reads them, it is an idle kept-alive connection again, and its next request is read."""
    intake = start(body_timeout=1.0, keepalive=30)
    big = b"x" * 200_000  # echoed back: a few of them fill the write buffer
    request = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(big), big)
    count = 20
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before the handshake
        sock.settimeout(10)
        sock.connect(("127.0.0.1", intake.port))
        # the server stops reading once it is paused: the last requests wait in the kernel
        sender = threading.Thread(target=sock.sendall, args=(request * count,), daemon=True)
        sender.start()
        eventually(
            lambda: any(c.writing_paused for c in intake.server.connections), "writing paused"
        )
        answers = b""
        while answers.count(b"HTTP/1.1 201 ") < count or not answers.endswith(b'"}'):
            answers += sock.recv(1 << 20)
        sender.join(10)
        eventually(lambda: not any(c.writing_paused for c in intake.server.connections), "resumed")
        threading.Event().wait(1.5)  # past the write deadline the pause had set
        sock.sendall(b"GET /after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        after = b""
        while chunk := sock.recv(65536):
            after += chunk
    assert after.startswith(b"HTTP/1.1 201 ") and b'"path": "/after"' in after, after[:200]
