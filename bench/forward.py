"""The forward sink's sustained drain rate when the downstream fails some answers.

A local downstream answers 503 to a share of requests (chosen by a hash of the body and
the attempt, so a retried alert may pass the next time) after 2 ms of work each. The
spool starts with N alerts, more than the window can drain, and the rate is what was
delivered in the first ``--window`` seconds: the rate above which the spool would grow.
Side by side in one run: 0 % and 30 % failures, one request at a time (the old sink's
way) and the default 8 in flight. Medians of repeats.

    python bench/forward.py [--alerts 20000] [--window 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

from webhook.attribution.falco import parse_alert  # noqa: E402
from webhook.attribution.pipeline import ForwardSink  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = (ROOT / "tests/data/falco/unrelated_container.jsonl").read_bytes().splitlines()[1]


def downstream(failure_share: float) -> ThreadingHTTPServer:
    attempts: dict[int, int] = {}

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            time.sleep(0.002)  # the downstream's own work
            key = zlib.crc32(body)
            attempts[key] = attempts.get(key, 0) + 1
            fail = zlib.crc32(body + bytes([attempts[key]])) % 1000 < failure_share * 1000
            self.send_response(503 if fail else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def drain_rate(alerts: int, window: float, failure_share: float, concurrency: int) -> float:
    server = downstream(failure_share)
    template = json.loads(TEMPLATE)
    batch = [parse_alert(json.dumps({**template, "rule": f"bench {n}"})) for n in range(alerts)]
    with tempfile.TemporaryDirectory() as tmp:
        sink = ForwardSink(
            f"http://127.0.0.1:{server.server_address[1]}/",
            Path(tmp) / "spool.db",
            backoff=(0.2, 30.0),
            concurrency=concurrency,
        )
        started = time.perf_counter()
        sink.write(batch)  # the workers start on it at once
        time.sleep(window)
        delivered = sink.delivered
        elapsed = time.perf_counter() - started
        assert delivered < alerts, "the spool emptied: raise --alerts"
        sink._stop.set()
        for worker in sink._workers:
            worker.join()
        sink.spool.close()
    server.shutdown()
    server.server_close()
    return delivered / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=20000)
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    report = {}
    for share in (0.0, 0.3):
        for concurrency in (1, 8):
            runs = [
                drain_rate(args.alerts, args.window, share, concurrency)
                for _ in range(args.repeats)
            ]
            report[f"{share:.0%} failures, {concurrency} in flight"] = {
                "alerts_per_s_median": round(statistics.median(runs)),
                "runs": [round(r) for r in runs],
            }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
