"""Falco's http_output into whoexec's intake, beside a minimal Go sink (and falcosidekick).

Falco posts every alert on its own and waits for the answer (outputs_http.cpp), with a
new connection per alert unless ``http_output.keep_alive: true``. ``bench/falcohttp``
(Go, built here) does the same from one goroutine. In each round it sends the same
alerts to every receiver in turn, in both connection modes:

- ``sink``: ``falcohttp sink``, a Go HTTP server that reads the body and answers 200;
- ``whoexec``: the real ``whoexec consume --listen`` (intake, inbox, pipeline process
  attributing every alert and writing it to ``--output``);
- ``falcosidekick`` (with ``--falcosidekick PATH``): real falcosidekick with no output;
- with ``--candidates uvicorn,granian``: the well-kept servers issue #21 asked to weigh
  against the hand-written intake, each serving ``POST /falco`` through the same
  ``FalcoEndpoint`` into an inbox (an ASGI app; uvicorn with uvloop and httptools,
  granian's Rust HTTP server). They run without the pipeline process, which whoexec's
  figure pays for on the same 2 cores: an advantage to them.

Reported: the median alerts/s of each over the rounds, and whoexec's ratio to the sink
and to falcosidekick. After the rounds, nothing acknowledged may be missing: every alert
answered 200 must come out of the pipeline (roots are learnt, not passed on).

    python bench/intake.py [--alerts 20000] [--rounds 5] [--falcosidekick PATH]
                           [--candidates uvicorn,granian]
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]
sys.path.append(str(Path(__file__).parent))

from consumer import make_alerts  # noqa: E402

from webhook.identity import Signer  # noqa: E402

HERE = Path(__file__).parent


def build_falcohttp(out: Path) -> Path:
    binary = out / "falcohttp"
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=HERE / "falcohttp", check=True)
    return binary


def wait_for(
    pattern: bytes, log: Path, proc: subprocess.Popen[bytes], what: str
) -> re.Match[bytes]:
    deadline = time.monotonic() + 60
    while True:
        found = re.search(pattern, log.read_bytes())
        if found:
            return found
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.05)


def free_port() -> int:
    # falcosidekick cannot listen on port 0; this bench alone runs, so the race is moot
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)


def post(falcohttp: Path, url: str, alerts: Path, keepalive: bool) -> dict:
    argv = [str(falcohttp), "post", "-url", url, "-alerts", str(alerts)]
    if keepalive:
        argv.append("-keepalive")
    result = json.loads(subprocess.run(argv, check=True, capture_output=True).stdout)
    if result["errors"] or result["non_2xx"]:
        raise SystemExit(f"{url}: {result}")
    return result


def asgi_app() -> object:
    """``POST /falco`` as an ASGI app: the intake's FalcoEndpoint into an inbox in
    ``$BENCH_INBOX`` (a candidate server runs it)."""
    from webhook.attribution.inbox import InboxWriter
    from webhook.attribution.intake import FalcoEndpoint

    falco = FalcoEndpoint(InboxWriter(Path(os.environ["BENCH_INBOX"])), 8 * 1024 * 1024)
    headers = [(b"content-type", b"application/json")]

    async def app(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        status, reply = falco.accept(b"".join(chunks))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": reply})

    return app


def serve_candidate(name: str, port: int) -> None:
    if name == "uvicorn":
        import uvicorn

        print(f"candidate listening on 127.0.0.1:{port}", flush=True)
        uvicorn.run(
            asgi_app(),  # type: ignore[arg-type]
            host="127.0.0.1",
            port=port,
            loop="uvloop",
            http="httptools",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
    elif name == "granian":
        from granian import Granian
        from granian.constants import Interfaces

        print(f"candidate listening on 127.0.0.1:{port}", flush=True)
        # granian imports its target by name in a new process, where bench/ is not on
        # the path (and must not be: bench/webhook.py would hide the package)
        module = Path(os.environ["BENCH_INBOX"]).parent / "bench_intake_asgi.py"
        module.write_text("import os\nfrom pathlib import Path\n\n" + inspect.getsource(asgi_app))
        Granian(
            "bench_intake_asgi:asgi_app",
            working_dir=module.parent,
            address="127.0.0.1",
            port=port,
            interface=Interfaces.ASGI,
            factory=True,
            workers=1,
            log_level="warning",  # type: ignore[arg-type]
        ).serve()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--falcosidekick", type=Path, help="a falcosidekick binary")
    parser.add_argument("--candidates", default="", help="uvicorn,granian")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve_candidate(args.serve, args.port)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        falcohttp = build_falcohttp(tmp)
        signer = Signer(Ed25519PrivateKey.generate())
        lines = make_alerts(args.alerts, max(1, args.alerts // 10), signer)
        alerts = tmp / "alerts.jsonl"
        alerts.write_bytes(b"\n".join(lines) + b"\n")
        roots = sum(b'"whoexec_root"' in line for line in lines)
        pub = tmp / "identity.pub"
        pub.write_bytes(
            signer.public_key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        procs: list[subprocess.Popen[bytes]] = []
        urls: dict[str, str] = {}
        try:
            sink_log = tmp / "sink.log"
            procs.append(start([str(falcohttp), "sink", "-listen", "127.0.0.1:0"], sink_log))
            found = wait_for(rb"listening on ([\d.:]+)", sink_log, procs[-1], "the sink")
            urls["sink"] = f"http://{found.group(1).decode()}/"
            output = tmp / "enriched.jsonl"
            consumer_log = tmp / "consumer.log"
            procs.append(
                start(
                    [
                        sys.executable, "-m", "webhook.cli", "consume",
                        "--listen", "127.0.0.1:0", "--identity-pub", str(pub),
                        "--no-stdout", "--output", str(output),
                        "--state-dir", str(tmp / "state"), "--log-level", "warning",
                    ],
                    consumer_log,
                )
            )  # fmt: skip
            found = wait_for(rb"Listening at: http://([\d.:]+)", consumer_log, procs[-1], "whoexec")
            urls["whoexec"] = f"http://{found.group(1).decode()}/falco"
            if args.falcosidekick:
                port = free_port()
                fsk_log = tmp / "falcosidekick.log"
                env = {**os.environ, "LISTENADDRESS": "127.0.0.1", "LISTENPORT": str(port)}
                procs.append(start([str(args.falcosidekick)], fsk_log, env))
                wait_for(rb"[Ll]istening on", fsk_log, procs[-1], "falcosidekick")
                urls["falcosidekick"] = f"http://127.0.0.1:{port}/"
            for name in filter(None, args.candidates.split(",")):
                port = free_port()
                cand_log = tmp / f"{name}.log"
                env = {**os.environ, "BENCH_INBOX": str(tmp / f"inbox-{name}")}
                argv = [sys.executable, __file__, "--serve", name, "--port", str(port)]
                procs.append(start(argv, cand_log, env))
                wait_for(rb"candidate listening", cand_log, procs[-1], name)
                deadline = time.monotonic() + 30
                while True:  # listening once it accepts a connection
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
                        break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise SystemExit(f"{name} did not listen") from None
                        time.sleep(0.1)
                urls[name] = f"http://127.0.0.1:{port}/falco"
            rates: dict[str, list[float]] = {}
            acked = 0
            for _ in range(args.rounds):
                for keepalive in (False, True):
                    for name, url in urls.items():
                        result = post(falcohttp, url, alerts, keepalive)
                        mode = "keep_alive" if keepalive else "new_connection"
                        rates.setdefault(f"{name}/{mode}", []).append(result["alerts_per_s"])
                        if name == "whoexec":
                            acked += result["alerts"]
            expected = acked - roots * (acked // len(lines))
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                with output.open("rb") as out:
                    delivered = sum(1 for _ in out)
                if delivered >= expected:
                    break
                time.sleep(0.2)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
        report: dict[str, object] = {
            "alerts_per_round": len(lines),
            "rounds": args.rounds,
            "cpus": len(os.sched_getaffinity(0)),
            "median_alerts_per_s": {k: round(statistics.median(v)) for k, v in rates.items()},
            "runs": {k: [round(r) for r in v] for k, v in rates.items()},
            "whoexec_acknowledged": acked,
            "whoexec_delivered": delivered,
            "whoexec_lost": max(0, expected - delivered),
        }
        medians = report["median_alerts_per_s"]
        assert isinstance(medians, dict)
        ratios = {}
        for mode in ("new_connection", "keep_alive"):
            ours = medians[f"whoexec/{mode}"]
            ratios[f"whoexec/sink {mode}"] = round(ours / medians[f"sink/{mode}"], 2)
            for name in filter(None, args.candidates.split(",")):
                ratios[f"{name}/sink {mode}"] = round(
                    medians[f"{name}/{mode}"] / medians[f"sink/{mode}"], 2
                )
            if f"falcosidekick/{mode}" in medians:
                ratios[f"whoexec/falcosidekick {mode}"] = round(
                    ours / medians[f"falcosidekick/{mode}"], 2
                )
        report["ratios"] = ratios
        print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
