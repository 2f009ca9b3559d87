"""gunicorn's gevent worker with a deadline on every phase a client controls (adapter).

Issue #21: with ``gthread``, 120 connections that sent 11 bytes of a TLS ClientHello
held every thread in ``recv`` and the apiserver's calls timed out. Here each connection
is a greenlet, so a slow client holds a greenlet, never a thread, and each phase a
client controls ends at a deadline:

- the TLS handshake (``handshake_timeout``), done here with the certificate as it is on
  disk now (gevent's own TLS wrapping would keep the first one for the worker's life);
- the first request's headers, counted from the handshake (Go's client sends its
  request at once), and a later request's headers, counted from its first byte; the wait
  for that first byte is the keep-alive (``KEEPALIVE_SECONDS``: the apiserver reuses
  connections);
- the body (``body_timeout``), read whole before the app runs, so that the app never
  waits on a client, and each answer's write.

A connection past a deadline is counted in ``whoexec_webhook_connections_closed`` and
closed (a late request is answered 408 first). When a worker's connections near its cap
(``worker_connections``), the connections that have waited longest on their client with
no request under way give way to new ones (Go's ``net/http``, the apiserver's client,
opens a new one when an idle one is closed). Nothing in flight is touched.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import time
from functools import partial
from typing import Any

import gevent
from gevent import monkey
from gevent import socket as gsocket
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn import http, util
from gunicorn.http.body import Body, LengthReader
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker
from prometheus_client import Counter

log = logging.getLogger("whoexec.serve")

CLOSED = Counter(
    "whoexec_webhook_connections_closed",
    "Client connections the webhook closed before the client did, by reason.",
    ["reason"],
)
for _reason in (
    "handshake_timeout",
    "header_timeout",
    "body_timeout",
    "write_timeout",
    "keepalive",
    "made_room",
):
    CLOSED.labels(_reason)


class _Late(OSError):
    """A client missed the deadline of ``phase`` (an OSError: gunicorn passes those on)."""

    def __init__(self, phase: str) -> None:
        super().__init__(phase)
        self.phase = phase


_TIMED_OUT_BODY = b'{"error":"the request did not arrive in time","status":408}'
_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\n\r\n%s" % (len(_TIMED_OUT_BODY), _TIMED_OUT_BODY)
)


#: phases in which a connection has no request under way: it may give way near the cap
_WAITING = ("handshake", "header", "idle")


class _Connection:
    """A client socket whose reads and writes end at the deadline of the current phase.

    gunicorn's parser and response call ``recv`` and ``sendall`` on it; everything else
    goes to the socket. The worker knows which connections wait on their client."""

    def __init__(self, sock: socket.socket, worker: DeadlineWorker) -> None:
        self.sock: socket.socket = sock
        self.worker = worker
        self.phase = ""
        self.deadline = 0.0
        self.expect("handshake", worker.handshake_timeout)

    def expect(self, phase: str, seconds: float) -> None:
        self.phase, self.deadline = phase, time.monotonic() + seconds
        waiting = self.worker.waiting
        if phase not in _WAITING:
            waiting.pop(self, None)
        elif phase != "header" or self not in waiting:
            waiting.pop(self, None)
            waiting[self] = None  # to the end: the dict is ordered by the wait's start

    def recv(self, size: int) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _Late(self.phase)
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(size)
        except TimeoutError:
            raise _Late(self.phase) from None
        if self.phase == "idle" and data:
            # the next request's first byte: its headers have their own deadline
            self.expect("header", self.worker.header_timeout)
        return data

    def sendall(self, data: bytes) -> None:
        self.sock.settimeout(self.worker.body_timeout)
        try:
            self.sock.sendall(data)
        except TimeoutError:
            raise _Late("write") from None

    def send(self, data: bytes) -> int:
        self.sendall(data)
        return len(data)

    def give_way(self) -> None:
        """Closed to make room: the greenlet blocked on it sees the end of the stream."""
        self.worker.waiting.pop(self, None)
        CLOSED.labels("made_room").inc()
        # the socket's, not TLS's: SSLSocket.shutdown drops the TLS state under the
        # greenlet reading it; this wakes that greenlet with an OSError
        with contextlib.suppress(OSError):
            gsocket.socket.shutdown(self.sock, socket.SHUT_RDWR)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


#: how long, and how much, a late client is read after its 408 before the close
LINGER_SECONDS = 1.0
LINGER_BYTES = 64 * 1024


def _linger(sock: Any) -> None:
    """Read and drop what a late client still sends, briefly, after its 408: a close with
    unread bytes makes the kernel send a reset, which can destroy the 408 in the client's
    buffers before it is read (RFC 9112 section 9.6, "tear-down"). Bounded in time and bytes,
    so a client that keeps sending cannot hold the connection."""
    with contextlib.suppress(OSError, ValueError):
        # the socket's, not TLS's (see give_way): the end of our side, reading goes on
        gsocket.socket.shutdown(sock, socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        drained = 0
        while drained < LINGER_BYTES and (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            chunk = sock.recv(4096)
            if not chunk:
                return
            drained += len(chunk)


class DeadlineWorker(GeventWorker):  # type: ignore[misc]
    """The worker ``whoexec serve`` runs: gevent, TLS done here, deadlines on clients."""

    def init_process(self) -> None:
        app = self.app
        self.handshake_timeout = app.settings.handshake_timeout
        self.header_timeout = app.settings.header_timeout
        self.body_timeout = app.settings.body_timeout
        self.max_body_bytes = app.settings.max_body_bytes
        self.keepalive = float(self.cfg.keepalive)
        #: connections waiting on their client (no request under way), longest first
        self.waiting: dict[_Connection, None] = {}
        self.pool: Pool | None = None
        super().init_process()  # monkey-patches, then runs: never returns

    def patch(self) -> None:
        # threads stay threads: the pod cache's list+watch runs in one, with Events and
        # locks made before the fork; gevent's sockets work in any thread (a hub each).
        # `whoexec serve` patches in the master already (webhook/admission/commands.py): not twice
        if not monkey.is_module_patched("socket"):
            monkey.patch_all(thread=False)
        listeners: list[Any] = getattr(self, "sockets")  # noqa: B009 (gunicorn's, untyped)
        self.sockets = [
            gsocket.socket(s.FAMILY, socket.SOCK_STREAM, fileno=s.sock.detach()) for s in listeners
        ]
        # contexts made from here on are gevent's (cooperative); the one loaded before
        # the fork would block the whole worker in a handshake
        self.tls = self.app.tls_factory()

    def run(self) -> None:
        # GeventWorker.run, without gevent's TLS wrapping (see the module's comment)
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            self.pool = Pool(self.worker_connections)
            server = StreamServer(listener, handle=partial(self.handle, listener), spawn=self.pool)
            if self.cfg.workers > 1:
                server.max_accept = 1
            server.start()
            servers.append(server)
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        for server in servers:
            server.close()
        stop_at = time.monotonic() + self.cfg.graceful_timeout
        while time.monotonic() < stop_at and any(
            s.pool.free_count() != s.pool.size for s in servers
        ):
            for connection in list(self.waiting):  # no request under way: close now
                connection.give_way()
            self.notify()
            gevent.sleep(0.2)
        for server in servers:
            server.stop(timeout=1)

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        client.setblocking(True)
        connection = _Connection(client, self)
        self._make_room()
        req = None
        try:
            with gevent.Timeout(self.handshake_timeout, _Late("handshake")):
                connection.sock = self.tls.current().wrap_socket(
                    client, server_side=True, do_handshake_on_connect=False
                )
                connection.sock.do_handshake()  # type: ignore[attr-defined]
            # the first request's headers: Go's client sends them with the handshake
            connection.expect("header", self.header_timeout)
            parser = http.get_parser(self.cfg, connection, addr)
            listener_name = listener.getsockname()
            while True:
                try:
                    req = next(parser)
                except StopIteration:
                    break
                connection.expect("body", self.body_timeout)
                self._read_body(req, connection)
                if not self.handle_request(listener_name, req, connection, addr):
                    break
                connection.expect("idle", self.keepalive)
                req = None
        except _Late as late:
            CLOSED.labels("keepalive" if late.phase == "idle" else f"{late.phase}_timeout").inc()
            if late.phase in ("header", "body"):
                with contextlib.suppress(OSError):
                    connection.sendall(_TIMED_OUT)
                    _linger(connection.sock)
        except (StopIteration, http.errors.NoMoreData, gevent.GreenletExit):
            pass
        except (ssl.SSLError, OSError) as exc:
            log.debug("connection from %s closed: %s", addr, exc)
        except Exception as exc:
            # a request gunicorn's parser refuses (smuggling, bad chunks): its 4xx
            self.handle_error(req, connection, addr, exc)
        finally:
            self.waiting.pop(connection, None)
            util.close(connection.sock)

    def _read_body(self, req: Any, connection: _Connection) -> None:
        """The whole body, before the app runs, within the body deadline; over the
        limit, the app answers 413 from what was read and the connection is closed."""
        reader = req.body.reader
        if isinstance(reader, LengthReader) and reader.length > self.max_body_bytes:
            data = b""  # the app answers 413 on the declared length alone
            req.must_close = True  # and the body is never read
        else:
            if req._expected_100_continue:  # gunicorn would send it once the app runs
                connection.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                req._expected_100_continue = False
            data = req.body.read(self.max_body_bytes + 1)
            if len(data) > self.max_body_bytes:
                req.must_close = True  # the rest of the body is never read
        req.body = Body(io.BytesIO(data))

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        try:
            # AsyncWorker's: GeventWorker's would hide that the connection must close
            return bool(AsyncWorker.handle_request(self, listener_name, req, sock, addr))
        except StopIteration:
            return False

    def _make_room(self) -> None:
        """Near the cap, the connections that have waited longest on their client with no
        request under way give way to new ones: stalled handshakes and headers (a real
        client is through them in milliseconds), or the longest idle."""
        pool = self.pool
        reserve = max(1, pool.size // 10) if pool is not None else 0
        if pool is None or pool.free_count() >= reserve:
            return
        for connection in list(self.waiting)[: reserve - pool.free_count()]:
            connection.give_way()
