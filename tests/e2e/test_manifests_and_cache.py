"""The manifests against the real apiserver, and the pod cache against its real watch.

410 Gone is not provoked here: kube-apiserver 1.37.2 serves a pod watch from its watch
cache, which replays everything it holds even for ``resourceVersion=1`` after an etcd
compaction (tried); it answers 410 only once its window has moved on, which takes
evicted events older than 75 s. tests/admission/test_podcache.py covers 410 with a fake that
compacts at a chosen moment."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from webhook.admission import podcache

from .conftest import BIN, WHOEXEC, Cluster, Webhook
from .harness import MANIFESTS, eventually

pytestmark = pytest.mark.e2e
OVERLAYS = ["self-signed", "cert-manager", "fail-closed", "postgres"]


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    """manifests/ with the self-signed overlay's certs generated, as a user would."""
    copy = tmp_path_factory.mktemp("manifests") / "manifests"
    shutil.copytree(MANIFESTS, copy)
    certs = copy / "overlays" / "self-signed" / "certs"
    shutil.rmtree(certs, ignore_errors=True)
    subprocess.run([str(WHOEXEC), "certs", "--out", str(certs)], check=True, capture_output=True)
    return copy


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_passes_a_server_side_dry_run(cluster: Cluster, webhook, tree, overlay):
    rendered = subprocess.run(
        [str(BIN / "kubectl"), "kustomize", str(tree / "overlays" / overlay)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    objects = [doc for doc in yaml.safe_load_all(rendered) if doc]
    # cert-manager's CRDs are not installed here: name what is left out, apply the rest
    left_out = sorted(
        f"{o['kind']}/{o['metadata']['name']}"
        for o in objects
        if o["apiVersion"].startswith("cert-manager.io/")
    )
    assert left_out == (
        ["Certificate/whoexec-tls", "Issuer/whoexec-selfsigned"]
        if overlay == "cert-manager"
        else []
    )
    kept = [o for o in objects if not o["apiVersion"].startswith("cert-manager.io/")]
    done = cluster.kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": kept}),
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode()
    # the real apiserver validated the webhook configuration, CEL matchConditions included
    assert "mutatingwebhookconfiguration.admissionregistration.k8s.io/whoexec" in (
        done.stdout.decode()
    )


def test_the_pod_cache_follows_the_real_apiserver_as_the_service_account(
    cluster: Cluster, webhook: Webhook, monkeypatch
):
    # pages of 2: the relist goes through the real apiserver's limit/continue
    monkeypatch.setattr(podcache, "LIST_PAGE", 2)
    sa_kubeconfig = cluster.dir / "whoexec-webhook.kubeconfig"
    cache = podcache.PodCache(podcache.api_client(str(sa_kubeconfig)), watch_timeout=30)
    cluster.kubectl("create", "namespace", "cache", check=False)
    for n in range(3):
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": f"listed-{n}", "namespace": "cache"},
                "spec": {"containers": [{"name": "app", "image": cluster.images["with-env"]}]},
            }
        )
    cache.start()
    try:
        eventually(cache.synced.is_set)
        assert all(("cache", f"listed-{n}") in cache._pods for n in range(3))
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "watched", "namespace": "cache"},
                "spec": {"containers": [{"name": "app", "image": cluster.images["with-env"]}]},
            }
        )
        created = eventually(lambda: cache._pods.get(("cache", "watched")))
        uid = cluster.get("-n", "cache", "pod", "watched")["metadata"]["uid"]
        assert created.uid == uid
        assert created.has_env_volume, "created after install: the static env is mounted"
        cluster.kubectl("annotate", "-n", "cache", "pod/watched", "whoexec.io/inject=false")
        eventually(lambda: cache._pods[("cache", "watched")].opted_out)
        cluster.kubectl("delete", "-n", "cache", "pod/watched", "--wait=false")
        eventually(lambda: ("cache", "watched") not in cache._pods, seconds=60)
        assert cache.relists == 1, "one list, then the watch"
    finally:
        cache.stop()


def test_the_pod_cache_resumes_each_ended_watch_without_relisting(cluster: Cluster, webhook):
    # the real apiserver ends each watch after timeoutSeconds: the cache resumes it from
    # the last version it saw, and a pod created in a later watch arrives through it
    admin = cluster.admin
    cache = podcache.PodCache(podcache.api_client(str(admin)), watch_timeout=1)
    cache.start()
    try:
        eventually(cache.synced.is_set)
        eventually(lambda: cache.watches >= 3, what="three watches, one after another")
        cluster.kubectl("create", "namespace", "resume", check=False)
        cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "late", "namespace": "resume"},
                "spec": {"containers": [{"name": "app", "image": cluster.images["with-env"]}]},
            }
        )
        eventually(lambda: ("resume", "late") in cache._pods)
        assert cache.relists == 1, "every ended watch was resumed, none relisted"
    finally:
        cache.stop()


def test_a_miss_is_one_get_and_the_cache_is_bounded_on_the_real_apiserver(
    cluster: Cluster, webhook
):
    admin = cluster.admin
    pods = cluster.get("pods", "-A")["items"]
    assert len(pods) > 2
    some = pods[0]["metadata"]
    cold = podcache.PodCache(podcache.api_client(str(admin)), lookup_timeout=5)
    facts, how = cold.lookup(some["namespace"], some["name"])  # never started: a miss
    assert (how, facts.uid if facts else None) == ("fetched", some["uid"])
    assert cold.lookup(some["namespace"], some["name"])[1] == "cached"
    assert cold.lookup(some["namespace"], "no-such-pod") == (None, "not-found")
    bounded = podcache.PodCache(podcache.api_client(str(admin)), max_pods=2)
    assert bounded.relist()
    assert len(bounded) == 2
