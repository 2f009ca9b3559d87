"""Following a file like ``tail -F`` (adapter): Falco's JSON file for the consumer,
kube-apiserver's audit log for ``whoexec audit ingest --follow``."""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Protocol

from webhook.stopflag import StopFlag

log = logging.getLogger("whoexec.consumer")


class LineConsumer(Protocol):
    """What a followed file feeds: the alert pipeline, or the audit ingestor."""

    def feed(self, lines: Iterable[bytes | str], where: str = "") -> int: ...

    def tick(self) -> None: ...


@dataclass
class FollowState:
    """Where a followed file was read up to, saved so a restart resumes there."""

    device: int
    inode: int
    offset: int


class FileFollower:
    """``tail -F``: follows a path across rotation (rename + new file) and truncation.

    The offset is saved (atomically, in ``state_path``) only after the pipeline's sinks
    accepted the lines, so a restart resumes after the last handled line: at-least-once.
    A file rotated while the consumer was down is not found again; its unread tail is lost
    (documented), the new file is read from the start.
    """

    def __init__(self, path: Path, state_path: Path, poll: float = 0.2) -> None:
        self.path = path
        self.state_path = state_path
        self.poll = poll
        self._stop = StopFlag()  # set by a signal handler too: see follow_until_signalled
        # what the follower has seen, for its operator's log and for tests to wait on
        self.absent_polls = 0  # polls while the file did not exist
        self.caught_up = 0  # polls with nothing new to read
        self.rotations = 0
        self.truncations = 0

    def stop(self) -> None:
        self._stop.set()

    def _load_state(self) -> FollowState | None:
        try:
            data = json.loads(self.state_path.read_text())
            return FollowState(int(data["device"]), int(data["inode"]), int(data["offset"]))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _save_state(self, state: FollowState) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state.__dict__))
        os.replace(tmp, self.state_path)

    def _open(self, saved: FollowState | None) -> tuple[IO[bytes], FollowState] | None:
        try:
            handle = self.path.open("rb")
        except FileNotFoundError:
            return None
        st = os.fstat(handle.fileno())
        offset = 0
        if saved and (saved.device, saved.inode) == (st.st_dev, st.st_ino):
            offset = saved.offset if saved.offset <= st.st_size else 0
        handle.seek(offset)
        return handle, FollowState(st.st_dev, st.st_ino, offset)

    def run(self, pipeline: LineConsumer) -> None:
        saved = self._load_state()
        opened = None
        partial = b""
        rotated = False
        while not self._stop.is_set():
            if opened is None:
                opened = self._open(saved)
                partial, rotated = b"", False
                if opened is None:
                    self.absent_polls += 1
                    pipeline.tick()
                    self._stop.wait(self.poll)
                    continue
            handle, state = opened
            data = handle.read(1 << 20)
            if data:
                data = partial + data
                cut = data.rfind(b"\n") + 1
                lines, partial = data[:cut].splitlines(), data[cut:]
                if lines:
                    pipeline.feed(lines, where=str(self.path))
                state.offset = handle.tell() - len(partial)
                self._save_state(state)
                saved = state
                continue
            pipeline.tick()
            if rotated:
                # the old file was read to its end after the rotation was seen: move on
                handle.close()
                opened, saved = None, None
                continue
            try:
                st: os.stat_result | None = os.stat(self.path)
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_dev, st.st_ino) != (state.device, state.inode):
                rotated = True  # read what was appended to the old file meanwhile, then switch
                self.rotations += 1
                continue
            if st is not None and st.st_size < state.offset:
                handle.seek(0)
                state.offset, partial = 0, b""
                self.truncations += 1
                log.info("%s was truncated; reading it from the start", self.path)
                continue
            self.caught_up += 1
            self._stop.wait(self.poll)
        if opened is not None:
            opened[0].close()


def follow_until_signalled(follower: FileFollower, pipeline: LineConsumer) -> None:
    """``follower.run(pipeline)`` until SIGINT or SIGTERM, which stop it at its next poll.

    Not Python's default KeyboardInterrupt, raised wherever the main thread is: inside a
    ``with lock:`` of the pipeline or its store it can leave the lock held, and the close
    after it then waits for ever (a Ctrl-C that never returned, seen in CI)."""
    previous = {
        signum: signal.signal(signum, lambda *_: follower.stop())
        for signum in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        follower.run(pipeline)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
