"""Hostile clients for the hostile-client suite and the benchmarks: loopback only, bounded.

:class:`Hostile` holds connections open against a server, each doing one of the attacks
of issue #21, in a thread of its own (an asyncio loop), and opens a new one whenever the
server closes one, until ``stop()`` or its own time limit. It records, per attack, how
often the server closed the connection and after how long. :func:`pipeline_unread`
pipelines requests into a connection and never reads an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

#: the first 11 bytes of a TLS 1.2 ClientHello record: the server waits for the rest
CLIENT_HELLO_START = bytes.fromhex("16030100f5010000f10303")

ATTACKS = ("tls_stall", "silent", "partial_headers", "slow_body", "idle")


@dataclass
class Closed:
    """What the server did to one attack's connections."""

    opened: int = 0
    #: seconds from the connection's start to the server closing it
    closed_after: list[float] = field(default_factory=list)
    #: the first bytes the server answered before it closed (a status line, or nothing)
    answers: list[bytes] = field(default_factory=list)


class Hostile:
    """``counts`` connections of each attack held against ``127.0.0.1:port``.

    - ``tls_stall``: 11 bytes of a TLS ClientHello, then nothing;
    - ``silent``: a TCP connection that sends nothing (under TLS: a handshake never begun);
    - ``partial_headers``: a request line and one header, then one more header byte every
      ``drip`` seconds, never the end of the headers;
    - ``slow_body``: headers announcing 100,000 bytes, then one byte every ``drip`` seconds;
    - ``idle``: one complete request, answered, then nothing (a kept-alive connection).

    With ``tls``, every attack but ``tls_stall`` and ``silent`` first completes a TLS
    handshake, as the apiserver's connections do.
    """

    def __init__(
        self,
        port: int,
        counts: dict[str, int],
        *,
        tls: ssl.SSLContext | None = None,
        path: str = "/healthz",
        drip: float = 1.0,
        seconds: float = 120.0,
        reopen: bool = True,
        source: str = "127.0.0.1",
    ) -> None:
        unknown = set(counts) - set(ATTACKS)
        assert not unknown, f"unknown attacks {unknown}"
        self.port, self.counts, self.tls, self.path = port, counts, tls, path
        self.drip, self.seconds, self.reopen = drip, seconds, reopen
        #: the address the connections come from (any of 127.0.0.0/8: another peer)
        self.source = source
        self.closed = {attack: Closed() for attack in counts}
        self._open: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hostile", daemon=True)

    # --- control ------------------------------------------------------------------------
    def start(self, wait: float = 30.0) -> Hostile:
        """Start, and wait until every connection has been opened once."""
        self._thread.start()
        assert self._ready.wait(wait), "the hostile connections could not all be opened"
        return self

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def __enter__(self) -> Hostile:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def open_now(self) -> int:
        with self._lock:
            return len(self._open)

    # --- the attacks --------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        started = [asyncio.Event() for attack, n in self.counts.items() for _ in range(n)]
        tasks, i = [], 0
        for attack, n in self.counts.items():
            for k in range(n):
                tasks.append(asyncio.create_task(self._slot(attack, f"{attack}-{k}", started[i])))
                i += 1
        waiting = asyncio.gather(*(event.wait() for event in started))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiting, 30)
        self._ready.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), self.seconds)
        # each slot ends by itself: a task cancelled inside open_connection leaks the
        # transport it was about to return (an unclosed-transport warning at exit)
        self._stopping = True
        for writer in list(self._writers):
            writer.transport.abort()
        _, pending = await asyncio.wait(tasks, timeout=10)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)

    async def _slot(self, attack: str, name: str, started: asyncio.Event) -> None:
        record = self.closed[attack]
        while not self._stopping:
            began = time.monotonic()
            writer = None
            try:
                reader, writer = await self._connect(attack)
                if self._stopping:
                    return
                self._writers.add(writer)
                record.opened += 1
                with self._lock:
                    self._open.add(name)
                started.set()
                answer = await self._attack(attack, reader, writer)
                if not self._stopping:  # else: closed by stop(), not by the server
                    record.closed_after.append(time.monotonic() - began)
                    record.answers.append(answer[:64])
            except (OSError, ssl.SSLError, EOFError):
                # refused, reset, or a handshake the server gave up on: closed by the server
                if not self._stopping:
                    record.closed_after.append(time.monotonic() - began)
                    record.answers.append(b"")
                started.set()
            finally:
                with self._lock:
                    self._open.discard(name)
                if writer is not None:
                    self._writers.discard(writer)
                    writer.transport.abort()
            if not self.reopen:
                return
            await asyncio.sleep(0.05)  # not a hot loop when the server refuses at once

    async def _connect(self, attack: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        local = (self.source, 0)
        if self.tls is not None and attack not in ("tls_stall", "silent"):
            return await asyncio.open_connection(
                "127.0.0.1", self.port, ssl=self.tls, server_hostname="localhost", local_addr=local
            )
        return await asyncio.open_connection("127.0.0.1", self.port, local_addr=local)

    async def _attack(
        self, attack: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bytes:
        """Do the attack until the server closes the connection; what it answered."""
        if attack == "tls_stall":
            writer.write(CLIENT_HELLO_START)
        elif attack == "partial_headers":
            writer.write(f"POST {self.path} HTTP/1.1\r\nHost: x\r\nX-A: ".encode())
        elif attack == "slow_body":
            writer.write(
                f"POST {self.path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                "Content-Length: 100000\r\n\r\n".encode()
            )
        elif attack == "idle":
            writer.write(f"GET {self.path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        dripping = attack in ("partial_headers", "slow_body")
        answer = b""
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(4096), self.drip if dripping else None)
            except TimeoutError:
                writer.write(b"a" if attack == "partial_headers" else b" ")
                continue
            if attack == "idle" and chunk and not answer:
                answer = chunk  # the answer to its one request; then it idles
                continue
            if not chunk:
                return answer
            answer = answer or chunk


def pipeline_unread(
    port: int,
    request: bytes,
    *,
    seconds: float,
    max_bytes: int,
    while_open: Callable[[], object] | None = None,
) -> tuple[int, bool]:
    """Pipeline ``request`` into one connection for ``seconds`` without reading an answer,
    at most ``max_bytes``: the bytes the server took, and whether it stopped taking them
    (the kernel's buffers filled because the server stopped reading). ``while_open`` is
    called once sending stops, before the connection is closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        result = _pipeline_into(sock, port, request, seconds, max_bytes)
        if while_open is not None:
            while_open()
    return result


def _pipeline_into(
    sock: socket.socket, port: int, request: bytes, seconds: float, max_bytes: int
) -> tuple[int, bool]:
    sent = 0
    stalled_since: float | None = None
    batch = request * max(1, 65536 // len(request))
    # a small receive window, as an attacker would choose: the answers it never reads
    # fill it at once, so the server's own buffers fill within the attack however slow
    # the machine is (with the default window, megabytes of answers, a loaded machine
    # took longer than the attack to fill it and the server was never seen to pause)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and sent < max_bytes:
        try:
            sent += sock.send(batch)
            stalled_since = None
        except BlockingIOError:
            stalled_since = stalled_since or time.monotonic()
            if time.monotonic() - stalled_since > 2.0:
                return sent, True  # nothing taken for 2 s: the server stopped reading
            time.sleep(0.01)
        except OSError:
            return sent, True  # the server closed it
    return sent, False


def metric_value(conn: http.client.HTTPConnection, name: str, labels: str) -> float:
    """One sample of a server's ``/metrics`` (0 while the series has none), over ``conn``,
    which is closed after."""
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    for line in text.splitlines():
        if line.startswith(f"{name}{{{labels}}}"):
            return float(line.split()[1])
    return 0.0


def rss_bytes(pid: int) -> int:
    """The resident memory of a process and its threads, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def tree_rss(pid: int) -> int:
    """RSS of ``pid`` and every process below it (a gunicorn master and its workers)."""
    total = 0
    for child in process_tree(pid):
        with contextlib.suppress(OSError, AssertionError):
            total += rss_bytes(child)
    return total


def process_tree(root: int) -> Iterator[int]:
    """``root`` and every live process below it, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    yield root
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier}
        yield from frontier
