"""whoexec as the real apiserver sees it, on the real single-node cluster (e2e/cluster).

1. The time kube-apiserver spends calling the exec webhook, from its own histogram
   ``apiserver_admission_webhook_admission_duration_seconds`` (name exec.whoexec.io,
   CONNECT), p50 and p99 over the execs of a run, at 1 and at 20 concurrent `kubectl exec`s.
2. The wall time of ``kubectl exec -- true`` with the webhook and without it (the
   MutatingWebhookConfiguration removed), medians and their ratio, in one run.
3. The delay from admission (the token's ``iat``) to the session root's start, which the
   consumer's freshness window (``WHOEXEC_FRESH_SECONDS``, 30 s) must cover with margin:
   every exec prints its own start time from /proc/self/stat, and the token.

    python bench/cluster.py [--execs 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import (
    Cluster,
    install_webhook,
    start_cluster,
    stop_cluster,
    webhook_configuration,
)
from webhook.identity import verify_token
from webhook.keyfiles import load_key_ring

METRIC = "apiserver_admission_webhook_admission_duration_seconds"


def webhook_histogram(cluster: Cluster) -> dict[float, float]:
    """Cumulative bucket counts of the exec webhook's CONNECT calls."""
    text = cluster.kubectl("get", "--raw", "/metrics").stdout.decode()
    buckets: dict[float, float] = {}
    for line in text.splitlines():
        if (
            line.startswith(METRIC + "_bucket")
            and 'name="exec.whoexec.io"' in line
            and 'operation="CONNECT"' in line
        ):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            bound = float("inf") if le == "+Inf" else float(le)
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return buckets


def quantile(before: dict[float, float], after: dict[float, float], q: float) -> float:
    """The upper bound of the bucket holding the q-quantile of the calls in between."""
    bounds = sorted(after)
    counts = [after[b] - before.get(b, 0.0) for b in bounds]
    total = counts[-1] if counts else 0
    if not total:
        return float("nan")
    for bound, count in zip(bounds, counts, strict=True):
        if count >= q * total:
            return bound
    return bounds[-1]


def exec_true(cluster: Cluster, user: Path) -> float:
    started = time.perf_counter()
    cluster.kubectl("exec", "-n", "bench", "target", "--", "true", user=user)
    return time.perf_counter() - started


def root_delay(cluster: Cluster, user: Path, keys: dict, boot_ns: int, tick_ns: int) -> float:
    """Seconds from the token's iat to the session root's start (its /proc/self/stat)."""
    done = cluster.kubectl(
        "exec",
        "-n",
        "bench",
        "target",
        "--",
        "sh",
        "-c",
        'cut -d" " -f22 /proc/$$/stat; echo "$WHOEXEC_IDENTITY"',
        user=user,
    )
    ticks, token = done.stdout.decode().split()
    identity = verify_token(token, keys, now=int(time.time()))
    start_ns = boot_ns + int(ticks) * tick_ns
    return start_ns / 1e9 - identity.issued_at


def run(cluster: Cluster, executions: int) -> dict[str, object]:
    hook = install_webhook(cluster)
    try:
        cluster.kubectl("create", "namespace", "bench", check=False)
        cluster.pod("bench", "target", cluster.images["with-env"])
        user = cluster.user("bench-user", "devs")
        keys = load_key_ring([hook.identity_pub])
        boot_ns = (
            int(
                next(
                    line.split()[1]
                    for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime")
                )
            )
            * 10**9
        )
        tick_ns = 10**9 // os.sysconf("SC_CLK_TCK")
        results: dict[str, object] = {}
        for concurrency in (1, 20):
            before = webhook_histogram(cluster)
            with ThreadPoolExecutor(concurrency) as pool:
                delays = list(
                    pool.map(
                        lambda _: root_delay(cluster, user, keys, boot_ns, tick_ns),
                        range(executions),
                    )
                )
            after = webhook_histogram(cluster)
            results[f"c{concurrency}"] = {
                "webhook_p50_s": quantile(before, after, 0.5),
                "webhook_p99_s": quantile(before, after, 0.99),
                "calls": after.get(float("inf"), 0) - before.get(float("inf"), 0),
                "root_delay_median_s": statistics.median(delays),
                "root_delay_min_s": min(delays),
                "root_delay_max_s": max(delays),
            }
        # with and without the webhook, interleaved in one run
        with_hook, without = [], []
        config = cluster.get("mutatingwebhookconfiguration", "whoexec")
        ca_bundle = config["webhooks"][0]["clientConfig"]["caBundle"]
        for _ in range(max(executions // 4, 5)):
            with_hook.append(exec_true(cluster, user))
            cluster.kubectl("delete", "mutatingwebhookconfiguration", "whoexec")
            time.sleep(1)  # the apiserver's informer drops the configuration
            without.append(exec_true(cluster, user))
            cluster.apply(webhook_configuration(hook.port, ca_bundle))
            time.sleep(1)
        results["exec_true_with_webhook_median_s"] = statistics.median(with_hook)
        results["exec_true_without_webhook_median_s"] = statistics.median(without)
        results["ratio"] = statistics.median(with_hook) / statistics.median(without)
        return results
    finally:
        hook.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--execs", type=int, default=40)
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="wxb-", dir="/tmp"))  # short: containerd sockets
    cluster = start_cluster(where)
    try:
        print(json.dumps(run(cluster, args.execs), indent=2))
    finally:
        stop_cluster(where)


if __name__ == "__main__":
    main()
