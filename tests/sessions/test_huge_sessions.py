"""An attacker cannot make their own session unviewable: a chain of 1,000 processes is
drawn without recursion, and a session's alerts come a page at a time (every one of them,
once, in time order), on both databases. How fast is bench/ui.py's business."""

from __future__ import annotations

import pytest

from webhook.sessions.store import AlertFact, Batch, ProcessFact, SessionFact, open_store
from webhook.sessions.ui.app import ALERT_PAGE, PROCESS_ROWS, create_ui_app
from webhook.sessions.ui.timeline import INDENT, MAX_INDENT, build_timeline

S = 1_000_000_000
T0 = 1795341600 * S


def chain(depth: int) -> list[dict]:
    """Each process the parent of the next: a session can make one on purpose."""
    return [
        {
            "host": "n",
            "pid": 100 + n,
            "ppid": 99 + n,
            "start_ns": T0 + n,
            "args": f"sh -c {n}",
            "first_seen_ns": T0 + n,
        }
        for n in range(depth)
    ]


def test_a_chain_of_1000_processes_is_drawn_in_order_without_recursion():
    layout = build_timeline(
        {
            "session_id": "s",
            "root_pid": 100,
            "started_ns": T0,
            "audit_events": [],
            "processes": chain(1000),
            "alerts": [],
            "findings": [],
        }
    )
    assert [row.label.split()[0] for row in layout.rows] == [str(100 + n) for n in range(1000)]
    assert layout.rows[1].label_x - layout.rows[0].label_x == INDENT
    # the deepest rows stay in the label column instead of running off the picture
    assert max(row.label_x for row in layout.rows) == 8 + MAX_INDENT * INDENT


def fill(url: str, alerts: int, processes: int = 1) -> None:
    store = open_store(url)
    batch = Batch(sessions=[SessionFact("big", T0, "token", user="mallory", root_pid=100)])
    batch.processes += [
        ProcessFact("big", "n", 100 + n, T0 + n, 99 + n, f"sh -c {n}", T0 + n)
        for n in range(processes)
    ]
    batch.alerts += [
        AlertFact(
            key=f"k{n:05d}",
            # pairs of alerts at the same time: the key breaks the tie across pages
            time_ns=T0 + S + n // 2,
            rule=f"rule {n}",
            priority="Warning",
            source="syscall",
            output="x",
            output_fields='{"proc.pid": 100}',
            attribution="verified",
            hostname="n",
            session_id="big",
        )
        for n in range(alerts)
    ]
    store.ingest(batch)
    store.close()


def test_a_session_s_alerts_come_a_page_at_a_time_each_once_in_time_order(store_url):
    total = 2 * ALERT_PAGE + 7
    fill(store_url, total)
    store = open_store(store_url)
    try:
        client = create_ui_app(store).test_client()
        seen: list[str] = []
        path = "/sessions/big?format=json"
        while path:
            page = client.get(path).get_json()
            assert page["alert_count"] == total
            assert len(page["alerts"]) <= ALERT_PAGE
            seen += [a["rule"] for a in page["alerts"]]
            later = page["later_alerts"]
            path = f"/sessions/big?format=json&alerts_after={later}" if later else ""
        assert seen == [f"rule {n}" for n in range(total)]
        html = client.get("/sessions/big").get_data(as_text=True)
        assert f"{ALERT_PAGE} of the session's {total} alerts" in html
        assert 'id="later-alerts"' in html
    finally:
        store.close()


@pytest.mark.parametrize(
    "cursor",
    ["99999999999999999999999:k", "9223372036854775808:k", "12:", "x:k", "1" * 5000 + ":k"],
)
def test_a_page_cursor_that_is_no_cursor_is_a_400(tmp_path, cursor):
    url = f"sqlite:///{tmp_path}/s.db"
    fill(url, 3)
    store = open_store(url)
    try:
        client = create_ui_app(store).test_client()
        response = client.get("/sessions/big", query_string={"alerts_after": cursor})
        assert response.status_code == 400
        assert client.get("/sessions", query_string={"after": cursor}).status_code == 400
    finally:
        store.close()


def test_a_session_of_more_processes_than_a_page_shows_the_first_and_says_so(tmp_path):
    url = f"sqlite:///{tmp_path}/s.db"
    fill(url, 1, processes=PROCESS_ROWS + 5)
    store = open_store(url)
    try:
        html = create_ui_app(store).test_client().get("/sessions/big").get_data(as_text=True)
        assert f"The first {PROCESS_ROWS} of the session's {PROCESS_ROWS + 5} processes" in html
        assert store.session("big")["process_count"] == PROCESS_ROWS + 5, "the CLI has all"
    finally:
        store.close()
