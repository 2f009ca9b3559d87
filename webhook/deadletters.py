"""Dead letters (adapter): input that could not be processed, kept in a file with the
reason. The consumer's pipeline and the audit ingestor keep theirs with it."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import orjson
from prometheus_client import Counter

log = logging.getLogger("whoexec.consumer")


DEAD_LETTERS = Counter(
    "whoexec_consumer_dead_letters",
    "Input that could not be processed, kept in the dead-letter file, by reason.",
    ["reason"],
)


class DeadLetters:
    """Input that could not be processed, kept with the reason: one JSON line each.

    Nothing read is lost without a trace: a line that is not JSON, an item that is not a
    Falco alert, or an alert that made the pipeline fail is written here (``line`` as
    received), and the pipeline goes on. Bounded: past ``max_bytes`` the file is rotated
    once to ``<name>.1``.
    """

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.written = 0

    def add(self, reason: str, where: str, line: bytes | str, detail: str) -> None:
        text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
        record = {
            "time": time.time(),
            "reason": reason,
            "where": where,
            "detail": detail[:2000],
            "line": text,
        }
        data = orjson.dumps(record) + b"\n"
        try:
            # made with the first letter: a run that skips nothing leaves no directory
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if self.path.exists() and self.path.stat().st_size + len(data) > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with self.path.open("ab") as out:
                out.write(data)
        except OSError as exc:  # the count and the log line still record it
            log.error("cannot write the dead-letter file %s: %s", self.path, exc.strerror)
        self.written += 1
        DEAD_LETTERS.labels(reason).inc()
