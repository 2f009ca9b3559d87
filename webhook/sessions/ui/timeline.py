"""One exec session as a picture: rows on a horizontal time axis (pure: no IO, no clock).

Top: the audit event(s), who asked for the exec. Then the process tree under the
session root, one row per process, indented by depth, each alert a mark on its
process's row at its time. Then the findings. The template draws it as SVG, so the
picture needs no script and no CDN.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from webhook.sessions.report import PRIORITIES
from webhook.text import capped, visible
from webhook.times import format_utc

WIDTH = 1100
LABEL_WIDTH = 380
ROW_HEIGHT = 26
TOP = 34  # room for the axis labels
INDENT = 14
#: the deepest indentation drawn: (LABEL_WIDTH - a label) / INDENT
MAX_INDENT = 12
LABEL_CHARS = 48


@dataclass(frozen=True, slots=True)
class Mark:
    x: float
    time_utc: str
    title: str
    #: a CSS class: ``p-warning``, ``p-critical``... or ``audit``/``root``
    css: str
    #: the id of the table row this mark stands for
    anchor: str


@dataclass(frozen=True, slots=True)
class Row:
    y: float
    label_x: float
    label: str
    #: the whole text, for the tooltip
    title: str
    kind: str  # "audit", "root", "process", "unseen", "findings"
    x_start: float
    x_end: float
    marks: tuple[Mark, ...]


@dataclass(frozen=True, slots=True)
class Tick:
    x: float
    label: str


@dataclass(frozen=True, slots=True)
class Timeline:
    width: int
    height: int
    plot_left: int
    plot_right: int
    start_utc: str
    ticks: tuple[Tick, ...]
    rows: tuple[Row, ...]


def priority_class(priority: str) -> str:
    return f"p-{priority.lower()}" if priority in PRIORITIES else "p-other"


def _short(text: str, limit: int = LABEL_CHARS) -> str:
    text = visible(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _offset(ns: int) -> str:
    """``+250ms``, ``+12s``, ``+3m05s``, ``+2h10m``: a tick's distance from the start."""
    if ns < 1_000_000_000:
        return f"+{ns // 1_000_000}ms"
    seconds = ns // 1_000_000_000
    if seconds < 60:
        return f"+{seconds}s"
    if seconds < 3600:
        return f"+{seconds // 60}m{seconds % 60:02d}s"
    return f"+{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _tree(
    processes: list[dict[str, Any]], root_pid: int | None
) -> list[tuple[int, dict[str, Any]]]:
    """(depth, process) in tree order: the root first, children by start time.

    A process's parent is the newest process with its ``ppid`` that had started by then
    (pids are reused). A process whose parent was never seen in this session hangs under
    the root at depth 1: Falco only reports processes that raised an alert.
    """
    ordered = sorted(
        range(len(processes)), key=lambda i: (processes[i]["start_ns"], processes[i]["pid"])
    )
    by_pid: dict[int, list[int]] = defaultdict(list)
    for i in ordered:
        by_pid[processes[i]["pid"]].append(i)
    children: dict[int, list[int]] = defaultdict(list)
    tops: list[int] = []
    for i in ordered:
        proc = processes[i]
        parents = [
            j
            for j in by_pid.get(proc.get("ppid") or -1, [])
            if j != i and processes[j]["start_ns"] <= proc["start_ns"]
        ]
        if proc["pid"] == root_pid or not parents:
            tops.append(i)
        else:
            children[parents[-1]].append(i)
    tops.sort(key=lambda i: processes[i]["pid"] != root_pid)  # the root first
    order: list[tuple[int, dict[str, Any]]] = []
    seen: set[int] = set()

    def walk(top: int, depth: int) -> None:
        """Depth first, children in order, with a stack: a chain of 1,000 processes (a
        session can make one on purpose) is as deep as Python may recurse."""
        stack = [(top, depth)]
        while stack:
            i, level = stack.pop()
            if i in seen:
                continue
            seen.add(i)
            order.append((level, processes[i]))
            stack.extend((child, level + 1) for child in reversed(children[i]))

    for i in tops:
        walk(i, 0 if processes[i]["pid"] == root_pid else 1)
    for i in ordered:  # a parent loop (only possible with bad data) keeps nothing out
        walk(i, 1)
    return order


