"""The session timeline's layout (pure): what is drawn on which row, and where in time."""

from __future__ import annotations

import itertools

import pytest

from webhook.sessions.ui.timeline import (
    INDENT,
    LABEL_CHARS,
    TOP,
    Mark,
    build_timeline,
    priority_class,
)
from webhook.times import format_utc

S = 1_000_000_000
T0 = 1795341600 * S


def proc(pid: int, ppid: int, start: int, args: str) -> dict:
    return {
        "host": "n",
        "pid": pid,
        "ppid": ppid,
        "start_ns": start,
        "args": args,
        "first_seen_ns": start,
    }


def alert(t: int, pid: int | None, rule: str = "Read sensitive file", priority: str = "Warning"):
    return {
        "time_ns": t,
        "pid": pid,
        "rule": rule,
        "priority": priority,
        "source": "syscall",
        "attribution": "verified",
        "output": "x",
    }


def session(**parts) -> dict:
    base = {
        "session_id": "s",
        "root_pid": 10,
        "started_ns": T0,
        "audit_events": [],
        "processes": [],
        "alerts": [],
        "findings": [],
    }
    return base | parts


AUDIT = {
    "time_ns": T0,
    "verb": "create",
    "subresource": "exec",
    "user_name": "alice",
    "impersonated_user": None,
    "command": ["/bin/sh"],
}


def test_the_audit_event_comes_first_then_the_tree_under_the_root_in_start_order():
    layout = build_timeline(
        session(
            audit_events=[AUDIT],
            processes=[
                proc(30, 20, T0 + 3 * S, "cat /etc/shadow"),
                proc(10, 1, T0 + S, "env WHOEXEC_IDENTITY=v1.x /bin/sh"),
                proc(21, 10, T0 + 4 * S, "ls"),
                proc(20, 10, T0 + 2 * S, "sh -c cat"),
            ],
        )
    )
    assert [(r.kind, r.label.split()[0]) for r in layout.rows] == [
        ("audit", "create"),
        ("root", "10"),
        ("process", "20"),
        ("process", "30"),
        ("process", "21"),
    ]
    indents = [r.label_x for r in layout.rows[1:]]
    assert indents[0] < indents[1] < indents[2] and indents[3] == indents[1]


def test_each_alert_is_a_mark_on_its_process_row_at_its_time():
    layout = build_timeline(
        session(
            processes=[proc(10, 1, T0, "sh"), proc(20, 10, T0 + S, "cat")],
            alerts=[alert(T0 + 2 * S, 20, priority="Critical"), alert(T0 + 4 * S, 10)],
        )
    )
    root, child = layout.rows
    assert [m.anchor for m in root.marks] == ["alert-1"]
    assert [(m.anchor, m.css) for m in child.marks] == [("alert-0", "p-critical")]
    # the start is the left edge of the plot, the last event its right edge
    assert root.x_start == layout.plot_left
    assert root.marks[0].x == layout.plot_right
    assert layout.plot_left < child.marks[0].x < layout.plot_right


def test_a_reused_pid_carries_each_alert_to_the_process_that_had_started_by_then():
    layout = build_timeline(
        session(
            processes=[
                proc(10, 1, T0, "sh"),
                proc(20, 10, T0 + S, "first"),
                proc(20, 10, T0 + 5 * S, "second"),
            ],
            alerts=[alert(T0 + 2 * S, 20), alert(T0 + 6 * S, 20)],
        )
    )
    by_label = {r.label.split()[1]: [m.anchor for m in r.marks] for r in layout.rows[1:]}
    assert by_label == {"first": ["alert-0"], "second": ["alert-1"]}


def test_alerts_of_processes_not_recorded_and_findings_get_rows_of_their_own():
    finding = {
        "time_ns": T0 + S,
        "kind": "Identity token replayed",
        "priority": "Critical",
        "detail": "d",
    }
    layout = build_timeline(
        session(
            processes=[proc(10, 1, T0, "sh")],
            alerts=[alert(T0 + S, 999), alert(T0, None)],
            findings=[finding],
        )
    )
    assert [r.kind for r in layout.rows] == ["root", "unseen", "findings"]
    assert [m.anchor for m in layout.rows[1].marks] == ["alert-0", "alert-1"]
    assert layout.rows[2].marks[0].css == "p-critical"


def test_a_parent_loop_from_pid_reuse_is_drawn_once_and_ends():
    layout = build_timeline(
        session(root_pid=None, processes=[proc(20, 30, T0, "a"), proc(30, 20, T0 + S, "b")])
    )
    assert sorted(r.label for r in layout.rows) == ["20  a", "30  b"]


def test_labels_escape_control_characters_and_are_cut_with_the_whole_text_in_the_title():
    args = "sh -c 'echo \x1b[31mred\n" + "x" * 200 + "'"
    (row,) = build_timeline(session(processes=[proc(10, 1, T0, args)])).rows
    assert "\x1b" not in row.label and "\n" not in row.label
    assert len(row.label) <= LABEL_CHARS and row.label.endswith("…")
    assert "\\x1b[31mred\\n" in row.title and row.title.endswith("'")


def test_an_empty_session_still_has_an_axis_from_when_it_started():
    layout = build_timeline(session())
    assert layout.rows == () and len(layout.ticks) == 5 and layout.ticks[0].label == "0"
    assert layout.start_utc == format_utc(T0)


