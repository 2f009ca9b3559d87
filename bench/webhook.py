"""Admission throughput and latency of `whoexec serve` over TLS with keep-alive, beside the
servers it could have been, with and without hostile clients.

Starts each server with fresh certificates on 127.0.0.1, drives it with exec
AdmissionReviews, and prints admissions/s with p50 and p99, as medians over rounds in which
every server is measured in turn (so they share the machine's noise):

- ``gevent``: the real `whoexec serve` (gunicorn, webhook.admission.gworker.DeadlineWorker, TLS);
- ``gthread``: the same app under gunicorn's gthread worker (what `whoexec serve` ran
  before issue #21);
- ``uvicorn``: the same app under gunicorn with uvicorn-worker, through a2wsgi;
- ``bare-flask``: the same app under Flask's own server (werkzeug, threaded, one process).

Loads: concurrency 1 and 32 with keep-alive, 32 with ``Connection: close`` (every
admission pays a TLS handshake), and the keep-alive and close loads again while 200
hostile connections are held open (tests/hostile.py: stalled ClientHellos, silent
connects, partial headers and slow bodies of POST /mutate; each reopened as soon as the
server closes it).
The load generator is `wrk` (C, so it does not take the server's CPU away on a 2-core
machine; `apt-get install wrk`); a pure-Python client is the fallback.

    python bench/webhook.py [--repeats 3] [--seconds 4] [--variants gevent,gthread,...]
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# this file is bench/webhook.py: the package of the same name must win
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
REVIEW = ROOT / "tests/data/admission/exec_interactive_shell.json"
VARIANTS = ("gevent", "gthread", "uvicorn", "bare-flask")
#: the hostile connections held open during the "+hostile" loads (200 in all)
HOSTILE = {"tls_stall": 80, "silent": 40, "partial_headers": 40, "slow_body": 40}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_variant(variant: str, certs: Path, port: int) -> None:
    """Run one of the reference servers in this process (``--serve``)."""
    os.environ["WHOEXEC_CERTS"] = str(certs)
    from webhook.settings import Settings

    settings = Settings.from_env(
        os.environ, bind=f"127.0.0.1:{port}", log_level="warning", env_trusted_namespaces=("*",)
    )
    from webhook.admission.wsgi import WebhookApplication
    from webhook.serving import prepare_metrics_dir

    if variant == "bare-flask":
        from werkzeug.serving import make_server

        from webhook.tls import server_context

        app = WebhookApplication(settings, None).application
        context = server_context(certs / "tls.crt", certs / "tls.key")
        # threaded: HTTP/1.1 with keep-alive, a thread per connection
        make_server("127.0.0.1", port, app, threaded=True, ssl_context=context).serve_forever()
        return

    class Variant(WebhookApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            super().load_config()
            if variant == "gthread":
                self.cfg.set("worker_class", "gthread")
                self.cfg.set("threads", 8)
            elif variant == "uvicorn":
                self.cfg.set("worker_class", "uvicorn_worker.UvicornWorker")

        def load(self) -> Any:
            if variant == "uvicorn":
                from a2wsgi import WSGIMiddleware

                return WSGIMiddleware(self.application)
            return self.application

    Variant(settings, prepare_metrics_dir(settings.workers)).run()


def start_server(
    variant: str, certs: Path, port: int, extra: list[str], log: Path
) -> subprocess.Popen[bytes]:
    if variant == "gevent":  # the real thing, as a user starts it
        argv = [
            sys.executable, "-m", "webhook.cli", "serve", "--certs", str(certs),
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "--env-trusted-namespace", "*", *extra,
        ]  # fmt: skip
    else:
        argv = [sys.executable, __file__, "--serve", variant, "--certs", str(certs)]
        argv += ["--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    deadline = time.monotonic() + 30
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
    raise SystemExit(f"{variant} did not become ready:\n{log.read_text(errors='replace')}")


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
            "--timeout",
            "3s",  # the apiserver's timeoutSeconds for whoexec
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
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "requests": int(re.search(r"(\d+) requests in", out).group(1)),  # type: ignore[union-attr]
        "p50_ms": _ms(p50.group(1)) if p50 else float("nan"),
        "p99_ms": _ms(p99.group(1)) if p99 else float("nan"),
        # an admission that failed or took over 3 s: the apiserver gave up on it
        "failed": sum(map(int, errors.groups())) if errors else 0,
        "non_2xx": int(non_2xx.group(1)) if non_2xx else 0,
    }


def run_python(
    port: int, concurrency: int, seconds: int, keepalive: bool, body: Path, ca: Path
) -> dict:
    payload = body.read_bytes()
    context = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    failed = [0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker() -> None:
        mine: list[float] = []
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=3)
        headers = {"Content-Type": "application/json"}
        if not keepalive:
            headers["Connection"] = "close"
        while time.monotonic() < stop:
            started = time.perf_counter()
            try:
                conn.request("POST", "/mutate", body=payload, headers=headers)
                reply = conn.getresponse()
                reply.read()
                if reply.status != 200:
                    raise OSError(f"status {reply.status}")
            except OSError:
                conn.close()
                with lock:
                    failed[0] += 1
                continue
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
    latencies.sort() if latencies else latencies.append(float("nan"))
    return {
        "rps": len(latencies) / elapsed,
        "requests": len(latencies),
        "p50_ms": latencies[len(latencies) // 2],
        "p99_ms": latencies[int(len(latencies) * 0.99)],
        "failed": failed[0],
        "non_2xx": 0,
    }


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a server and every process below it: on a shared,
    busy machine the CPU an admission costs is steadier than admissions/s."""
    from tests.hostile import process_tree

    total = 0.0
    for proc in process_tree(pid):
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


