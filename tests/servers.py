"""Real servers for the tests, started the way an operator would and never left behind.

Each binds port 0 and reads back the port it got from its own log (gunicorn logs
``Listening at: http://127.0.0.1:PORT``), so no test races another for a free port. Each
runs in a process group of its own: ``stop`` signals the main process, and then checks
that nothing of the group (gunicorn's workers, the consumer's pipeline) is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

_LISTENING = re.compile(rb"Listening at: https?://[^\s:]+:(\d+)")


def serve_argv(certs: Path, *options: str) -> list[str]:
    """``whoexec serve`` as a user starts it, with ``certs``, on a free loopback port (the
    server logs the port it got), then ``options``."""
    return [
        sys.executable,
        "-m",
        "webhook.cli",
        "serve",
        "--certs",
        str(certs),
        "--bind",
        "127.0.0.1:0",
        *options,
    ]


class ServerProcess:
    def __init__(
        self,
        argv: list[str],
        log: Path,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        listening: bytes = _LISTENING.pattern,
    ) -> None:
        self.log = log
        self._listening = re.compile(listening)
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                pass_fds=pass_fds,
            )
        self.port = self._wait_for_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_bytes().decode(errors="replace")

    def _wait_for_port(self, seconds: float = 60) -> int:
        deadline = time.monotonic() + seconds
        while True:
            found = self._listening.search(self.log.read_bytes())
            if found:
                return int(found.group(1))
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{self.proc.args} did not start listening:\n{self.output()}")
            time.sleep(0.02)  # polls the log for a condition; the wait is the deadline

    def wait_until(self, probe: Callable[[], bool], what: str, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not probe():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"{what} did not become ready:\n{self.output()}")
            time.sleep(0.02)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM to the server's main process, as Kubernetes and systemd stop it; the
        exit status. A server that does not stop in time is killed, and one that leaves
        a process of its group running (a worker, the pipeline) fails the test."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise AssertionError(f"{self.proc.args} ignored SIGTERM for {timeout}s") from None
        deadline = time.monotonic() + 10
        while _group_alive(self.proc.pid):
            if time.monotonic() > deadline:
                self.kill_group()
                raise AssertionError(f"{self.proc.args} exited and left processes running")
            time.sleep(0.02)
        return self.proc.returncode

    def wait_group_gone(self, seconds: float = 30) -> None:
        """Wait, sending nothing, until no process of the group is left."""
        deadline = time.monotonic() + seconds
        while _group_alive(self.proc.pid):
            if time.monotonic() > deadline:
                self.kill_group()
                raise AssertionError(f"{self.proc.args}: processes still running after {seconds}s")
            time.sleep(0.02)

    def kill_group(self) -> None:
        """``kill -9`` of every process of the server at once, as a crash would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def closed_port() -> Iterator[int]:
    """A port where nothing listens for as long as the block runs: bound, never listened
    on, so a connection is refused and no other process can take it meanwhile."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield int(sock.getsockname()[1])


def descendants_and_marked(marker: str, root: int) -> list[tuple[int, str]]:
    """Live processes that descend from ``root`` or carry ``marker`` in their environment
    (a daemon reparented to init still has it): (pid, command line)."""
    parents: dict[int, int] = {}
    found: list[tuple[int, str]] = []
    needle = marker.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == root:
            continue
        pid = int(entry.name)
        try:
            stat = (entry / "stat").read_text()
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state in ("Z", "X"):
                continue
            parents[pid] = int(ppid)
            environ = (entry / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if needle in environ:
            found.append((pid, _cmdline(pid)))
    for pid in parents:
        ancestor, hops = parents.get(pid), 0
        while ancestor and ancestor != root and hops < 64:
            ancestor, hops = parents.get(ancestor), hops + 1
        if ancestor == root and all(pid != p for p, _ in found):
            found.append((pid, _cmdline(pid)))
    return found


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:200]


def kill_all(processes: list[tuple[int, str]]) -> None:
    for pid, _ in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