@pytest.mark.parametrize(
    ("span_ns", "last_tick"),
    [
        (S // 2, "+1s"),
        (12 * S, "+12s"),
        (185 * S, "+3m05s"),
        (3000 * S, "+50m00s"),
        (7800 * S, "+2h10m"),
    ],
)
def test_ticks_read_as_offsets_from_the_start(span_ns, last_tick):
    layout = build_timeline(
        session(processes=[proc(10, 1, T0, "a"), proc(11, 10, T0 + span_ns, "b")])
    )
    assert layout.ticks[-1].label == last_tick
    assert layout.ticks[1].label.startswith("+")


@pytest.mark.parametrize(
    ("priority", "css"),
    [
        ("Critical", "p-critical"),
        ("Warning", "p-warning"),
        ("Informational", "p-informational"),
        ("<script>", "p-other"),
        ("", "p-other"),
    ],
)
def test_priorities_map_to_a_fixed_set_of_classes(priority, css):
    assert priority_class(priority) == css


def test_a_process_line_reaches_the_last_event_of_what_it_started():
    layout = build_timeline(
        session(
            processes=[
                proc(10, 1, T0, "sh"),
                proc(20, 10, T0 + S, "sh"),
                proc(30, 20, T0 + 2 * S, "cat"),
                proc(40, 10, T0 + 3 * S, "ls"),
            ],
            alerts=[alert(T0 + 9 * S, 30), alert(T0 + 4 * S, 40)],
        )
    )
    ends = {r.label.split()[0]: r.x_end for r in layout.rows}
    assert ends["10"] == ends["20"] == ends["30"] == layout.plot_right
    assert ends["40"] < layout.plot_right


def test_the_audit_event_is_a_mark_at_its_time_saying_who_asked_for_what():
    impersonating = AUDIT | {"time_ns": T0 + S, "impersonated_user": "bob"}
    layout = build_timeline(
        session(audit_events=[AUDIT, impersonating], processes=[proc(10, 1, T0 + 2 * S, "sh")])
    )
    first, second = (row.marks for row in layout.rows[:2])
    assert first == (
        Mark(layout.plot_left, format_utc(T0), "create exec by alice: /bin/sh", "audit", "audit-0"),
    )
    assert second[0].title == "create exec by alice as bob: /bin/sh"
    assert second[0].anchor == "audit-1"


def test_each_process_row_says_its_parent_and_start_and_marks_a_parent_never_seen():
    layout = build_timeline(
        session(
            processes=[
                proc(50, 99, T0, "sleep 1"),  # started before the root, its parent unknown
                proc(10, 1, T0 + S, "sh"),
                proc(20, 10, T0 + 2 * S, ""),
            ],
            alerts=[alert(T0 + 3 * S, 20)],
        )
    )
    assert [(r.kind, r.label) for r in layout.rows] == [
        ("root", "10  sh"),  # the root first, though another started before it
        ("process", "20"),  # no arguments: the pid alone
        ("process", "50  sleep 1"),
    ]
    assert [r.title for r in layout.rows] == [
        f"pid 10 (parent 1), started {format_utc(T0 + S)}: sh",
        f"pid 20 (parent 10), started {format_utc(T0 + 2 * S)}: ",
        f"pid 50 (parent 99, not seen), started {format_utc(T0)}: sleep 1",
    ]
    assert layout.rows[1].marks[0].time_utc == format_utc(T0 + 3 * S)


def test_a_process_line_ends_at_its_own_last_event_not_at_a_later_sibling_s():
    layout = build_timeline(
        session(
            processes=[
                proc(10, 1, T0, "sh"),
                proc(20, 10, T0 + S, "a"),
                proc(30, 10, T0 + 10 * S, "b"),
            ],
            alerts=[alert(T0 + 5 * S, 20)],
        )
    )
    rows = {r.label.split()[0]: r for r in layout.rows}
    assert rows["20"].x_end == rows["20"].marks[0].x < rows["30"].x_start
    assert rows["10"].x_end == rows["30"].x_start == layout.plot_right


def test_everything_is_drawn_inside_the_picture_and_deep_labels_stay_in_their_column():
    chain = [proc(10 + n, 9 + n, T0 + n * S, "x" * 80) for n in range(20)]
    layout = build_timeline(
        session(audit_events=[AUDIT], processes=chain, alerts=[alert(T0 + 30 * S, 29)])
    )
    assert 0 < layout.plot_left < layout.plot_right < layout.width
    assert [t.x for t in (layout.ticks[0], layout.ticks[-1])] == [
        layout.plot_left,
        layout.plot_right,
    ]
    assert all(a.x < b.x for a, b in itertools.pairwise(layout.ticks))
    ys = [r.y for r in layout.rows]
    assert ys[0] > TOP, "below the axis and its labels"
    assert all(a < b for a, b in itertools.pairwise(ys)) and ys[-1] < layout.height
    for row in layout.rows:
        depth = round((row.label_x - 8) / INDENT)
        assert len(row.label) <= LABEL_CHARS - 2 * depth, (depth, row.label)
        assert row.label_x + len(row.label) * 7 <= layout.plot_left
        for mark in row.marks:
            assert layout.plot_left <= mark.x <= layout.plot_right
