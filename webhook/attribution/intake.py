"""``whoexec consume --listen``: the HTTP server in front of the inbox (adapter).

Falco's ``http_output`` posts every alert on its own and waits for the answer before the
next one (falco#2895, and ``bench/README.md``): the time this server takes per alert is
Falco's output rate. gunicorn and Flask cost 370 µs per alert, 0.32x a minimal Go
receiver (#12). So ``POST /falco`` is answered here, on an event loop (uvloop, with the
httptools parser that uvicorn uses), by one append to the inbox log, and every other
route (``/k8s-audit``, ``/api/*``, ``/healthz``, ``/readyz``, ``/metrics``) goes to the
Flask app in a thread pool.

Every body is all or nothing: durable in the inbox before the 200, or refused whole, so
a sender that retries never loses a line. Refusals: 413 for a declared length over the
limit (before a byte is read) or more than ``max_lines`` lines; 400 for a body with no
JSON line; 503 with ``Retry-After`` while the inbox is full or cannot be written, or while
the pipeline process has not run for ``stale_after`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import signal
import socket
import ssl
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any, Protocol, cast

import httptools
import orjson
from prometheus_client import Counter

from webhook.attribution.pipeline import SKIPPED, RateLimitedLog
from webhook.errors import SpoolFull

log = logging.getLogger("whoexec.intake")

INTAKE_REFUSED = Counter(
    "whoexec_consumer_intake_refused",
    "POST /falco bodies refused, by reason: nothing of them was accepted.",
    ["reason"],
)
CONNECTIONS_REFUSED = Counter(
    "whoexec_consumer_intake_connections_refused",
    "Connections refused at once, by cap: global or per_peer (answered 503 without TLS).",
    ["cap"],
)
CONNECTIONS_CLOSED = Counter(
    "whoexec_consumer_intake_connections_closed",
    "Connections the intake closed before the client did, by reason.",
    ["reason"],
)
for _cap in ("global", "per_peer"):
    CONNECTIONS_REFUSED.labels(_cap)
for _reason in (
    "handshake_timeout",
    "header_timeout",
    "body_timeout",
    "write_timeout",
    "keepalive",
    "made_room",
):
    CONNECTIONS_CLOSED.labels(_reason)
#: rejected bodies are logged at most once per reason per 10 s, with the count skipped
_intake_log = RateLimitedLog(topic="intake")
#: a connection stops being read while this much of its answers waits to be sent, or
#: this many of its pipelined requests wait to be answered (issue #21: a client that
#: pipelined GET /healthz and read nothing took the intake from 51 MB to 1.24 GB)
WRITE_BUFFER_HIGH = 256 * 1024
MAX_QUEUED = 32

_REASONS = {
    100: "Continue",
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class Inbox(Protocol):
    def put_many(self, bodies: list[bytes]) -> None: ...


class Refused(Exception):
    """A body the intake does not accept: its status, reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def _refusal(refused: Refused) -> tuple[int, bytes]:
    INTAKE_REFUSED.labels(refused.reason).inc()
    _intake_log.warn(refused.reason, f"POST /falco refused ({refused.status}): {refused}")
    return refused.status, orjson.dumps({"error": str(refused), "accepted": 0})


def accept_lines(inbox: Inbox, body: bytes, max_lines: int = 10_000) -> tuple[int, bytes]:
    """Append every JSON line of a body to the inbox; the HTTP status and a JSON reply."""
    lines = [line for line in body.splitlines() if line.strip()]
    if not lines:
        reply = {"accepted": 0, "rejected": 0, "errors": ["the body holds no JSON line"]}
        return 400, orjson.dumps(reply)
    if len(lines) > max_lines:
        return _refusal(
            Refused(413, "too_many_lines", f"{len(lines)} lines in one body, over {max_lines}")
        )
    accepted: list[bytes] = []
    errors: list[str] = []
    for number, line in enumerate(lines, 1):
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            errors.append(f"line {number}: not JSON: {exc}")
            continue
        accepted.append(line)
    try:
        inbox.put_many(accepted)
    except SpoolFull as exc:
        return _refusal(Refused(503, "inbox_full", f"{exc}; retry later"))
    except OSError as exc:
        # a full or failing disk: nothing of the body was kept (the writer takes back a
        # partial write), so the sender may retry it whole
        return _refusal(Refused(503, "inbox_unwritable", f"cannot write the inbox: {exc}"))
    if errors:
        SKIPPED.labels("not_json").inc(len(errors))
        _intake_log.warn("not_json", f"POST /falco: {len(errors)} of {len(lines)} lines not JSON")
    status = 400 if errors and not accepted else 200
    reply = {"accepted": len(accepted), "rejected": len(errors), "errors": errors[:5]}
    return status, orjson.dumps(reply)


