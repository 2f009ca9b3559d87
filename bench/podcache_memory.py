"""Peak memory of the webhook's pod cache on a relist, paginated or not, on the real cluster.

Issue 10 measured 329 MiB in one gunicorn worker for 3,000 pods of 8 KB with the old,
unpaginated list: above the Deployment's 256 MiB limit. This creates that many pods on
the real single-node cluster (e2e/cluster; Pending on a node that does not exist, so the
kubelet runs none of them), then measures, in a fresh process each, the peak RSS of one
relist: pages of 500 (what the cache does) against one page for everything (as before).

    python bench/podcache_memory.py [--pods 3000] [--annotation-bytes 8000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.e2e.harness import Cluster, start_cluster, stop_cluster

MEASURE = """
import resource, sys
from webhook.admission import podcache
podcache.LIST_PAGE = int(sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
cache = podcache.PodCache(podcache.api_client(sys.argv[1]))
cache.relist()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(len(cache), before // 1024, after // 1024)
"""


def create_pods(cluster: Cluster, count: int, size: int) -> None:
    cluster.kubectl("create", "namespace", "mem", check=False)
    filler = "x" * size
    batch: list[dict] = []
    for n in range(count):
        batch.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": f"p{n:05d}",
                    "namespace": "mem",
                    "annotations": {"bench/filler": filler},
                },
                "spec": {
                    "nodeName": "nowhere",
                    "containers": [{"name": "app", "image": cluster.images["with-env"]}],
                },
            }
        )
        if len(batch) == 200 or n == count - 1:  # under the apiserver's 3 MiB request limit
            cluster.kubectl(
                "create",
                "-f",
                "-",
                stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": batch}),
                timeout=300,
            )
            batch = []


def measure(cluster: Cluster, page: int) -> tuple[int, int, int]:
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(cluster.admin), str(page)],
        capture_output=True,
        text=True,
        check=True,
        timeout=600,
    ).stdout.split()
    pods, before, after = (int(x) for x in out)
    return pods, before, after


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=3000)
    parser.add_argument("--annotation-bytes", type=int, default=8000)
    args = parser.parse_args()
    where = Path(tempfile.mkdtemp(prefix="wxm-", dir="/tmp"))
    cluster = start_cluster(where)
    try:
        create_pods(cluster, args.pods, args.annotation_bytes)
        results = {}
        for label, page in (("pages of 500", 500), ("one page (before)", 10**6)):
            runs = [measure(cluster, page) for _ in range(3)]
            pods = runs[0][0]
            peaks = sorted(after for _, _, after in runs)
            results[label] = {
                "pods": pods,
                "peak_rss_mib_median": peaks[1],
                "import_rss_mib": runs[0][1],
            }
        print(json.dumps(results, indent=2))
    finally:
        stop_cluster(where)


if __name__ == "__main__":
    main()
