"""Walking ``/proc`` for lineage while the processes live (adapter).

On a node (the consumer DaemonSet with ``hostPID: true`` and ``/proc`` mounted read-only)
``/proc/<pid>/status`` gives the parent and ``/proc/<pid>/environ`` the *full*
environment, without Falco's 4 KiB cut. A pid is only trusted if its start time matches
the alert's ``proc.pid.ts``: otherwise the process is gone and the pid was reused.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from webhook.attribution.falco import ProcessFacts
from webhook.attribution.lineage import ProcessRecord, ProcessTable

#: /proc start times have jiffy resolution and the boot time whole seconds
START_TOLERANCE_NS = 1_500_000_000
MAX_DEPTH = 64


@dataclass(frozen=True, slots=True)
class ProcInfo:
    pid: int
    ppid: int
    start_ns: int
    token: str | None


class ProcFS:
    """Reads process facts from a procfs mount (``/proc`` or a host's, mounted elsewhere)."""

    def __init__(
        self, root: Path = Path("/proc"), variable: str = "WHOEXEC_IDENTITY", node: str = ""
    ) -> None:
        self.root = root
        #: the node this procfs shows: an alert Falco raised on another node (its
        #: ``hostname``) says nothing about the processes here, whatever their pids
        self.node = node
        self.marker = variable.encode() + b"="
        self._clock_ticks = os.sysconf("SC_CLK_TCK")
        stat = (root / "stat").read_text()
        match = re.search(r"^btime (\d+)$", stat, re.M)
        if not match:
            raise OSError(f"{root / 'stat'} has no btime line")
        self._boot_ns = int(match.group(1)) * 1_000_000_000

    def read(self, pid: int) -> ProcInfo | None:
        """One process's parent, start time and identity token; None if it is gone."""
        base = self.root / str(pid)
        try:
            stat = (base / "stat").read_bytes()
            environ = (base / "environ").read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            return None
        # the command name (field 2) is in parentheses and may contain spaces or ')'
        rest = stat[stat.rindex(b")") + 2 :].split()
        ppid = int(rest[1])
        start_ticks = int(rest[19])
        start_ns = self._boot_ns + start_ticks * 1_000_000_000 // self._clock_ticks
        token = None
        for entry in environ.split(b"\0"):
            if entry.startswith(self.marker):
                token = entry[len(self.marker) :].decode("utf-8", "replace")
        return ProcInfo(pid, ppid, start_ns, token)

    def _nearest_living(self, facts: ProcessFacts, table: ProcessTable) -> ProcInfo | None:
        """The alert's process if it still runs, else its nearest ancestor that does.

        A short-lived command (``cat /etc/shadow``) has often exited by the time its alert
        is read, while the shell above it, which holds the session's token, still runs:
        the alert's own ``proc.apid[N]`` name those ancestors. A pid is believed only for
        the process the alert meant: the alert's process by its start time, an ancestor
        by having started before it (and at the start time the table knows, if any)."""
        assert facts.pid is not None
        info = self.read(facts.pid)
        if info is not None:
            if (
                facts.start_ts is not None
                and abs(info.start_ns - facts.start_ts) > START_TOLERANCE_NS
            ):
                return None  # a different process holds this pid now
            return info
        # no later than the alerting process (or, for a thread's alert, than the event)
        latest = (facts.start_ts or facts.time_ns) + START_TOLERANCE_NS
        for pid, _ in facts.ancestors:
            if pid <= 1:
                break
            info = self.read(pid)
            if info is None:
                continue  # gone too: try the next one up
            known = table.get((facts.host, pid))
            table_start = known.start_ts if known is not None else None
            if info.start_ns > latest or (
                table_start is not None and abs(info.start_ns - table_start) > START_TOLERANCE_NS
            ):
                continue  # the pid was reused by a younger process
            return info
        return None

    def learn(self, facts: ProcessFacts, table: ProcessTable) -> int:
        """Walk up through ``/proc`` from the alert's process, or from its nearest living
        ancestor when it has exited; returns processes learnt."""
        if facts.pid is None or (self.node and facts.host != self.node):
            return 0
        info = self._nearest_living(facts, table)
        if info is None:
            return 0
        learnt = 0
        seen: set[int] = set()
        below: ProcessRecord | None = None
        while info is not None and info.pid > 1 and info.pid not in seen and learnt < MAX_DEPTH:
            seen.add(info.pid)
            key = (facts.host, info.pid)
            record = table.get(key)
            if record is None:
                record = ProcessRecord(info.ppid, info.start_ns, None, info.token)
            else:
                record.ppid = info.ppid
                record.token = record.token or info.token
                # a root's freshness is judged on its start time (lineage.freshness_problem)
                record.start_ts = record.start_ts or info.start_ns
            if below is not None and below.token is not None and info.token is None:
                # /proc shows the whole environment: the token entered the lineage below
                below.entry = True
            table.put(key, record)
            learnt += 1
            below = record
            info = self.read(info.ppid) if info.ppid > 1 else None
        return learnt
