"""The consumer's inbox: a durable, bounded log of accepted alert lines on disk (adapter).

Falco's ``http_output`` posts each alert alone and waits for the answer, so the time the
intake takes to make an alert durable is Falco's output rate (#12). An append to a file
with one ``write(2)`` survives a crash of any whoexec process (the bytes are in the
kernel's page cache once the call returns); an SQLite commit cost 30 µs more per alert.
Like SQLite's WAL with ``synchronous=NORMAL`` before it, the log is not fsynced: a power
loss of the node may lose the last alerts, as it loses Falco's own queue.

Layout of the directory: ``<segment>.log`` files, numbered from 1, and ``cursor``. One
writer (the intake process, holding ``writer.lock``) appends whole lines to the newest
segment and starts a new one past ``segment_bytes`` and at every start, so it never
appends after a line a crash may have cut. One reader (the pipeline process) reads the
segments in order; an item is named by its position, ``segment << 40 | offset``. The
reader acknowledges items in any order; ``cursor`` keeps the first position not yet
acknowledged, and a segment is deleted once the cursor has passed it. After a crash the
reader starts again at the cursor: what it had handed out and not yet seen acknowledged
comes again (at-least-once, as before).
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import IO

from webhook.errors import ConfigError, SpoolFull

SEGMENT_SHIFT = 40  # a segment stays far below 1 TiB: its offset fits under the shift


def _segments(directory: Path) -> list[int]:
    numbers = []
    for entry in os.scandir(directory):
        stem, dot, ext = entry.name.partition(".")
        if dot and ext == "log" and stem.isdigit():
            numbers.append(int(stem))
    return sorted(numbers)


def _segment_path(directory: Path, number: int) -> Path:
    return directory / f"{number:012d}.log"


class InboxWriter:
    """Appends bodies of lines, all or nothing; refuses with :class:`SpoolFull` past
    ``max_bytes`` on disk instead of dropping anything acknowledged."""

    def __init__(
        self, directory: Path, max_bytes: int = 1 << 30, segment_bytes: int = 64 << 20
    ) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            self._lock = os.open(directory / "writer.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise ConfigError(f"cannot open the inbox {directory}: {exc}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock)
            raise ConfigError(
                f"the inbox {directory} has another writer: is a second consumer running "
                "with the same --state-dir?"
            ) from None
        self._number = (_segments(directory) or [0])[-1]
        self._open_next()

    def _open_next(self) -> None:
        """Start the next segment: the only one this writer appends to."""
        self._number += 1
        path = _segment_path(self.directory, self._number)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        self._size = 0
        self._count_others()  # bytes in the segments before this one, last counted

    def _count_others(self) -> None:
        total = 0
        for number in _segments(self.directory):
            if number != self._number:
                with contextlib.suppress(FileNotFoundError):  # the reader deleted it
                    total += _segment_path(self.directory, number).stat().st_size
        self._others = total

    def put_many(self, bodies: list[bytes]) -> None:
        """Append every body as one line, in one write: durable when this returns.
        A body holds no newline (the intake splits bodies into lines first)."""
        if not bodies:
            return
        data = b"\n".join(bodies) + b"\n"
        if self._others + self._size + len(data) > self.max_bytes:
            self._count_others()  # the reader may have deleted segments since
            held = self._others + self._size
            if held + len(data) > self.max_bytes:
                raise SpoolFull(
                    f"the inbox holds {held} of {self.max_bytes} bytes: {len(data)} more do not fit"
                )
        if self._size >= self.segment_bytes:
            os.close(self._fd)
            self._open_next()
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError:
            # a full disk: take back the part that was written, so no half body stays
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += written

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        with contextlib.suppress(OSError):
            os.close(self._lock)


class InboxLogReader:
    """Reads the log from the cursor, hands out ``(position, line)`` items, and moves the
    cursor past items once they, and every item before them, are acknowledged."""

    def __init__(self, directory: Path, save_every: float = 0.2) -> None:
        self.directory = directory
        self.save_every = save_every
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise ConfigError(f"cannot open the inbox {directory}: {exc}") from None
        self._cursor_path = directory / "cursor"
        start = self._load_cursor()
        self._number, self._offset = start >> SEGMENT_SHIFT, start & ((1 << SEGMENT_SHIFT) - 1)
        self._partial = b""
        #: lines read from the file and not handed out yet
        self._ready: collections.deque[tuple[int, bytes]] = collections.deque()
        #: handed out and not acknowledged, in position order; acknowledged ones wait in
        #: _acked until everything before them is acknowledged too
        self._outstanding: collections.deque[int] = collections.deque()
        self._acked: set[int] = set()
        self._committed = start
        self._saved = (start, time.monotonic())

    def _load_cursor(self) -> int:
        try:
            text = self._cursor_path.read_text()
        except FileNotFoundError:
            text = ""
        if not text.strip():
            return 1 << SEGMENT_SHIFT  # the first segment, or the oldest one left (_open)
        try:
            number, offset = (int(part) for part in text.split())
        except ValueError:
            raise ConfigError(
                f"the inbox cursor {self._cursor_path} is damaged ({text[:40]!r}): remove it "
                "to read the inbox again from its oldest segment"
            ) from None
        return (number << SEGMENT_SHIFT) | offset

    @property
    def position(self) -> int:
        """Where the next item to hand out starts."""
        return self._ready[0][0] if self._ready else self._read_to

    @property
    def _read_to(self) -> int:
        """Where the next line read from the file starts."""
        return (self._number << SEGMENT_SHIFT) | (self._offset - len(self._partial))

    def read(self, limit: int) -> list[tuple[int, bytes]]:
        """Up to ``limit`` whole lines that arrived since the last read, each with its
        position. A line a crashed writer left without its newline is handed out as it
        is once a newer segment exists (the pipeline dead-letters it)."""
        self._fill(limit)
        items = [self._ready.popleft() for _ in range(min(limit, len(self._ready)))]
        self._outstanding.extend(position for position, _ in items)
        return items

    def _fill(self, wanted: int) -> None:
        """Read from the segments until ``wanted`` lines are ready or nothing is left."""
        handle = None
        try:
            while len(self._ready) < wanted:
                if handle is None:
                    handle = self._open()
                    if handle is None:
                        return
                data = handle.read(1 << 20)
                if data:
                    self._read_lines(data)
                    continue
                # at the end of this segment: it is finished once the writer started a
                # newer one. Read once more after seeing that: its last write came first.
                if not any(n > self._number for n in _segments(self.directory)):
                    return
                rest = handle.read()
                if rest:
                    self._read_lines(rest)
                    continue
                if self._partial:
                    self._ready.append((self._read_to, self._partial))
                    self._partial = b""
                handle.close()
                handle = None
                self._number, self._offset = self._number + 1, 0
        finally:
            if handle is not None:
                handle.close()

    def _read_lines(self, data: bytes) -> None:
        start = self._read_to
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            if line.strip():  # the writer writes no blank line; skip one all the same
                self._ready.append((start, line))
            start += len(line) + 1

    def _open(self) -> IO[bytes] | None:
        """The segment being read, at the read offset; None while there is none yet."""
        while True:
            try:
                handle = _segment_path(self.directory, self._number).open("rb")
            except FileNotFoundError:
                later = [n for n in _segments(self.directory) if n > self._number]
                if not later:
                    return None
                # deleted, or never written (a writer that started and died): skip it
                self._number, self._offset, self._partial = later[0], 0, b""
                continue
            handle.seek(self._offset)
            return handle

    def ack(self, positions: list[int]) -> None:
        """Mark items handled; the cursor moves past every leading handled one."""
        self._acked.update(positions)
        moved = False
        while self._outstanding and self._outstanding[0] in self._acked:
            self._acked.discard(self._outstanding.popleft())
            moved = True
        if moved:
            self._committed = self._outstanding[0] if self._outstanding else self.position
            self._save()

    def _save(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._saved[1] < self.save_every:
            return
        committed = self._committed
        if committed == self._saved[0]:
            return
        number, offset = committed >> SEGMENT_SHIFT, committed & ((1 << SEGMENT_SHIFT) - 1)
        tmp = self._cursor_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, f"{number} {offset}\n".encode())
        finally:
            os.close(fd)
        os.replace(tmp, self._cursor_path)
        self._saved = (committed, now)
        for old in _segments(self.directory):
            if old < number:
                with contextlib.suppress(FileNotFoundError):
                    _segment_path(self.directory, old).unlink()

    def backlog_bytes(self) -> int:
        """Bytes on disk from the cursor on: what is accepted and not yet handled."""
        committed = self._committed
        number, offset = committed >> SEGMENT_SHIFT, committed & ((1 << SEGMENT_SHIFT) - 1)
        total = 0
        for segment in _segments(self.directory):
            if segment >= number:
                with contextlib.suppress(FileNotFoundError):
                    size = _segment_path(self.directory, segment).stat().st_size
                    total += size - offset if segment == number else size
        return max(total, 0)

    def close(self) -> None:
        self._save(force=True)