LOADS = (
    ("c1", 1, True, False),
    ("c32", 32, True, False),
    ("c32+hostile", 32, True, True),
    ("c32-close", 32, False, False),
    ("c32-close+hostile", 32, False, True),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="rounds over every variant")
    parser.add_argument("--seconds", type=int, default=4)
    parser.add_argument("--client", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--review", type=Path, default=REVIEW)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument(
        "--pod-cache",
        action="store_true",
        help="serve with a warm pod cache, fed by the tests' fake apiserver (gevent only)",
    )
    parser.add_argument("--serve", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--certs", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("serve_args", nargs="*", help="extra `whoexec serve` flags")
    args = parser.parse_args()
    if args.serve:
        serve_variant(args.serve, args.certs, args.port)
        return
    sys.path.append(str(ROOT))  # tests/ holds the fake apiserver and the hostile clients
    from tests.hostile import Hostile

    variants = args.variants.split(",")
    apiserver = None
    if args.pod_cache:
        from tests.fake_apiserver import FakeApiserver, make_pod

        variants = ["gevent"]
        review = json.loads(args.review.read_text())["request"]
        apiserver = FakeApiserver()
        apiserver.add(make_pod(review["namespace"], review["name"], "uid-bench", 0), False)
        args.serve_args = [*args.serve_args, "--kube", apiserver.url]
    client = args.client
    if client == "auto":
        client = "wrk" if shutil.which("wrk") else "python"

    runs: dict[str, dict[str, list[dict]]] = {
        v: {label: [] for label, *_ in LOADS} for v in variants
    }
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp) / "certs"
        subprocess.run(
            [sys.executable, "-m", "webhook.cli", "certs", "--out", str(certs)],
            check=True,
            capture_output=True,
        )
        ca = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        ca.check_hostname = False

        def measure(proc: subprocess.Popen[bytes], port: int, c: int, keepalive: bool) -> dict:
            cpu = cpu_seconds(proc.pid)
            if client == "wrk":  # wrk checks no certificate; the handshake is the same
                result = run_wrk(port, c, args.seconds, keepalive, args.review)
            else:
                result = run_python(port, c, args.seconds, keepalive, args.review, certs / "ca.crt")
            cpu = cpu_seconds(proc.pid) - cpu
            result["cpu_ms"] = 1000 * cpu / result["requests"] if result["requests"] else 0.0
            return result

        try:
            for _ in range(args.repeats):
                for variant in variants:
                    port = free_port()
                    proc = start_server(
                        variant, certs, port, args.serve_args, Path(tmp) / f"{variant}.log"
                    )
                    try:
                        if args.pod_cache:
                            check_pod_cache(port, certs, args.review)
                        measure(proc, port, 8, True)  # warm up: imports, caches, connections
                        for label, c, keepalive, hostile in LOADS:
                            if not hostile:
                                runs[variant][label].append(measure(proc, port, c, keepalive))
                                continue
                            attack = Hostile(
                                port, HOSTILE, tls=ca, path="/mutate", seconds=3 * args.seconds
                            )
                            try:
                                attack.start()
                                time.sleep(0.5)
                                runs[variant][label].append(measure(proc, port, c, keepalive))
                            except AssertionError:  # the server could not even take them
                                runs[variant][label].append(
                                    {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"),
                                     "failed": -1, "non_2xx": 0, "cpu_ms": float("nan")}
                                )  # fmt: skip
                            finally:
                                attack.stop()
                    finally:
                        proc.terminate()
                        try:
                            proc.wait(timeout=30)
                        except subprocess.TimeoutExpired:
                            proc.kill()
                            proc.wait()
        finally:
            if apiserver is not None:
                apiserver.close()

    results = {
        variant: {
            label: {
                "rps": round(statistics.median(r["rps"] for r in rows), 1),
                "p50_ms": round(statistics.median(r["p50_ms"] for r in rows), 2),
                "p99_ms": round(statistics.median(r["p99_ms"] for r in rows), 2),
                "cpu_ms_per_admission": round(statistics.median(r["cpu_ms"] for r in rows), 3),
                "failed_or_over_3s": [r["failed"] for r in rows],
                "non_2xx": [r["non_2xx"] for r in rows],
            }
            for label, rows in by_load.items()
        }
        for variant, by_load in runs.items()
    }
    report: dict[str, Any] = {
        "pod_cache": bool(args.pod_cache),
        "client": client,
        "cpus": os.cpu_count(),
        "repeats": args.repeats,
        "seconds_per_run": args.seconds,
        "hostile": HOSTILE,
        "results": results,
    }
    if "gevent" in results:
        ours = results["gevent"]
        ratios: dict[str, float] = {
            "keepalive_speedup_c32": round(ours["c32"]["rps"] / ours["c32-close"]["rps"], 2),
            "p99_hostile/p99_c32": round(ours["c32+hostile"]["p99_ms"] / ours["c32"]["p99_ms"], 2),
            "p99_close_hostile/p99_close": round(
                ours["c32-close+hostile"]["p99_ms"] / ours["c32-close"]["p99_ms"], 2
            ),
        }
        for other in ("bare-flask", "gthread", "uvicorn"):
            if other in results:
                for label in ("c32", "c32-close"):
                    ratios[f"gevent/{other} {label} rps"] = round(
                        ours[label]["rps"] / results[other][label]["rps"], 2
                    )
                    ratios[f"gevent/{other} {label} cpu per admission"] = round(
                        ours[label]["cpu_ms_per_admission"]
                        / results[other][label]["cpu_ms_per_admission"],
                        2,
                    )
        report["ratios"] = ratios
        report["goals"] = {
            "c32 rps >= 0.9x bare Flask": ratios.get("gevent/bare-flask c32 rps", 0) >= 0.9,
            "p99 under hostile load <= 2x p99 without": ratios["p99_hostile/p99_c32"] <= 2,
        }
    print(json.dumps(report, indent=2))


def check_pod_cache(port: int, certs: Path, review: Path) -> None:
    """Make sure the figures are for the cached path."""
    conn = http.client.HTTPSConnection(
        "localhost",
        port,
        timeout=5,
        context=ssl.create_default_context(cafile=str(certs / "ca.crt")),
    )
    conn.request(
        "POST", "/mutate", body=review.read_bytes(), headers={"Content-Type": "application/json"}
    )
    answer = json.loads(conn.getresponse().read())["response"]
    conn.close()
    lookup = answer["auditAnnotations"].get("pod-lookup")
    if lookup not in ("cached", "fetched"):
        raise SystemExit(f"the pod cache was not used: pod-lookup={lookup}")


if __name__ == "__main__":
    main()
