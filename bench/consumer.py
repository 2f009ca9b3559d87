"""Consumer throughput and memory.

1. File: attributed alerts per second on one core, reading a file of realistic alerts
   (lineage depth 1-8, 1% session roots, 10,000 distinct processes) through the real
   pipeline (parse, learn, attribute, enrich, serialise to a null sink).
2. Memory per tracked process: tracemalloc around filling the process table.
(Over HTTP, as Falco posts, beside a Go sink and falcosidekick: ``bench/intake.py``.)

    python bench/consumer.py [--alerts 200000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# `python bench/consumer.py` puts bench/ first on sys.path, where bench/webhook.py would
# shadow the installed `webhook` package
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent]

from webhook.attribution.lineage import Attributor, ProcessRecord, ProcessTable, TokenVerifier  # noqa: E402
from webhook.attribution.pipeline import Pipeline, StreamSink, read_batch  # noqa: E402
from webhook.identity import Identity, Signer, key_ring, sign_identity  # noqa: E402

T0 = 1795341600_000_000_000
HOSTS = [f"node-{i}" for i in range(4)]


def make_alerts(n: int, processes: int, signer: Signer, seed: int = 7) -> list[bytes]:
    """Realistic alert lines: sessions of processes, 1% of alerts are session roots."""
    rng = random.Random(seed)
    sessions = max(1, n // 100)  # one root alert per session: 1% of the stream
    per_session = max(1, processes // sessions)
    lines: list[bytes] = []
    pid = 10_000
    for s in range(sessions):
        host = HOSTS[s % len(HOSTS)]
        root_pid, root_ts = pid, T0 + s * 1_000_000
        pid += 1
        token = sign_identity(
            Identity(
                f"sess-{s}",
                f"user{s % 50}@corp.example",
                "",
                ("devs",),
                "shop",
                f"web-{s % 200}",
                "app",
                T0 // 10**9,
            ),
            signer,
        )
        base = {
            "container.id": f"c{s % 200:011d}",
            "container.name": "app",
            "k8s.ns.name": "shop",
            "k8s.pod.name": f"web-{s % 200}",
            "k8s.pod.uid": None,
            "proc.aenv[WHOEXEC_IDENTITY]": None,
            "proc.env[WHOEXEC_IDENTITY]": None,
            "proc.tty": 34816,
        }
        chains: list[list[int]] = []
        for _ in range(per_session):
            depth = rng.randint(1, 8)
            parent = rng.choice(chains)[: depth - 1] if chains and depth > 1 else []
            chains.append([pid, *parent])  # ancestors nearest first, as proc.apid[N]
            pid += 1

        def alert(
            rule: str,
            p: int,
            ts: int,
            ancestors: list[int],
            args: str,
            tags: list[str],
            _base: dict = base,
            _host: str = host,
        ) -> bytes:
            fields = dict(_base)
            fields.update(
                {
                    "evt.time": ts + 5,
                    "proc.pid": p,
                    "proc.pid.ts": ts,
                    "proc.ppid": ancestors[0],
                    "proc.vpid": p % 1000 + 2,
                    "proc.name": "sh",
                    "proc.pname": "sh",
                    "proc.args": args,
                    "proc.cmdline": f"sh {args}",
                }
            )
            for i in range(8):
                fields[f"proc.apid[{i + 1}]"] = ancestors[i] if i < len(ancestors) else None
                fields[f"proc.aname[{i + 1}]"] = "sh" if i < len(ancestors) else None
            body = {
                "hostname": _host,
                "output": f"{rule} (pid={p})",
                "output_fields": dict(sorted(fields.items())),
                "priority": "Warning",
                "rule": rule,
                "source": "syscall",
                "tags": tags,
                "time": "2026-11-22T10:00:00.000000000Z",
            }
            return json.dumps(body, separators=(",", ":")).encode()

        lines.append(
            alert(
                "Whoexec exec session root",
                root_pid,
                root_ts,
                [3100],
                f"WHOEXEC_IDENTITY={token} /bin/sh",
                ["whoexec", "whoexec_root"],
            )
        )
        for _ in range(99):
            chain = rng.choice(chains)
            p = chain[0]
            ancestors = [*chain[1:], root_pid, 3100]
            lines.append(
                alert(
                    "Read sensitive file untrusted",
                    p,
                    root_ts + p,
                    ancestors,
                    "/etc/shadow",
                    ["filesystem"],
                )
            )
    return lines[:n]


def bench_file(lines: list[bytes], keys: dict, repeats: int) -> dict:
    data = b"\n".join(lines) + b"\n"
    rates = []
    stats = None
    for _ in range(repeats):
        pipeline = Pipeline(Attributor(TokenVerifier(keys)), [StreamSink(io.BytesIO())])
        started = time.perf_counter()
        read_batch(pipeline, io.BytesIO(data))
        pipeline.close()
        rates.append(len(lines) / (time.perf_counter() - started))
        stats = pipeline.stats
    assert stats is not None
    return {
        "alerts_per_s_median": round(statistics.median(rates)),
        "alerts_per_s_runs": [round(r) for r in rates],
        "attribution": {k: v for k, v in sorted(stats.items()) if k.startswith("attribution")},
    }


def bench_memory(processes: int) -> dict:
    table = ProcessTable(max_entries=processes)
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for pid in range(processes):
        table.put(
            (HOSTS[pid % 4], 100_000 + pid),
            ProcessRecord(99_000 + pid // 7, T0 + pid, f"c{pid % 200:011d}", None),
        )
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    used = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    return {"processes": processes, "bytes_per_process": round(used / processes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alerts", type=int, default=200_000)
    parser.add_argument("--processes", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core for the file figure
    signer = Signer(Ed25519PrivateKey.generate())
    keys = key_ring([signer.public_key])
    lines = make_alerts(args.alerts, args.processes, signer)
    report = {
        "alerts": len(lines),
        "file_one_core": bench_file(lines, keys, args.repeats),
        "memory": bench_memory(args.processes * 10),
    }
    report["targets"] = {
        "file_alerts_per_s>=20000": report["file_one_core"]["alerts_per_s_median"] >= 20_000,
        "bytes_per_process<=1024": report["memory"]["bytes_per_process"] <= 1024,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
