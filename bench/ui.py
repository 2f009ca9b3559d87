"""The session explorer's pages over the 1M-alert store of bench/store.py.

Each page is timed in-process through Flask's test client (median of repeats), beside
a reference in the same run: a bare Flask route that runs the same store query and
returns its rows as JSON, so the ratio is what rendering the page costs on top.

    python bench/ui.py [--alerts 1000000] [--sessions 20000] [--repeats 15] [--postgres URL]
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

from webhook.store import SessionQuery, open_store  # noqa: E402
from webhook.ui.app import create_ui_app  # noqa: E402

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
        return Response(orjson.dumps(store.session(sid)), mimetype="application/json")

    return app


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
    args = parser.parse_args()
    report: dict[str, Any] = {"alerts": args.alerts, "sessions": args.sessions}
    with tempfile.TemporaryDirectory() as tmp:
        report["sqlite"] = run(f"sqlite:///{tmp}/ui.db", args.alerts, args.sessions, args.repeats)
        if args.postgres:
            report["postgres"] = run(args.postgres, args.alerts, args.sessions, args.repeats)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
