"""Session store: batched ingestion rate, and `whoexec sessions --user U --since 7d` time.

1. Alerts ingested per second into SQLite and into PostgreSQL, in the consumer's batches
   (500 facts a transaction), each alert with its session and process upserts.
2. The time of `whoexec sessions --user U --since 7d` over a store holding 1,000,000
   alerts and 20,000 sessions: the query itself (in-process, median of repeats), and the
   whole command as a subprocess (Python start-up included).

PostgreSQL: a throwaway server from Debian's binaries (as the tests do), or --postgres URL.

    python bench/store.py [--ingest 100000] [--alerts 1000000] [--sessions 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `python bench/store.py` puts bench/ first on sys.path, where bench/webhook.py would
# shadow the installed `webhook` package; tests/ holds the throwaway PostgreSQL helper
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path.append(str(ROOT / "tests"))

from pgserver import create_database, throwaway_postgres  # noqa: E402

from webhook.sessions.store import (  # noqa: E402
    AlertFact,
    Batch,
    ProcessFact,
    SessionFact,
    SessionQuery,
    open_store,
)

NOW = time.time_ns()
DAY = 86_400 * 10**9
USERS = [f"user{i:03d}@corp.example" for i in range(200)]
PRIORITIES = ["Warning", "Notice", "Error", "Critical", "Informational"]


def batches(alerts: int, sessions: int, seed: int, per_batch: int = 500) -> Iterator[Batch]:
    """Sessions over the last 30 days, each with processes and alerts, as the consumer writes."""
    rng = random.Random(seed)
    per_session = max(1, alerts // sessions)
    batch = Batch()
    written = 0
    for s in range(sessions):
        sid = f"{seed:04d}-{s:08d}-4000-8000-000000000000"
        started = NOW - rng.randrange(30 * DAY)
        user = USERS[s % len(USERS)]
        batch.sessions.append(
            SessionFact(
                session_id=sid,
                time_ns=started,
                learnt_from="token",
                user=user,
                uid="u",
                groups=("devs", "system:authenticated"),
                namespace=f"ns{s % 40}",
                pod=f"web-{s % 500}",
                container="app",
                command=("/bin/bash",),
                attribution="verified",
                host=f"node-{s % 8}",
                root_pid=10_000 + s,
                started_ns=started,
            )
        )
        for a in range(per_session):
            pid = 20_000 + a
            t = started + a * 10**9
            if a % 4 == 0:
                batch.processes.append(
                    ProcessFact(sid, f"node-{s % 8}", pid, t, 10_000 + s, "cat /etc/shadow", t)
                )
            fields = {
                "proc.pid": pid,
                "proc.cmdline": "cat /etc/shadow",
                "fd.name": "/etc/shadow",
                "k8s.ns.name": f"ns{s % 40}",
                "k8s.pod.name": f"web-{s % 500}",
                "whoexec.user.name": user,
                "whoexec.session.id": sid,
            }
            batch.alerts.append(
                AlertFact(
                    key=f"sha256:{seed}-{s}-{a}",
                    time_ns=t,
                    rule="Read sensitive file untrusted",
                    priority=PRIORITIES[a % len(PRIORITIES)],
                    source="syscall",
                    output="10:00:00.000000000: Warning Sensitive file opened for reading",
                    output_fields=json.dumps(fields),
                    attribution="verified",
                    hostname=f"node-{s % 8}",
                    session_id=sid,
                    user=user,
                )
            )
            written += 1
            if len(batch) >= per_batch:
                yield batch
                batch = Batch()
            if written >= alerts:
                break
    if len(batch):
        yield batch


def ingest_rate(url: str, alerts: int, repeats: int) -> dict:
    rates = []
    for run in range(repeats):
        store = open_store(url)
        started = time.perf_counter()
        for batch in batches(alerts, max(1, alerts // 50), seed=run + 1):
            store.ingest(batch)
        rates.append(alerts / (time.perf_counter() - started))
        store.close()
    return {
        "alerts_per_s_median": round(statistics.median(rates)),
        "runs": [round(r) for r in rates],
    }


def query_time(url: str, alerts: int, sessions: int, repeats: int) -> dict:
    store = open_store(url)
    fill_started = time.perf_counter()
    for batch in batches(alerts, sessions, seed=9999, per_batch=5000):
        store.ingest(batch)
    fill_s = time.perf_counter() - fill_started
    user = USERS[7]
    query = SessionQuery(user=user, since_ns=NOW - 7 * DAY)
    found = len(store.sessions(query))
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        store.sessions(query)
        times.append((time.perf_counter() - started) * 1000)
    store.close()
    command = [
        sys.executable,
        "-m",
        "webhook.cli",
        "sessions",
        "--db",
        url,
        "--user",
        user,
        "--since",
        "7d",
        "--format",
        "json",
    ]
    walls = []
    for _ in range(max(3, repeats // 4)):
        started = time.perf_counter()
        out = subprocess.run(command, check=True, capture_output=True, cwd=ROOT)
        walls.append((time.perf_counter() - started) * 1000)
    assert len(json.loads(out.stdout)) == found
    python_alone = []
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        python_alone.append((time.perf_counter() - started) * 1000)
    return {
        "fill_seconds": round(fill_s, 1),
        "sessions_found": found,
        "query_ms_median": round(statistics.median(times), 2),
        "query_ms_runs": [round(t, 2) for t in times],
        "command_ms_median": round(statistics.median(walls)),
        "python_startup_ms_median": round(statistics.median(python_alone)),
    }


@contextmanager
def postgres(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    with throwaway_postgres() as server:
        yield server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ingest", type=int, default=100_000)
    parser.add_argument("--alerts", type=int, default=1_000_000)
    parser.add_argument("--sessions", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--postgres", default=None, help="a server URL that may create dbs")
    args = parser.parse_args()
    report: dict = {
        "ingest_alerts": args.ingest,
        "query_store": {"alerts": args.alerts, "sessions": args.sessions},
    }
    with tempfile.TemporaryDirectory() as tmp, postgres(args.postgres) as server:
        report["sqlite_ingest"] = ingest_rate(
            f"sqlite:///{tmp}/ingest.db", args.ingest, args.repeats
        )
        report["postgres_ingest"] = ingest_rate(
            create_database(server, f"bench_ingest_{os.getpid()}"), args.ingest, args.repeats
        )
        report["sqlite_query"] = query_time(
            f"sqlite:///{tmp}/query.db", args.alerts, args.sessions, args.repeats * 10
        )
        report["postgres_query"] = query_time(
            create_database(server, f"bench_query_{os.getpid()}"),
            args.alerts,
            args.sessions,
            args.repeats * 10,
        )
    report["targets"] = {
        "sqlite_ingest>=5000/s": report["sqlite_ingest"]["alerts_per_s_median"] >= 5000,
        "postgres_ingest>=5000/s": report["postgres_ingest"]["alerts_per_s_median"] >= 5000,
        "sqlite_query<=100ms": report["sqlite_query"]["query_ms_median"] <= 100,
        "postgres_query<=100ms": report["postgres_query"]["query_ms_median"] <= 100,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
