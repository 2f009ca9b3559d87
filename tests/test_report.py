"""The report columns the CLI and the UI share: CSV that no cell can break."""

from __future__ import annotations

import csv
import io

import pytest

from webhook.report import SESSION_COLUMNS, cell, csv_text, priorities_text


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
    assert got["command"] == cell(rows[0], "command")
    assert "\n" not in got["command"] and "\x1b" not in got["command"]
    assert got["alerts"] == "Warning:2"


def test_priorities_read_most_severe_first():
    assert priorities_text({"Notice": 1, "Critical": 2, "Warning": 3, "Custom": 1}) == (
        "Critical:2 Warning:3 Notice:1 Custom:1"
    )
    assert priorities_text({}) == "-"
