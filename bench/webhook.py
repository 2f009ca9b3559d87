"""Admission throughput and latency of `whoexec serve` over TLS with keep-alive.

Starts the real webhook (gunicorn, gthread, TLS) with fresh certificates on 127.0.0.1,
drives it with exec AdmissionReviews, and prints admissions/s with p50 and p99 at
concurrency 1 and 32, as medians over several runs. The load generator is `wrk` (C, so
it does not take the server's CPU away on a 2-core machine; `apt-get install wrk`); a
pure-Python client is the fallback. A third figure, concurrency 32 with
`Connection: close`, shows what keep-alive saves (every request pays a TLS handshake).

    python bench/webhook.py [--repeats 5] [--seconds 5] [--client wrk|python]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REVIEW = Path(__file__).resolve().parent.parent / "tests/data/admission/exec_interactive_shell.json"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(certs: Path, port: int, extra: list[str]) -> subprocess.Popen[bytes]:
    whoexec = [sys.executable, "-m", "webhook.cli"]
    subprocess.run([*whoexec, "certs", "--out", str(certs)], check=True, capture_output=True)
    proc = subprocess.Popen(
        [
            *whoexec,
            "serve",
            "--certs",
            str(certs),
            "--bind",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=2)
        try:
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return proc
        except OSError:
            time.sleep(0.1)
        finally:
            conn.close()
    proc.kill()
    raise SystemExit("whoexec serve did not become ready")


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * _UNITS[unit]


def run_wrk(port: int, concurrency: int, seconds: int, keepalive: bool, body: Path) -> dict:
    script = Path(tempfile.mkstemp(suffix=".lua")[1])
    close = "" if keepalive else 'wrk.headers["Connection"] = "close"\n'
    script.write_text(
        f'local f = io.open("{body}", "r"); wrk.body = f:read("*a"); f:close()\n'
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n' + close
    )
    threads = min(2, concurrency)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{concurrency}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            str(script),
            f"https://localhost:{port}/mutate",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    script.unlink()
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)),  # type: ignore[union-attr]
    }


def run_python(
    port: int, concurrency: int, seconds: int, keepalive: bool, body: Path, ca: Path
) -> dict:
    payload = body.read_bytes()
    context = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        mine: list[float] = []
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
        headers = {"Content-Type": "application/json"}
        if not keepalive:
            headers["Connection"] = "close"
        while time.monotonic() < stop:
            started = time.perf_counter()
            conn.request("POST", "/mutate", body=payload, headers=headers)
            reply = conn.getresponse()
            reply.read()
            if reply.status != 200:
                raise SystemExit(f"status {reply.status}")
            mine.append((time.perf_counter() - started) * 1000)
            if not keepalive:
                conn.close()
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - began
    latencies.sort()
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--review", type=Path, default=REVIEW)
    parser.add_argument(
        "--pod-cache",
        action="store_true",
        help="serve with a warm pod cache, fed by the tests' fake apiserver",
    )
    parser.add_argument("serve_args", nargs="*", help="extra `whoexec serve` flags")
    args = parser.parse_args()
    apiserver = None
    if args.pod_cache:
        sys.path.append(str(REVIEW.parent.parent.parent))  # tests/ holds the fake
        from fake_apiserver import FakeApiserver, make_pod  # type: ignore[import-not-found]

        review = json.loads(args.review.read_text())["request"]
        apiserver = FakeApiserver()
        apiserver.add(make_pod(review["namespace"], review["name"], "uid-bench", 0), False)
        args.serve_args = [*args.serve_args, "--kube", apiserver.url]
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"

    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        port = free_port()
        proc = start_server(certs, port, args.serve_args)
        try:
            if client == "wrk":
                # wrk checks no certificate; the TLS handshake and cipher are the same
                def measure(c: int, keepalive: bool) -> dict:
                    return run_wrk(port, c, args.seconds, keepalive, args.review)
            else:

                def measure(c: int, keepalive: bool) -> dict:
                    return run_python(
                        port, c, args.seconds, keepalive, args.review, certs / "ca.crt"
                    )

            if args.pod_cache:  # make sure the figures are for the cached path
                conn = http.client.HTTPSConnection(
                    "localhost",
                    port,
                    timeout=5,
                    context=ssl.create_default_context(cafile=str(certs / "ca.crt")),
                )
                conn.request(
                    "POST",
                    "/mutate",
                    body=args.review.read_bytes(),
                    headers={"Content-Type": "application/json"},
                )
                answer = json.loads(conn.getresponse().read())["response"]
                conn.close()
                lookup = answer["auditAnnotations"].get("pod-lookup")
                if lookup not in ("cached", "fetched"):
                    raise SystemExit(f"the pod cache was not used: pod-lookup={lookup}")
            measure(8, True)  # warm up: imports, JIT-free but caches and connections
            results = {}
            for label, c, keepalive in (
                ("c1", 1, True),
                ("c32", 32, True),
                ("c32-no-keepalive", 32, False),
            ):
                runs = [measure(c, keepalive) for _ in range(args.repeats)]
                results[label] = {
                    key: round(statistics.median(run[key] for run in runs), 3)
                    for key in ("rps", "p50_ms", "p99_ms")
                }
        finally:
            proc.terminate()
            proc.wait(timeout=30)
            if apiserver is not None:
                apiserver.close()

    ratio = results["c32"]["rps"] / results["c32-no-keepalive"]["rps"]
    report = {
        "pod_cache": bool(args.pod_cache),
        "client": client,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "seconds_per_run": args.seconds,
        "results": results,
        "keepalive_speedup_c32": round(ratio, 2),
        "targets": {
            "c32_rps>=1500": results["c32"]["rps"] >= 1500,
            "c1_p50_ms<=2": results["c1"]["p50_ms"] <= 2.0,
        },
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
