"""The session explorer's pages over the 1M-alert store of bench/store.py.

Each page is timed in-process through Flask's test client (median of repeats), beside
a reference in the same run: a bare Flask route that runs the same store query and
returns its rows as JSON, so the ratio is what rendering the page costs on top.

    python bench/ui.py [--alerts 1000000] [--sessions 20000] [--repeats 15] [--postgres URL]
    python bench/ui.py --huge-only    # a 100,000-alert session, a 1,000-deep chain
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from flask import Flask, Response

_spec = importlib.util.spec_from_file_location("bench_store", Path(__file__).with_name("store.py"))
assert _spec is not None
assert _spec.loader is not None
bench_store = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_store)

from webhook.sessions.store import SessionQuery, open_store  # noqa: E402
from webhook.sessions.ui.app import create_ui_app  # noqa: E402

DAY = bench_store.DAY


def reference_app(store: Any) -> Flask:
    """Bare Flask: the same queries, the rows as JSON, no template."""
    app = Flask("reference")
    now = time.time_ns()

    @app.get("/sessions")
    def sessions() -> Response:
        from flask import request

        query = SessionQuery(
            user=request.args.get("user"),
            since_ns=now - int(request.args.get("days", "1")) * DAY,
            limit=51,
        )
        return Response(orjson.dumps(store.sessions(query)), mimetype="application/json")

    @app.get("/users")
    def users() -> Response:
        from flask import request

        since = now - int(request.args.get("days", "7")) * DAY
        return Response(orjson.dumps(store.users(since)), mimetype="application/json")

    @app.get("/session/<sid>")
    def session(sid: str) -> Response:
        from flask import request

        # the UI's page: its first 500 alerts (one more tells there are later ones)
        limit = None if request.args.get("all") else 501
        found = store.session(sid, alerts_limit=limit)
        return Response(orjson.dumps(found), mimetype="application/json")

    return app


HUGE_ALERTS = "huge-0000-4000-8000-000000000001"
DEEP_CHAIN = "deep-0000-4000-8000-000000000002"


def huge_sessions(store: Any, alerts: int = 100_000, depth: int = 1_000) -> None:
    """What an attacker can make of their own session: ``alerts`` alerts on 200 processes,
    and a chain of ``depth`` processes, each the parent of the next, one alert each."""
    from webhook.sessions.store import AlertFact, Batch, ProcessFact, SessionFact

    started = time.time_ns() - DAY
    for sid, processes, count in ((HUGE_ALERTS, 200, alerts), (DEEP_CHAIN, depth, depth)):
        batch = Batch()
        batch.sessions.append(
            SessionFact(sid, started, "token", user="mallory@corp.example", root_pid=1000)
        )
        for n in range(processes):
            parent = 1000 + n - 1 if sid == DEEP_CHAIN else 1000
            pid = 1000 + n
            batch.processes.append(
                ProcessFact(sid, "node-1", pid, started + n, parent, f"sh -c {n}", started + n)
            )
        for a in range(count):
            pid = 1000 + a % processes
            batch.alerts.append(
                AlertFact(
                    key=f"sha256:{sid}-{a}",
                    time_ns=started + processes + a * 1000,
                    rule="Read sensitive file untrusted",
                    priority=PRIORITIES[a % len(PRIORITIES)],
                    source="syscall",
                    output="10:00:00.000000000: Warning Sensitive file opened for reading",
                    output_fields=json.dumps({"proc.pid": pid}),
                    attribution="verified",
                    hostname="node-1",
                    session_id=sid,
                    user="mallory@corp.example",
                )
            )
            if len(batch) >= 5000:
                store.ingest(batch)
                batch = Batch()
        store.ingest(batch)


PRIORITIES = ["Warning", "Notice", "Error", "Critical", "Informational"]


def run_huge(url: str, repeats: int) -> dict[str, Any]:
    """The first page of a 100,000-alert session and of a 1,000-deep chain."""
    store = open_store(url)
    huge_sessions(store)
    ui = create_ui_app(store).test_client()
    ref = reference_app(store).test_client()
    report: dict[str, Any] = {}
    for name, sid in (
        ("one session, 100,000 alerts: first page", HUGE_ALERTS),
        ("one session, a 1,000-deep chain", DEEP_CHAIN),
    ):
        ms, size = median_ms(ui, f"/sessions/{sid}", repeats)
        ref_ms, _ = median_ms(ref, f"/session/{sid}", repeats)
        all_ms, all_size = median_ms(ref, f"/session/{sid}?all=1", max(3, repeats // 5))
        report[name] = {
            "ui_ms": ms,
            "bytes": size,
            "bare_flask_ms": ref_ms,
            "ratio": round(ms / ref_ms, 2),
            "every_alert_as_json_ms": all_ms,
            "every_alert_bytes": all_size,
        }
    store.close()
    return report


def median_ms(client: Any, path: str, repeats: int) -> tuple[float, int]:
    times = []
    size = 0
    for _ in range(repeats):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        assert response.status_code == 200, (path, response.status_code)
        size = len(response.data)
    return round(statistics.median(times), 2), size


def run(url: str, alerts: int, sessions: int, repeats: int) -> dict[str, Any]:
    store = open_store(url)
    started = time.perf_counter()
    for batch in bench_store.batches(alerts, sessions, seed=4242, per_batch=5000):
        store.ingest(batch)
    fill_s = time.perf_counter() - started
    ui = create_ui_app(store).test_client()
    ref = reference_app(store).test_client()
    user = bench_store.USERS[7]
    page = ui.get("/sessions?since=30d&format=json").get_json()
    sid = page[0]["session_id"]
    # the cursor of the 100th page: keyset pagination should not slow down with depth
    deep = page[-1]
    for _ in range(99):
        older = ui.get(
            f"/sessions?since=30d&format=json&after={deep['started_ns']}:{deep['session_id']}"
        ).get_json()
        if not older:
            break
        deep = older[-1]
    pages = {
        "sessions (24h)": ("/sessions", "/sessions?days=1"),
        "sessions (30d, first page)": ("/sessions?since=30d", "/sessions?days=30"),
        "sessions (30d, page 100)": (
            f"/sessions?since=30d&after={deep['started_ns']}:{deep['session_id']}",
            None,
        ),
        "sessions of one user (7d)": (
            f"/sessions?user={user}&since=7d",
            f"/sessions?user={user}&days=7",
        ),
        "sessions with alerts (30d)": ("/sessions?since=30d&has_alerts=yes", None),
        "unattributed sessions (30d)": ("/sessions?since=30d&attribution=unattributed", None),
        "users (7d, the default)": ("/users", "/users?days=7"),
        "users (30d)": ("/users?since=30d", "/users?days=30"),
        "one session (50 alerts)": (f"/sessions/{sid}", f"/session/{sid}"),
        "findings (7d)": ("/findings", None),
        "sessions CSV (30d)": ("/sessions?since=30d&format=csv", None),
    }
    report: dict[str, Any] = {"fill_seconds": round(fill_s, 1), "pages": {}}
    for name, (path, reference) in pages.items():
        ms, size = median_ms(ui, path, repeats)
        row: dict[str, Any] = {"ui_ms": ms, "bytes": size}
        if reference:
            ref_ms, _ = median_ms(ref, reference, repeats)
            row |= {"bare_flask_ms": ref_ms, "ratio": round(ms / ref_ms, 2)}
        report["pages"][name] = row
    store.close()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--postgres", default=None, help="a database URL to fill and read")
    parser.add_argument(
        "--huge-only",
        action="store_true",
        help="only the huge sessions (100,000 alerts; a 1,000-deep chain), not the 1M store",
    )
    args = parser.parse_args()
    report: dict[str, Any] = {"alerts": args.alerts, "sessions": args.sessions}
    with tempfile.TemporaryDirectory() as tmp:
        if not args.huge_only:
            url = f"sqlite:///{tmp}/ui.db"
            report["sqlite"] = run(url, args.alerts, args.sessions, args.repeats)
        report["huge sessions, sqlite"] = run_huge(f"sqlite:///{tmp}/huge.db", args.repeats)
        if args.postgres:
            report["postgres"] = run(args.postgres, args.alerts, args.sessions, args.repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