def build_timeline(session: dict[str, Any]) -> Timeline:
    """The layout of one session from ``store.session()``'s dict."""
    audits = session.get("audit_events") or []
    processes = session.get("processes") or []
    alerts = session.get("alerts") or []
    findings = session.get("findings") or []
    stamps: list[int] = [
        *(a["time_ns"] for a in audits),
        *(p["start_ns"] for p in processes),
        *(a["time_ns"] for a in alerts),
        *(f["time_ns"] for f in findings),
    ] or [session.get("started_ns") or 0]
    t0, t1 = int(min(stamps)), int(max(stamps))
    span = max(t1 - t0, 1_000_000_000)
    left, right = LABEL_WIDTH, WIDTH - 20

    def x(ns: int) -> float:
        return round(left + (int(ns) - t0) / span * (right - left), 1)

    rows: list[Row] = []

    def add(
        label: str, title: str, kind: str, depth: int, start: float, end: float, marks: list[Mark]
    ) -> None:
        shown = min(depth, MAX_INDENT)  # deeper rows stay in the label column
        rows.append(
            Row(
                y=TOP + len(rows) * ROW_HEIGHT + ROW_HEIGHT / 2,
                label_x=8 + shown * INDENT,
                label=_short(label, LABEL_CHARS - shown * 2),
                title=capped(visible(title), 2000),
                kind=kind,
                x_start=start,
                x_end=end,
                marks=tuple(marks),
            )
        )

    for n, audit in enumerate(audits):
        who = audit.get("user_name") or "?"
        if audit.get("impersonated_user"):
            who += f" as {audit['impersonated_user']}"
        command = " ".join(map(str, audit.get("command") or []))
        text = f"{audit.get('verb', '')} {audit.get('subresource', '')} by {who}: {command}"
        at = x(audit["time_ns"])
        mark = Mark(at, format_utc(audit["time_ns"]), text, "audit", f"audit-{n}")
        add(text, text, "audit", 0, at, at, [mark])

    # each alert on the newest process with its pid that had started by then
    by_pid: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for proc in processes:
        by_pid[proc["pid"]].append(proc)
    seen_pids = set(by_pid)
    on_process: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    unseen: list[tuple[int, dict[str, Any]]] = []
    for n, alert in enumerate(alerts):
        candidates = [
            p for p in by_pid.get(alert.get("pid") or -1, []) if p["start_ns"] <= alert["time_ns"]
        ]
        if candidates:
            owner = max(candidates, key=lambda p: p["start_ns"])
            on_process[id(owner)].append((n, alert))
        else:
            unseen.append((n, alert))

    def marks(items: Iterable[tuple[int, dict[str, Any]]], what: str, anchor: str) -> list[Mark]:
        """Alerts (``rule``) or findings (``kind``) as marks, each linked to its table row."""
        return [
            Mark(
                x(item["time_ns"]),
                format_utc(item["time_ns"]),
                f"{item['priority']}: {item[what]}",
                priority_class(item["priority"]),
                f"{anchor}-{n}",
            )
            for n, item in items
        ]

    def alert_marks(items: list[tuple[int, dict[str, Any]]]) -> list[Mark]:
        return marks(items, "rule", "alert")

    def add_band(label: str, title: str, kind: str, band: list[Mark]) -> None:
        """A row of its own for marks that belong to no process."""
        add(label, title, kind, 0, min(m.x for m in band), max(m.x for m in band), band)

    root_pid = session.get("root_pid")
    tree = _tree(processes, root_pid)
    # a process lives at least as long as what it started: its line reaches the last
    # event of its subtree (one pass from the end, the rows being in tree order)
    ends: list[float] = [0.0] * len(tree)
    pending: list[tuple[int, float]] = []
    for n in range(len(tree) - 1, -1, -1):
        depth, proc = tree[n]
        own = [x(proc["start_ns"]), *(x(a["time_ns"]) for _, a in on_process.get(id(proc), []))]
        end = max(own)
        while pending and pending[-1][0] > depth:
            end = max(end, pending.pop()[1])
        ends[n] = end
        pending.append((depth, end))
    for (depth, proc), end in zip(tree, ends, strict=True):
        on_row = alert_marks(on_process.get(id(proc), []))
        start = x(proc["start_ns"])
        args = proc.get("args") or ""
        is_root = proc["pid"] == root_pid
        orphan = not is_root and depth == 1 and proc.get("ppid") not in seen_pids
        title = f"pid {proc['pid']} (parent {proc.get('ppid')}"
        title += ", not seen" if orphan else ""
        title += f"), started {format_utc(proc['start_ns'])}: {args}"
        label = f"{proc['pid']}  {args}" if args else str(proc["pid"])
        add(label, title, "root" if is_root else "process", depth, start, end, on_row)
    if unseen:
        add_band(
            "alerts on processes not recorded",
            "alerts whose process is not in the session's tree",
            "unseen",
            alert_marks(unseen),
        )
    if findings:
        add_band(
            "findings",
            "findings of this session",
            "findings",
            marks(enumerate(findings), "kind", "finding"),
        )

    ticks = tuple(
        Tick(round(left + i / 4 * (right - left), 1), _offset(round(i / 4 * span)) if i else "0")
        for i in range(5)
    )
    return Timeline(
        width=WIDTH,
        height=TOP + len(rows) * ROW_HEIGHT + 10,
        plot_left=left,
        plot_right=right,
        start_utc=format_utc(t0),
        ticks=ticks,
        rows=tuple(rows),
    )