class FalcoEndpoint:
    """``POST /falco``: a verdict on the headers (before the body is read), then the body.

    While the pipeline process has not run for ``stale_after`` seconds (its heartbeat
    file), bodies are refused with 503: a 200 would promise what nothing behind the inbox
    is doing.
    """

    def __init__(
        self,
        inbox: Inbox,
        max_body_bytes: int,
        *,
        heartbeat: Path | None = None,
        stale_after: float = 30.0,
        max_lines: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inbox = inbox
        self.max_body_bytes = max_body_bytes
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.max_lines = max_lines
        self.clock = clock
        self._started = clock()
        self._checked = (-1e18, "")

    def pipeline_problem(self) -> str:
        """Why nothing processes the inbox now, or "" (the heartbeat, looked at once a second)."""
        if self.heartbeat is None:
            return ""
        now = self.clock()
        if now - self._checked[0] < 1.0:
            return self._checked[1]
        try:
            age = now - self.heartbeat.stat().st_mtime
        except FileNotFoundError:
            age = now - self._started  # not started yet: give it the same grace
        problem = ""
        if age > self.stale_after:
            problem = f"the pipeline process has not run for {age:.0f}s"
        self._checked = (now, problem)
        return problem

    def before_body(self, declared: int | None) -> tuple[int, bytes] | None:
        """A refusal decided from the headers alone, or None to read the body."""
        if declared is not None and declared > self.max_body_bytes:
            return self.too_large()
        if problem := self.pipeline_problem():
            return _refusal(Refused(503, "pipeline_down", problem))
        return None

    def too_large(self) -> tuple[int, bytes]:
        limit = self.max_body_bytes
        return _refusal(Refused(413, "too_large", f"body over {limit} bytes"))

    def accept(self, body: bytes) -> tuple[int, bytes]:
        return accept_lines(self.inbox, body, self.max_lines)


@dataclass
class _Request:
    method: str
    target: bytes
    headers: list[tuple[bytes, bytes]]
    body: bytes
    keep_alive: bool
    #: decided from the headers alone (the body was never read): sent, then closed
    early: tuple[int, bytes] | None = None


@dataclass
class _Parsing:
    target: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    header_bytes: int = 0
    content_length: int | None = None
    body: list[bytes] = field(default_factory=list)
    body_bytes: int = 0
    falco: bool = False
    expect_continue: bool = False
    early: tuple[int, bytes] | None = None


def _error(message: str) -> bytes:
    return orjson.dumps({"error": message})


class _Abort(Exception):
    """Stop parsing this connection: answer ``status`` with ``reply`` (JSON), and close."""

    def __init__(self, status: int, message: str, reply: bytes | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reply = reply if reply is not None else _error(message)


def _response(
    status: int,
    headers: Iterable[tuple[str, str]],
    body: bytes,
    keep_alive: bool,
    reason: str = "",
) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason or _REASONS.get(status, 'Unknown')}"]
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append(f"Content-Length: {len(body)}")
    if not keep_alive:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def _json_response(status: int, reply: bytes, keep_alive: bool) -> bytes:
    if status == 200 and (cached := _OK.get((reply, keep_alive))):
        return cached
    headers = [("Content-Type", "application/json")]
    if status == 503:
        headers.append(("Retry-After", "5"))
    response = _response(status, headers, reply, keep_alive)
    if status == 200 and len(_OK) < 64:
        _OK[(reply, keep_alive)] = response  # almost every answer is "1 accepted"
    return response


_OK: dict[tuple[bytes, bool], bytes] = {}
_TIMED_OUT = _json_response(
    408, orjson.dumps({"error": "the request did not arrive in time"}), keep_alive=False
)
_CONNECTIONS_FULL = _json_response(
    503, orjson.dumps({"error": "too many open connections; retry later"}), keep_alive=False
)


class _Connection(asyncio.Protocol):
    """One client connection: httptools parses, /falco is answered inline, the rest goes
    to the WSGI app in the server's thread pool, answers in request order."""

    def __init__(self, server: IntakeServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.parsing = _Parsing()
        self.queue: list[_Request] = []
        self.running = False
        self.closing = False
        #: a request was refused on its headers: nothing more is read from this client
        self.refusing = False
        #: bytes that came before connection_made: under TLS, asyncio's start_tls hands the
        #: first request (sent with the client's Finished) over before it returns
        self.early_data: list[bytes] = []
        #: what the client owes and by when (loop time): "header" (the first request's
        #: first byte, or a request's headers once begun), "body", "idle" (between
        #: requests, the keep-alive), "write" (its answers unread); "" while the app
        #: runs. One sweep for all connections, no timer per request
        self.phase = ""
        self.deadline = 0.0
        #: when its phase began, as a count of phase changes across the server: uvloop's
        #: clock moves in whole milliseconds, so two connections could tie on its time and
        #: the one that gives way at the cap would be a coin toss, not the longest waiting
        self.since = 0
        self.writing_paused = False
        self.reading_paused = False

    # --- connection ---------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        server = self.server
        if server.tls is None and not server.admit(self, self.peer, self.transport):
            return
        server.connections.add(self)
        # Falco sends its request as soon as it is connected
        self.expect("header", server.header_timeout)
        early, self.early_data = self.early_data, []
        for data in early:
            self.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.server.release(self)
        self.closing = True

    def expect(self, phase: str, seconds: float) -> None:
        now = self.server.loop_or_fail().time()
        if phase != self.phase:
            self.since = next(self.server.phase_changes)
        self.phase, self.deadline = phase, now + seconds

    @property
    def waiting(self) -> bool:
        """Waits on its client with no request under way: may give way near the cap."""
        return self.phase in ("header", "idle") and not self.running and not self.queue

    # --- backpressure: answers not read, requests piling up -----------------------------
    def pause_writing(self) -> None:
        self.writing_paused = True
        self.expect("write", self.server.body_timeout)
        self._pause_reading()

    def resume_writing(self) -> None:
        self.writing_paused = False
        if self.phase == "write":
            self.expect("idle", self.server.keepalive)
        self._run_queue()
        self._maybe_resume_reading()

    def _pause_reading(self) -> None:
        if not self.reading_paused and self.transport is not None:
            self.reading_paused = True
            with contextlib.suppress(RuntimeError):
                self.transport.pause_reading()

    def _maybe_resume_reading(self) -> None:
        if (
            self.reading_paused
            and not self.writing_paused
            and len(self.queue) < MAX_QUEUED
            and self.transport is not None
            and not self.closing
        ):
            self.reading_paused = False
            with contextlib.suppress(RuntimeError):
                self.transport.resume_reading()

    @property
    def peer(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport else None
        return str(peer[0]) if isinstance(peer, tuple) else ""

    def timed_out(self) -> None:
        """Past the deadline of its phase: a late request is told 408, then closed."""
        reason = "keepalive" if self.phase == "idle" else f"{self.phase}_timeout"
        CONNECTIONS_CLOSED.labels(reason).inc()
        if self.phase in ("header", "body") and self.transport is not None:
            with contextlib.suppress(RuntimeError):
                self.transport.write(_TIMED_OUT)
        self._close()

    def _close(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            self.early_data.append(data)
            return
        if self.closing or self.refusing:
            return
        try:
            self.parser.feed_data(data)
        except _Abort as abort:
            self._abort(abort.status, abort.reply)
            return
        except httptools.HttpParserCallbackError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _Abort):
                self._abort(cause.status, cause.reply)
            else:
                log.error("the HTTP parser failed: %r", cause)
                self._abort(400, _error("malformed HTTP request"))
            return
        except httptools.HttpParserUpgrade:
            self._abort(400, _error("protocol upgrades are not supported"))
            return
        except httptools.HttpParserError as exc:
            self._abort(400, _error(f"malformed HTTP request: {exc}"))
            return
        if len(self.queue) >= MAX_QUEUED:
            self._pause_reading()
        self._run_queue()

    def _abort(self, status: int, reply: bytes) -> None:
        """A request that cannot be parsed or is refused before its body: answer, close."""
        if status == 0:  # refused on its headers: answered in turn by _run_queue
            self._run_queue()
            return
        if self.transport is None or self.closing:
            return
        self.queue.clear()
        self.transport.write(_json_response(status, reply, False))
        self._close()

    # --- httptools callbacks ------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.parsing = _Parsing()
        if self.phase != "header":  # the first request's deadline runs from the connect
            self.expect("header", self.server.header_timeout)

    def on_url(self, url: bytes) -> None:
        self.parsing.target += url
        if len(self.parsing.target) > self.server.max_header_bytes:
            raise _Abort(431, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        parsing = self.parsing
        parsing.header_bytes += len(name) + len(value) + 4
        if parsing.header_bytes > self.server.max_header_bytes or len(parsing.headers) >= 100:
            raise _Abort(431, "request headers too large")
        parsing.headers.append((name, value))
        lower = name.lower()
        if lower == b"content-length":
            # llhttp has refused any other value (a sign, a non-digit, an empty or a
            # repeated one) with "Invalid character in Content-Length": digits, maybe spaced
            parsing.content_length = int(value)
        elif lower == b"expect":
            parsing.expect_continue = value.strip().lower() == b"100-continue"

    def on_headers_complete(self) -> None:
        parsing = self.parsing
        method = self.parser.get_method()
        path = parsing.target.split(b"?", 1)[0]
        parsing.falco = method == b"POST" and path == b"/falco"
        if parsing.falco:
            parsing.early = self.server.falco.before_body(parsing.content_length)
        elif (parsing.content_length or 0) > self.server.max_body_bytes:
            parsing.early = (413, orjson.dumps({"error": "body too large"}))
        if parsing.early is not None:
            # answered before a byte of the body (which may be 1 GiB) is read, then closed;
            # after the answers to any requests before it (pipelining keeps the order)
            self.queue.append(
                _Request(method.decode("latin-1"), parsing.target, [], b"", False, parsing.early)
            )
            self.refusing = True
            raise _Abort(0, "refused on its headers")
        self.expect("body", self.server.body_timeout)
        if parsing.expect_continue and self.transport is not None:
            # curl sends "Expect: 100-continue" for bodies over 1 KiB and waits for this
            # line (up to 1 s) before sending the body: a Falco alert is over 1 KiB
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        parsing = self.parsing
        parsing.body_bytes += len(body)
        limit = self.server.falco.max_body_bytes if parsing.falco else self.server.max_body_bytes
        if parsing.body_bytes > limit:
            # a chunked body announces no length: refused as soon as it passes the limit
            if parsing.falco:  # Falco's own answer, as for a Content-Length over the limit
                status, reply = self.server.falco.too_large()
                raise _Abort(status, "body too large", reply)
            raise _Abort(413, "body too large")
        parsing.body.append(body)

    def on_message_complete(self) -> None:
        parsing = self.parsing
        self.expect("idle", self.server.keepalive)
        self.queue.append(
            _Request(
                self.parser.get_method().decode("latin-1"),
                parsing.target,
                parsing.headers,
                b"".join(parsing.body),
                self.parser.should_keep_alive(),
            )
        )

    # --- answering ----------------------------------------------------------------------
    def _run_queue(self) -> None:
        while self.queue and not self.running and not self.closing and not self.writing_paused:
            request = self.queue.pop(0)
            if request.early is not None:
                status, reply = request.early
                self._send(_json_response(status, reply, False), False)
                return
            path = request.target.split(b"?", 1)[0]
            if request.method == "POST" and path == b"/falco":
                try:
                    status, reply = self.server.falco.accept(request.body)
                except Exception:
                    log.exception("POST /falco failed")
                    status, reply = 500, b'{"error":"internal error","accepted":0}'
                self._send(_json_response(status, reply, request.keep_alive), request.keep_alive)
            else:
                self.running = True
                self.server.loop_or_fail().create_task(self._run_wsgi(request))
        self._maybe_resume_reading()

    async def _run_wsgi(self, request: _Request) -> None:
        loop = self.server.loop_or_fail()
        try:
            data = await loop.run_in_executor(
                self.server.executor, self.server.call_wsgi, request, self.peer
            )
        except Exception:
            log.exception("%s %r failed", request.method, request.target[:200])
            data = _json_response(500, b'{"error":"internal error"}', request.keep_alive)
        self.running = False
        self._send(data, request.keep_alive)
        self._run_queue()

    def _send(self, data: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if not keep_alive:
            self._close()


class IntakeServer:
    """The event loop's server: ``/falco`` inline, every other request to ``wsgi_app``."""

    def __init__(
        self,
        falco: FalcoEndpoint,
        wsgi_app: Callable[..., Iterable[bytes]],
        *,
        threads: int = 8,
        max_body_bytes: int = 8 * 1024 * 1024,
        max_header_bytes: int = 64 * 1024,
        keepalive: float = 120.0,
        max_connections: int = 1024,
        max_connections_per_peer: int = 64,
        handshake_timeout: float = 5.0,
        header_timeout: float = 5.0,
        body_timeout: float = 10.0,
        tls: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.falco = falco
        self.wsgi_app = wsgi_app
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes
        self.keepalive = keepalive
        self.max_connections = max_connections
        self.max_connections_per_peer = max_connections_per_peer
        self.handshake_timeout = handshake_timeout
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.tls = tls
        #: every open TCP connection (a TLS one from its accept) and its peer's address
        self.slots: dict[asyncio.Protocol, str] = {}
        self.per_peer: dict[str, int] = {}
        self.executor = ThreadPoolExecutor(threads, thread_name_prefix="whoexec-http")
        self.connections: set[_Connection] = set()
        self.phase_changes = itertools.count(1)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.port = 0
        self.scheme = "https" if tls else "http"

    def loop_or_fail(self) -> asyncio.AbstractEventLoop:
        assert self.loop is not None
        return self.loop

    def _protocol(self) -> asyncio.Protocol:
        if self.tls is None:
            return _Connection(self)
        return _TlsGate(self)

    def call_wsgi(self, request: _Request, peer: str) -> bytes:
        """Run the WSGI app for one request (in a pool thread); the whole response."""
        raw_path, _, query = request.target.partition(b"?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": request.method,
            "SCRIPT_NAME": "",
            "PATH_INFO": urllib.parse.unquote_to_bytes(raw_path).decode("latin-1"),
            "QUERY_STRING": query.decode("latin-1"),
            "SERVER_NAME": "whoexec",
            "SERVER_PORT": str(self.port),
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": peer,
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": self.scheme,
            "wsgi.input": BytesIO(request.body),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
            "CONTENT_LENGTH": str(len(request.body)),
        }
        for name, value in request.headers:
            key = name.decode("latin-1").upper().replace("-", "_")
            if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
                continue
            if key == "CONTENT_TYPE":
                environ[key] = value.decode("latin-1")
                continue
            key = "HTTP_" + key
            text = value.decode("latin-1")
            environ[key] = f"{environ[key]},{text}" if key in environ else text
        answer: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            answer[:] = [status, headers]
            return chunks.append

        chunks: list[bytes] = []
        result = self.wsgi_app(environ, start_response)
        try:
            chunks.extend(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status_line, headers = answer
        keep = [(k, v) for k, v in headers if k.lower() not in ("content-length", "connection")]
        code, _, reason = status_line.partition(" ")  # the app's own words: "201 Created"
        return _response(int(code), keep, b"".join(chunks), request.keep_alive, reason)

    # --- the caps ---------------------------------------------------------------------
    def admit(self, protocol: asyncio.Protocol, peer: str, transport: asyncio.Transport) -> bool:
        """Take a new TCP connection, or refuse it: past the peer's cap always, past the
        global cap unless a connection waiting on its client gives way. A refusal is
        answered 503 (without TLS), counted and logged, never silent."""
        cap = ""
        if self.per_peer.get(peer, 0) >= self.max_connections_per_peer:
            cap = "per_peer"
        elif len(self.slots) >= self.max_connections and not self._make_room():
            cap = "global"
        if cap:
            CONNECTIONS_REFUSED.labels(cap).inc()
            limit = self.max_connections_per_peer if cap == "per_peer" else self.max_connections
            _intake_log.warn(
                f"connection_cap_{cap}",
                f"connection from {peer} refused: {cap.replace('_', ' ')} cap of {limit} "
                "open connections reached",
            )
            if self.tls is None:
                transport.write(_CONNECTIONS_FULL)
            transport.close()
            return False
        self.slots[protocol] = peer
        self.per_peer[peer] = self.per_peer.get(peer, 0) + 1
        return True

    def release(self, protocol: asyncio.Protocol) -> None:
        peer = self.slots.pop(protocol, None)
        if peer is not None:
            left = self.per_peer[peer] - 1
            if left:
                self.per_peer[peer] = left
            else:
                del self.per_peer[peer]

    def hand_over(self, gate: asyncio.Protocol, connection: asyncio.Protocol) -> None:
        """A TLS connection's slot passes from its handshake to its HTTP connection."""
        self.slots[connection] = self.slots.pop(gate)

    def _make_room(self) -> bool:
        """At the global cap, the connection that has waited longest on its client with
        no request under way is closed for the new one."""
        waiting = [c for c in self.connections if c.waiting and not c.closing]
        if not waiting:
            return False
        oldest = min(waiting, key=lambda c: c.since)
        CONNECTIONS_CLOSED.labels("made_room").inc()
        oldest._close()
        self.release(oldest)  # its slot is free now, not when the loop reports it closed
        return True

    async def _sweep(self) -> None:
        """Closes every connection past the deadline of its phase (see _Connection)."""
        loop = self.loop_or_fail()
        interval = min(max(min(self.header_timeout, self.body_timeout) / 4, 0.05), 1.0)
        while True:
            await asyncio.sleep(interval)
            now = loop.time()
            for connection in list(self.connections):
                if connection.deadline < now and not connection.running and connection.phase:
                    connection.timed_out()

    async def serve(self, sock: socket.socket, stop: asyncio.Event) -> None:
        """Serve on a bound listening socket until ``stop``, then finish open requests."""
        self.loop = asyncio.get_running_loop()
        self.port = sock.getsockname()[1]
        server = await self.loop.create_server(self._protocol, sock=sock, backlog=1024)
        host = sock.getsockname()[0]
        log.warning("Listening at: %s://%s:%d", self.scheme, host, self.port)
        sweeper = self.loop.create_task(self._sweep())
        await stop.wait()
        sweeper.cancel()
        server.close()
        deadline = time.monotonic() + 20
        while any(c.running or c.queue for c in self.connections) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection._close()
        await server.wait_closed()
        self.executor.shutdown(wait=True)


class _TlsGate(asyncio.Protocol):
    """Takes a TCP connection through the TLS handshake with the certificate as it is
    now on disk (rotated certificates apply to new connections), then hands it over."""

    def __init__(self, server: IntakeServer) -> None:
        self.server = server

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw = cast(asyncio.Transport, transport)
        peer = raw.get_extra_info("peername")
        if not self.server.admit(self, str(peer[0]) if isinstance(peer, tuple) else "", raw):
            return
        # not a byte read until start_tls takes over: the ClientHello must reach TLS
        raw.pause_reading()
        self.server.loop_or_fail().create_task(self._handshake(raw))

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.release(self)  # before the handshake ended (refused, reset)

    async def _handshake(self, transport: asyncio.Transport) -> None:
        assert self.server.tls is not None
        connection = _Connection(self.server)
        try:
            secured = await self.server.loop_or_fail().start_tls(
                transport,
                connection,
                self.server.tls(),
                server_side=True,
                ssl_handshake_timeout=self.server.handshake_timeout,
            )
        except (TimeoutError, OSError, ssl.SSLError, ConnectionError) as exc:
            # asyncio's loop aborts a handshake past its timeout with this error
            if isinstance(exc, (TimeoutError, ConnectionAbortedError)):
                CONNECTIONS_CLOSED.labels("handshake_timeout").inc()
            log.debug("TLS handshake failed: %s", exc)
            transport.close()
            self.server.release(self)
            return
        if secured is None:
            self.server.release(self)
            return
        self.server.hand_over(self, connection)
        connection.connection_made(secured)


def new_event_loop(tls: bool) -> asyncio.AbstractEventLoop:
    """uvloop for plain HTTP (Falco's default, the hot path: 0.94x a Go receiver against
    0.80x with asyncio's own loop, bench/README.md); asyncio's loop under TLS, where the
    handshake costs more than the loop saves and where uvloop 0.23's server-side
    ``start_tls`` holds a connection whose client certificate failed verification until
    the handshake timeout instead of refusing it at once."""
    if tls:
        return asyncio.new_event_loop()
    import uvloop

    return uvloop.new_event_loop()


def run_intake(server: IntakeServer, sock: socket.socket) -> None:
    """Run the server until SIGTERM or SIGINT, then finish the requests under way."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await server.serve(sock, stop)

    with asyncio.Runner(loop_factory=lambda: new_event_loop(server.tls is not None)) as runner:
        runner.run(main())


def bind(listen: str) -> socket.socket:
    """A listening TCP socket for ``host:port`` (port 0: the kernel picks one)."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"  # noqa: S104 (an explicit --listen :PORT)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, int(port)))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
