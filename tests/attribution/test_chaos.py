"""Chaos, as an operator would cause it: ``kill -9`` of every consumer process in the
middle of a stream while the downstream is down, a restart, the downstream back.

Checked by a unique marker per alert (its rule name):
- everything acknowledged (HTTP 200) is delivered downstream and stored;
- the only duplicates downstream are the documented at-least-once ones: alerts
  acknowledged before the crash, whose delivery or acknowledgement the crash cut;
- the store holds each alert once.
"""

from __future__ import annotations

import http.client
import os
import sys
import threading
import time
from collections import Counter

import pytest

from tests.servers import ServerProcess
from webhook.sessions.store import open_store

from .test_consumer import FALCO, Downstream, rule_lines

pytestmark = pytest.mark.slow
PUB = str(FALCO / "identity.pub")


def start_consumer(tmp_path, downstream_port: int, n: int) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    server = ServerProcess(
        [
            sys.executable,
            "-m",
            "webhook.cli",
            "consume",
            "--listen",
            "127.0.0.1:0",
            "--identity-pub",
            PUB,
            "--no-stdout",
            "--hold",
            "1",
            "--forward",
            f"http://127.0.0.1:{downstream_port}/",
            "--db",
            f"sqlite:///{tmp_path}/store.db",
            "--state-dir",
            str(tmp_path / "state"),
        ],
        tmp_path / f"consumer-{n}.log",
        env,
    )

    def healthy() -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    server.wait_until(healthy, "the consumer")
    return server


def post(port: int, body: bytes) -> int | None:
    """One alert, one request, as Falco's http_output sends it; None if nothing answered."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/falco", body=body, headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def test_kill_9_mid_stream_with_the_downstream_down_loses_nothing_acknowledged(tmp_path):
    alerts = rule_lines("chaos", 800)
    downstream = Downstream()  # bound, not listening: down
    servers = [start_consumer(tmp_path, downstream.port, 1)]
    acknowledged: list[str] = []

    def falco() -> None:
        """Posts every alert once, to whichever consumer runs, as Falco would, at a steady
        200 alerts/s (so that the stream goes on while the consumer is down)."""
        for n, body in enumerate(alerts):
            if post(servers[-1].port, body) == 200:
                acknowledged.append(f"chaos {n}")
            time.sleep(0.005)  # the pace of the stream, not synchronisation

    sender = threading.Thread(target=falco)
    sender.start()
    under_way = time.monotonic() + 120
    while len(acknowledged) < 250:  # waiting for the stream to be under way
        assert sender.is_alive() and time.monotonic() < under_way, (
            f"the stream stalled at {len(acknowledged)} acknowledged alerts"
        )
        time.sleep(0.005)
    servers[0].kill_group()  # kill -9 of the master, workers, supervisor and pipeline
    before_crash = set(acknowledged)
    servers.append(start_consumer(tmp_path, downstream.port, 2))
    try:
        sender.join(timeout=300)
        downstream.fail_first = 0
        downstream.start()  # the downstream comes back
        deadline = time.monotonic() + 120
        while {b["rule"] for b in downstream.bodies} < set(acknowledged):
            assert time.monotonic() < deadline, "acknowledged alerts never arrived"
            time.sleep(0.1)  # polling the recording server for a condition
    finally:
        servers[-1].stop()
        downstream.stop()
    assert 250 <= len(before_crash) < len(acknowledged) < 800, "some were refused in between"
    delivered = Counter(b["rule"] for b in downstream.bodies)
    assert set(acknowledged) <= set(delivered)
    duplicates = {rule for rule, count in delivered.items() if count > 1}
    assert duplicates <= before_crash, "only what the crash cut is delivered twice"
    store = open_store(f"sqlite:///{tmp_path}/store.db")
    try:
        rows = store._query("SELECT rule, count(*) AS n FROM alerts GROUP BY rule")
    finally:
        store.close()
    stored = {row["rule"]: int(row["n"]) for row in rows}
    assert set(acknowledged) <= set(stored)
    assert set(stored.values()) == {1}, "the store holds each alert once"
    dead = tmp_path / "state" / "dead-letters.jsonl"
    assert not dead.exists(), dead.read_text() if dead.exists() else ""
