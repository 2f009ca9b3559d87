"""The columns of the store's reports, shared by the CLI and the UI (pure: no IO).

Every cell is text from the people being audited, so it goes through :func:`visible`:
control characters are escaped, and a CSV cell can forge neither a row nor a column nor
a spreadsheet formula.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from webhook.text import visible
from webhook.times import format_utc

#: Falco's priorities, most severe first
PRIORITIES = (
    "Emergency",
    "Alert",
    "Critical",
    "Error",
    "Warning",
    "Notice",
    "Informational",
    "Debug",
)

Columns = list[tuple[str, str]]

SESSION_COLUMNS: Columns = [
    ("started (UTC)", "started_ns"),
    ("user", "user_name"),
    ("namespace", "namespace"),
    ("pod", "pod"),
    ("container", "container"),
    ("command", "command"),
    ("commands run", "commands"),
    ("alerts", "alerts"),
    ("attribution", "attribution"),
    ("claimed by a replayed token", "claimed_user"),
    ("session", "session_id"),
]
USER_COLUMNS: Columns = [
    ("user", "user_name"),
    ("sessions", "sessions"),
    ("pods", "pods"),
    ("alerts", "alerts"),
    ("last session (UTC)", "last_ns"),
]
FINDING_COLUMNS: Columns = [
    ("time (UTC)", "time_ns"),
    ("finding", "kind"),
    ("priority", "priority"),
    ("user", "user_name"),
    ("namespace", "namespace"),
    ("pod", "pod"),
    ("session", "session_id"),
    ("audit event", "audit_id"),
    ("detail", "detail"),
]


def priority_rank(name: str) -> int:
    return PRIORITIES.index(name) if name in PRIORITIES else len(PRIORITIES)


def priorities_text(counts: dict[str, int]) -> str:
    """``Critical:1 Warning:3``, most severe first; ``-`` when there are none."""
    ranked = sorted(counts.items(), key=lambda kv: priority_rank(kv[0]))
    return " ".join(f"{name}:{n}" for name, n in ranked) or "-"


def cell(row: dict[str, Any], key: str) -> str:
    item = row.get(key)
    if key.endswith("_ns"):
        return format_utc(item)
    if key == "alerts":
        return priorities_text(item or {})
    if isinstance(item, list):
        return visible(" ".join(map(str, item)))
    return "" if item is None else visible(str(item))


def cells(rows: list[dict[str, Any]], columns: Columns) -> list[list[str]]:
    keys = [key for _, key in columns]
    return [[cell(row, key) for key in keys] for row in rows]


#: a cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
#: (OWASP's "CSV injection"); tab and CR, which also start one, are escaped by cell()
_FORMULA_STARTS = ("=", "+", "-", "@")


def spreadsheet_text(text: str) -> str:
    """A CSV cell that a spreadsheet shows as the text it is, never runs as a formula: one
    that would start a formula gets an apostrophe in front (shown by none of them). A
    lone ``-``, the mark for nothing, is no formula and stays as it is."""
    return "'" + text if text.startswith(_FORMULA_STARTS) and text != "-" else text


def csv_text(rows: list[dict[str, Any]], columns: Columns) -> str:
    # the csv module quotes commas, quotes and newlines; control characters were already
    # escaped by cell(), so no cell can forge a row or reach a terminal
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
    writer.writerow([title for title, _ in columns])
    writer.writerows([[spreadsheet_text(c) for c in row] for row in cells(rows, columns)])
    return out.getvalue()


def with_utc(rows: list[dict[str, Any]], *keys: str) -> list[dict[str, Any]]:
    """JSON carries ISO times beside the raw nanoseconds."""
    for row in rows:
        for key in keys:
            if key in row:
                row[key.removesuffix("_ns") + "_utc"] = format_utc(row[key])
    return rows
