"""The pod cache against a fake apiserver, for what the real one will not do on request:
outages, hangs, and a compaction or a bookmark at a chosen moment. Listing, watching,
resuming, 410 Gone and look-ups are proven on the real apiserver in
tests/e2e/test_manifests_and_cache.py."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from tests.fake_apiserver import FakeApiserver, make_pod
from webhook.admission.podcache import PodCache, api_client


def _relists(reason: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("whoexec_pod_cache_relists_total", {"reason": reason}) or 0.0


@pytest.fixture
def apiserver() -> Iterator[FakeApiserver]:
    server = FakeApiserver()
    server.add(make_pod("shop", "web-0", "uid-web-0", 0))
    server.add(
        make_pod("shop", "distroless-0", "uid-dl-0", 0, annotations={"whoexec.io/inject": "false"})
    )
    yield server
    server.close()


@pytest.fixture
def cache(apiserver) -> Iterator[PodCache]:
    pods = PodCache(
        api_client(apiserver.url), lookup_timeout=0.3, watch_timeout=30, backoff=(0.05, 0.2)
    )
    pods.start()
    assert pods.synced.wait(10), "the cache never synced"
    apiserver.wait_for(lambda: apiserver.open_watches == 1, what="the cache's watch")
    yield pods
    pods.stop()


def test_a_compaction_while_disconnected_answers_410_and_the_cache_relists(
    cache, apiserver, caplog
):
    caplog.set_level(logging.INFO, "whoexec.podcache")
    gone, error = _relists("gone"), _relists("error")
    version = apiserver.watches[-1]
    apiserver.before_next_watch(lambda: apiserver.add(make_pod("shop", "missed", "uid-m", 0)))
    apiserver.before_next_watch(apiserver.compact)
    apiserver.end_watches()
    # the cache's own count: the fake counts a list before its page is even sent
    apiserver.wait_for(lambda: cache.relists == 2, what="the relist")
    assert apiserver.watches[1] == version, "it resumed from its version"
    assert apiserver.expired == [version], "which was too old: 410 Gone"
    assert apiserver.lists == 2
    apiserver.wait_for(lambda: ("shop", "missed") in cache._pods, what="the relisted pod")
    apiserver.wait_for(lambda: len(apiserver.watches) == 3, what="the new watch")
    assert apiserver.watches[2] == str(apiserver.rv), "watching again from the new list"
    # at once, counted and said as an expiry, not as a failure with a back-off
    assert (_relists("gone"), _relists("error")) == (gone + 1, error)
    assert "pod watch expired (410 Gone): relisting" in caplog.messages


def test_a_watch_that_ends_resumes_from_its_version_and_misses_nothing(cache, apiserver):
    apiserver.add(make_pod("shop", "web-1", "uid-web-1", 0))
    apiserver.wait_for(lambda: ("shop", "web-1") in cache._pods, what="the event")
    version = str(apiserver.rv)
    # changed while the cache was between two watches: replayed by the resumed one
    apiserver.before_next_watch(lambda: apiserver.delete("shop", "web-1"))
    apiserver.end_watches()
    apiserver.wait_for(lambda: ("shop", "web-1") not in cache._pods, what="the deletion")
    assert apiserver.watches[1] == version, "from the last event it applied"
    assert apiserver.lists == 1 and cache.relists == 1, "no relist"


def test_a_bookmark_moves_the_version_a_watch_resumes_from(cache, apiserver):
    # other resources changed: the resourceVersion is etcd's, shared by every kind
    apiserver.rv += 50
    apiserver.bookmark()
    apiserver.end_watches()
    apiserver.wait_for(lambda: len(apiserver.watches) == 2, what="the resumed watch")
    assert apiserver.watches[1] == str(apiserver.rv)
    assert apiserver.lists == 1


def test_an_outage_is_retried_with_backoff_then_relisted(cache, apiserver):
    apiserver.down = True
    apiserver.end_watches()
    apiserver.wait_for(lambda: apiserver.refused >= 3, what="retries during the outage")
    assert cache.ready() is None, "a synced cache keeps answering from what it has"
    apiserver.add(make_pod("shop", "during-outage", "uid-during", 0))
    apiserver.down = False
    apiserver.wait_for(lambda: ("shop", "during-outage") in cache._pods, what="the relist")
    assert apiserver.lists == 2


def during_an_outage(apiserver: FakeApiserver, change) -> None:
    apiserver.down = True
    apiserver.end_watches()
    apiserver.wait_for(lambda: apiserver.refused >= 2, what="retries during the outage")
    change()
    apiserver.down = False


def during_a_compaction(apiserver: FakeApiserver, change) -> None:
    # changed and compacted while the cache was between two watches: its resumed watch
    # gets 410 Gone, and the deletion reaches it only through the relist
    apiserver.before_next_watch(change)
    apiserver.before_next_watch(apiserver.compact)
    apiserver.end_watches()


@pytest.mark.parametrize("gap", [during_an_outage, during_a_compaction], ids=["outage", "410"])
def test_a_pod_deleted_while_the_cache_was_not_watching_is_gone_after_the_relist(apiserver, gap):
    # room for three pods: a relist that kept what it had would go past it
    cache = PodCache(
        api_client(apiserver.url),
        max_pods=3,
        lookup_timeout=10.0,  # the look-up below must be answered, even on a loaded machine
        watch_timeout=30,
        backoff=(0.05, 0.2),
    )
    cache.start()
    try:
        assert cache.synced.wait(10), "the cache never synced"
        assert set(cache._pods) == {("shop", "web-0"), ("shop", "distroless-0")}
        # synced comes before the watch is open: a watch opened just after the gap began
        # would outlive it (30 s) and the cache would never be refused
        apiserver.wait_for(lambda: apiserver.open_watches == 1, what="the cache's watch")

        def change() -> None:
            apiserver.delete("shop", "web-0")
            apiserver.add(make_pod("shop", "web-0-new", "uid-new", 0))
            apiserver.add(make_pod("shop", "worker-0", "uid-worker", 0))

        gap(apiserver, change)
        apiserver.wait_for(lambda: cache.relists == 2, what="the relist")
        assert set(cache._pods) == {
            ("shop", "distroless-0"),
            ("shop", "web-0-new"),
            ("shop", "worker-0"),
        }, "exactly what the apiserver lists: the deleted pod's UID and opt-out are gone"
        assert len(cache) == 3 <= cache.max_pods
        # and an exec into the deleted pod's name asks the apiserver, which says it is gone
        assert cache.lookup("shop", "web-0") == (None, "not-found")
    finally:
        cache.stop()


def test_the_cache_holds_at_most_max_pods_dropping_the_pod_it_has_known_longest(apiserver):
    cache = PodCache(api_client(apiserver.url), max_pods=2, watch_timeout=30, backoff=(0.05, 0.2))
    cache.start()
    try:
        assert cache.synced.wait(10), "the cache never synced"
        apiserver.wait_for(lambda: apiserver.open_watches == 1, what="the cache's watch")
        apiserver.add(make_pod("shop", "web-1", "uid-web-1", 0))
        apiserver.wait_for(lambda: ("shop", "web-1") in cache._pods, what="the event")
        # the relist put distroless-0 first (the list is in UID order): it went first
        assert set(cache._pods) == {("shop", "web-0"), ("shop", "web-1")}
    finally:
        cache.stop()


def test_a_hanging_apiserver_costs_the_lookup_timeout_not_the_hang(cache, apiserver):
    apiserver.hang_gets = 60.0
    facts, how = cache.lookup("shop", "slow-0")
    assert (facts, how) == (None, "timeout")
    # the answer came while the apiserver was still hanging: the look-up did not wait
    assert apiserver.gets_answered == 0
    assert apiserver.gets == ["shop/slow-0"], "exactly one attempt, no retries"


def test_unsynced_cache_is_not_ready(apiserver):
    apiserver.down = True
    pods = PodCache(api_client(apiserver.url), backoff=(0.05, 0.1))
    pods.start()
    try:
        apiserver.wait_for(lambda: apiserver.refused >= 2, what="the failed lists")
        assert pods.ready() == "the pod cache has not synced yet"
        assert not pods.synced.is_set()
    finally:
        pods.stop()


# --- the webhook with a pod cache ---------------------------------------------------------


@pytest.fixture
def pod_aware_client(cache, signer, trusted):
    from tests.conftest import NOW
    from webhook.admission.decide import AdmissionPolicy
    from webhook.admission.server import WebhookState, create_app

    state = WebhookState(
        AdmissionPolicy(env_trusted_namespaces=("*",)),
        signer,
        trusted,
        1 << 20,
        clock=lambda: NOW,
        pods=cache,
    )
    return create_app(state).test_client()


def exec_review(pod: str) -> dict:
    from tests.conftest import load_json

    review = load_json("admission/exec_interactive_shell.json")
    review["request"]["name"] = pod
    return review


def answer(client, pod: str) -> dict:
    reply = client.post("/mutate", json=exec_review(pod))
    assert reply.status_code == 200
    return reply.get_json()["response"]


def command_of(response: dict, pod: str) -> list[str]:
    import base64
    import json

    import jsonpatch

    ops = json.loads(base64.b64decode(response["patch"]))
    return jsonpatch.apply_patch(exec_review(pod)["request"]["object"], ops)["command"]


def test_exec_into_a_cached_pod_carries_its_uid(pod_aware_client, trusted):
    from tests.conftest import NOW
    from webhook.identity import verify_token

    response = answer(pod_aware_client, "web-0")
    assert response["auditAnnotations"]["pod-lookup"] == "cached"
    token = command_of(response, "web-0")[1].split("=", 1)[1]
    assert verify_token(token, trusted, now=NOW).pod_uid == "uid-web-0"


def test_exec_into_a_pod_with_the_static_env_uses_it(pod_aware_client, apiserver):
    apiserver.add(
        make_pod(
            "shop",
            "distroless-1",
            "uid-dl-1",
            0,
            image="gcr.io/distroless/static:nonroot",
            volumes=[{"name": "whoexec-env", "emptyDir": {}}],
        )
    )
    response = answer(pod_aware_client, "distroless-1")
    assert command_of(response, "distroless-1")[0] == "/.whoexec/env"


def test_exec_into_an_opted_out_pod_is_allowed_with_a_warning(pod_aware_client):
    response = answer(pod_aware_client, "distroless-0")
    assert response["allowed"] is True and "patch" not in response
    assert response["auditAnnotations"]["outcome"] == "skipped-pod-opt-out"
    assert response["warnings"]


def test_cache_miss_on_a_slow_apiserver_proceeds_without_pod_data(pod_aware_client, apiserver):
    apiserver.hang_gets = 60.0
    response = answer(pod_aware_client, "brand-new")
    assert apiserver.gets_answered == 0, "admitted while the apiserver still hangs"
    assert response["auditAnnotations"]["pod-lookup"] == "timeout"
    assert response["auditAnnotations"]["outcome"] == "injected"
    assert command_of(response, "brand-new")[0] == "/usr/bin/env"


def test_readyz_waits_for_the_pod_cache(apiserver, signer, trusted):
    from webhook.admission.decide import AdmissionPolicy
    from webhook.admission.server import WebhookState, create_app

    pods = PodCache(api_client(apiserver.url), watch_timeout=5)
    client = create_app(
        WebhookState(
            AdmissionPolicy(env_trusted_namespaces=("*",)), signer, trusted, 1024, pods=pods
        )
    ).test_client()
    assert client.get("/readyz").status_code == 503
    pods.start()
    try:
        assert pods.synced.wait(10)
        assert client.get("/readyz").status_code == 200
    finally:
        pods.stop()


@pytest.mark.slow
def test_real_serve_with_kube_starts_the_cache_in_every_worker(apiserver, tmp_path):
    """`whoexec serve --kube URL`: the cache is started after gunicorn forks its workers,
    and each worker's watch gets every event (watchers do not share them)."""
    import base64
    import http.client
    import json
    import os
    import ssl
    import time

    from click.testing import CliRunner

    from tests.conftest import http_ok
    from tests.servers import ServerProcess, serve_argv
    from webhook.cli import main
    from webhook.identity import verify_token
    from webhook.keyfiles import load_key_ring

    certs = tmp_path / "certs"
    assert CliRunner().invoke(main, ["certs", "--out", str(certs)]).exit_code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    server = ServerProcess(
        serve_argv(
            certs,
            "--workers",
            "2",
            "--kube",
            apiserver.url,
            "--env-trusted-namespace",
            "*",
        ),
        tmp_path / "serve.log",
        env,
    )
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))

    def connect() -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection("localhost", server.port, context=context, timeout=5)

    def mutate(pod: str) -> dict:
        conn = connect()
        try:
            conn.request(
                "POST",
                "/mutate",
                body=json.dumps(exec_review(pod)).encode(),
                headers={"Content-Type": "application/json"},
            )
            reply = conn.getresponse()
            assert reply.status == 200
            return json.loads(reply.read())["response"]
        finally:
            conn.close()

    try:
        server.wait_until(lambda: http_ok(connect, "/readyz"), "whoexec serve --kube")
        apiserver.wait_for(lambda: apiserver.open_watches == 2, what="a watch per worker")
        apiserver.add(make_pod("shop", "web-2", "uid-web-2", 0))  # after both synced
        version = str(apiserver.rv)
        # what the fake has sent says nothing of what a worker has applied: each worker
        # resumes an ended watch from the last event it applied, so both asking for
        # web-2's version is both caches holding it
        apiserver.end_watches()
        apiserver.wait_for(
            lambda: apiserver.watches[-2:] == [version] * 2 and apiserver.open_watches == 2,
            what="both workers' watches resumed after the event",
        )
        ring = load_key_ring([certs / "identity.pub"])
        for _ in range(6):  # new connections: both workers answer some
            response = mutate("web-2")
            assert response["auditAnnotations"]["pod-lookup"] == "cached"
            ops = json.loads(base64.b64decode(response["patch"]))
            token = ops[0]["value"][1].split("=", 1)[1]
            assert verify_token(token, ring, now=int(time.time())).pod_uid == "uid-web-2"
        assert apiserver.gets == [], "the watch event reached both workers"
    finally:
        server.stop()


def _named(exc: BaseException) -> str:
    from webhook.admission.podcache import _classify

    return _classify(exc)


@pytest.mark.parametrize(
    ("failure", "name"),
    [
        ("ApiException(status=404)", "not-found"),
        ("ApiException(status=410)", "gone"),
        ("ApiException(status=403)", "http-403"),
        ("ApiException(status=500)", "http-500"),
        ("WatchExpired('too old')", "gone"),
        ("WatchFailed('500 boom')", "watch-error"),
        ("ReadTimeoutError(None, '/api', 'read timed out')", "timeout"),
        ("MaxRetryError(None, '/api', ConnectTimeoutError('connect timed out'))", "timeout"),
        ("MaxRetryError(None, '/api', NewConnectionError(None, 'refused'))", "unreachable"),
        ("ProtocolError('connection reset')", "unreachable"),
        ("ConnectionResetError()", "unreachable"),
        ("OSError('no route')", "unreachable"),
        ("ValueError('not JSON')", "error"),
        ("KeyError('metadata')", "error"),
    ],
)
def test_a_failed_look_up_or_watch_is_named_by_its_cause(failure, name):
    """The name is the look-up's outcome (``whoexec_pod_lookups{result}``, the admission's
    log) and what decides between a relist now (410) and one after a back-off."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import (
        ConnectTimeoutError,
        MaxRetryError,
        NewConnectionError,
        ProtocolError,
        ReadTimeoutError,
    )

    from webhook.admission.podcache import WatchExpired, WatchFailed

    names = {
        "ApiException": ApiException,
        "ConnectTimeoutError": ConnectTimeoutError,
        "MaxRetryError": MaxRetryError,
        "NewConnectionError": NewConnectionError,
        "ProtocolError": ProtocolError,
        "ReadTimeoutError": ReadTimeoutError,
        "WatchExpired": WatchExpired,
        "WatchFailed": WatchFailed,
    }
    assert _named(eval(failure, names)) == name  # noqa: S307 - the table above


def _lookups(result: str) -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("whoexec_pod_lookups_total", {"result": result}) or 0.0


def test_each_look_up_is_counted_by_how_it_was_answered(cache, apiserver):
    before = {r: _lookups(r) for r in ("cached", "fetched", "not-found", "timeout")}
    assert cache.lookup("shop", "web-0")[1] == "cached"
    # a pod the watch has not delivered yet: the look-up asks the apiserver
    apiserver.pods[("shop", "late-0")] = make_pod("shop", "late-0", "uid-late-0", 0)
    assert cache.lookup("shop", "late-0")[1] == "fetched"
    assert cache.lookup("shop", "late-0")[1] == "cached", "a fetched pod is cached"
    assert cache.lookup("shop", "nobody")[1] == "not-found"
    apiserver.hang_gets = 60.0
    assert cache.lookup("shop", "slow-0")[1] == "timeout"
    after = {r: _lookups(r) for r in before}
    assert {r: after[r] - before[r] for r in before} == {
        "cached": 2,
        "fetched": 1,
        "not-found": 1,
        "timeout": 1,
    }


def test_a_pod_that_opts_out_while_watched_is_seen_opted_out(cache, apiserver):
    assert cache._pods[("shop", "web-0")].opted_out is False
    changed = make_pod("shop", "web-0", "uid-web-0", 0, annotations={"whoexec.io/inject": "false"})
    apiserver.add(changed)  # MODIFIED: the same pod, annotated
    apiserver.wait_for(lambda: cache._pods[("shop", "web-0")].opted_out, what="the MODIFIED event")
    assert apiserver.lists == 1, "from the watch, not a relist"


def test_an_outage_is_retried_after_a_delay_that_doubles_up_to_the_cap(apiserver, caplog):
    cache = PodCache(api_client(apiserver.url), watch_timeout=30, backoff=(0.1, 0.4))
    cache.start()
    try:
        assert cache.synced.wait(10), "the cache never synced"
        apiserver.wait_for(lambda: apiserver.open_watches == 1, what="the cache's watch")
        error = _relists("error")
        apiserver.down = True
        apiserver.end_watches()
        apiserver.wait_for(lambda: apiserver.refused >= 5, what="retries during the outage")
    finally:
        cache.stop()
    delays = [
        m.rsplit(" ", 1)[1] for m in caplog.messages if m.startswith("pod list/watch failed (")
    ]
    assert delays[:4] == ["0.1s", "0.2s", "0.4s", "0.4s"]
    assert _relists("error") >= error + 4
    assert all("failed (http-503)" in m for m in caplog.messages if "list/watch failed" in m)


def test_a_relist_reads_every_page_and_keeps_at_most_max_pods(apiserver, monkeypatch):
    import webhook.admission.podcache as podcache

    monkeypatch.setattr(podcache, "LIST_PAGE", 2)
    for n in range(3):
        apiserver.add(make_pod("shop", f"batch-{n}", f"uid-batch-{n}", 0))
    for max_pods, kept in ((5, 5), (4, 4)):
        cache = PodCache(api_client(apiserver.url), max_pods=max_pods, watch_timeout=30)
        lists = apiserver.lists
        version = cache.relist()
        assert apiserver.lists - lists == 3, "five pods in pages of two"
        assert version == str(apiserver.rv)
        assert len(cache) == kept


# --- what the watch's events do to the cache, event by event ----------------------------


def unconnected_cache(max_pods: int = 200_000) -> PodCache:
    """A cache whose events the test hands it: nothing is ever asked of an apiserver."""
    return PodCache(api_client("http://127.0.0.1:9"), max_pods=max_pods)


def event(kind: str, name: str, version: str | None = None) -> dict:
    pod = make_pod("shop", name, f"uid-{name}", 0)
    if version is None:
        del pod["metadata"]["resourceVersion"]
    else:
        pod["metadata"]["resourceVersion"] = version
    return {"type": kind, "object": pod}


def _cached() -> float | None:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("whoexec_pod_cache_pods")


def test_an_event_without_a_resource_version_leaves_the_version_a_watch_resumes_from():
    cache = unconnected_cache()
    assert cache._apply(event("ADDED", "web-0", "42"), "41") == "42"
    assert cache._apply(event("MODIFIED", "web-0"), "42") == "42"
    assert cache._apply({"type": "BOOKMARK", "object": {"metadata": {}}}, "43") == "43"


def test_a_pod_just_modified_is_kept_over_one_the_cache_has_not_heard_of_since():
    cache = unconnected_cache(max_pods=2)
    for kind, name in (("ADDED", "a"), ("ADDED", "b"), ("MODIFIED", "a"), ("ADDED", "c")):
        cache._apply(event(kind, name, "1"), "1")
    assert sorted(name for _, name in cache._pods) == ["a", "c"]


def test_deleting_a_pod_the_cache_never_held_changes_nothing_and_the_gauge_follows():
    cache = unconnected_cache()
    cache._apply(event("ADDED", "a", "1"), "1")
    cache._apply(event("ADDED", "b", "2"), "2")
    assert _cached() == 2
    assert cache._apply(event("DELETED", "never-seen", "3"), "2") == "3"
    assert len(cache) == 2
    cache._apply(event("DELETED", "a", "4"), "3")
    assert (sorted(name for _, name in cache._pods), _cached()) == (["b"], 1)


def test_a_410_in_the_watch_means_relist_and_any_other_error_event_says_why(caplog):
    from webhook.admission.podcache import WatchExpired, WatchFailed

    cache = unconnected_cache()
    with pytest.raises(WatchExpired):
        cache._apply({"type": "ERROR", "object": {"code": 410, "message": "too old"}}, "1")
    hostile = "quota\x1b[2J" + "x" * 300
    with pytest.raises(WatchFailed) as failed:
        cache._apply({"type": "ERROR", "object": {"code": 500, "message": hostile}}, "1")
    assert str(failed.value) == f"an ERROR event, code 500: {hostile[:200]}"

    # the cache's loop logs the apiserver's words, escaped and capped, and relists
    watches = []

    def watch_once(version: str) -> str:
        watches.append(version)
        if len(watches) == 1:
            raise failed.value
        cache._stop.set()
        return version

    cache.backoff = (0.01, 0.01)
    cache.relist = lambda: "1"  # type: ignore[method-assign]
    cache.watch = watch_once  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger="whoexec.podcache"):
        cache.run()
    (said,) = [m for m in caplog.messages if m.startswith("pod list/watch failed")]
    assert said.startswith("pod list/watch failed (watch-error: an ERROR event, code 500: quota")
    assert "\x1b" not in said and len(said) < 400


def test_a_failed_look_up_is_logged_with_the_pod_and_why_and_a_pod_not_found_is_not(
    cache, apiserver, caplog
):
    with caplog.at_level(logging.WARNING, logger="whoexec.podcache"):
        assert cache.lookup("shop", "nobody")[1] == "not-found"
        assert not [m for m in caplog.messages if m.startswith("pod look-up")]
        apiserver.hang_gets = 60.0
        assert cache.lookup("shop\x1b", "slow-0")[1] == "timeout"
    assert [m for m in caplog.messages if m.startswith("pod look-up")] == [
        "pod look-up shop\\x1b/slow-0: timeout"
    ]


def test_a_cache_stopped_before_it_started_stops_quietly():
    cache = unconnected_cache()
    cache.stop()  # a worker that exits before its cache thread started
    assert cache._thread is None and cache._stop.is_set()


# --- the watch stream as the wire may cut it, and the bounds of each request -------------


def test_a_pod_event_larger_than_one_read_is_put_together_before_it_is_applied(cache, apiserver):
    # a Pod may weigh up to etcd's 1.5 MiB; urllib3 hands a chunk over in reads of 64 KiB
    pod = make_pod("shop", "big-0", "uid-big-0", 0, annotations={"note": "x" * 200_000})
    apiserver.add(pod)
    apiserver.add(make_pod("shop", "after-big", "uid-after-big", 0))
    apiserver.wait_for(lambda: ("shop", "after-big") in cache._pods, what="the next event")
    assert ("shop", "big-0") in cache._pods
    assert apiserver.lists == 1 and cache.relists == 1, "read from the watch, no relist"


def test_events_that_arrive_in_one_chunk_are_each_applied_in_order(cache, apiserver):
    apiserver.rechunk = True
    with apiserver._changed:  # three changes at once: one chunk of three lines
        for n in range(3):
            apiserver.add(make_pod("shop", f"burst-{n}", f"uid-burst-{n}", 0))
        apiserver.delete("shop", "burst-1")
    apiserver.wait_for(lambda: ("shop", "burst-2") in cache._pods, what="the burst")
    apiserver.wait_for(lambda: ("shop", "burst-1") not in cache._pods, what="the deletion")
    assert ("shop", "burst-0") in cache._pods
    apiserver.end_watches()
    apiserver.wait_for(lambda: len(apiserver.watches) == 2, what="the resumed watch")
    assert apiserver.watches[1] == str(apiserver.rv), "resumed after the last of them"
    assert apiserver.lists == 1


def test_each_watch_asks_the_apiserver_to_end_it_after_the_watch_timeout(cache, apiserver):
    """A watch whose connection died silently (a NAT or a load balancer dropped it) is
    replaced when the apiserver was due to end it, not never."""
    apiserver.end_watches()
    apiserver.wait_for(lambda: len(apiserver.watches) == 2, what="the resumed watch")
    assert apiserver.watch_timeouts == ["30", "30"]
    # counted once its answer has come: the fake has seen the request before that
    apiserver.wait_for(lambda: cache.watches == 2, what="each watch request counted once")


def test_no_request_of_the_cache_can_wait_unbounded_for_the_apiserver(
    cache, apiserver, monkeypatch
):
    """(connect, read) bounds on every call: a list that stalls is cut after a minute, a
    watch half a minute after the apiserver should have ended it, a look-up at once."""
    asked: list[tuple[str, object]] = []
    for method in ("list_pod_for_all_namespaces", "read_namespaced_pod"):
        real = getattr(cache.core, method)

        def spy(*args, _real=real, _method=method, **kwargs):
            called = "watch" if kwargs.get("watch") else _method
            asked.append((called, kwargs["_request_timeout"]))
            return _real(*args, **kwargs)

        monkeypatch.setattr(cache.core, method, spy)
    cache.relist()
    cache.lookup("shop", "not-cached-0")
    apiserver.end_watches()
    apiserver.wait_for(lambda: len(apiserver.watches) == 2, what="the resumed watch")

    bounds = dict(asked)
    assert set(bounds) == {"list_pod_for_all_namespaces", "read_namespaced_pod", "watch"}
    list_connect, list_read = bounds["list_pod_for_all_namespaces"]
    watch_connect, watch_read = bounds["watch"]
    assert list_connect <= 5 and watch_connect <= 5
    assert list_read <= 60
    assert cache.watch_timeout < watch_read <= cache.watch_timeout + 30
    assert bounds["read_namespaced_pod"] == cache.lookup_timeout == 0.3


def test_an_apiserver_down_at_start_is_retried_after_the_short_delay_not_the_cap(apiserver):
    """The first relist of a worker that starts during an apiserver restart (or before
    its network is up) is retried at once, as after a watch that failed."""
    cache = PodCache(api_client(apiserver.url), watch_timeout=30, backoff=(0.05, 600.0))
    apiserver.down = True
    cache.start()
    try:
        apiserver.wait_for(lambda: apiserver.refused >= 1, what="the refused first list")
        apiserver.down = False
        assert cache.synced.wait(20), "the cache waited the cap, not the first delay"
        # its watch open first: one that arrives after end_watches() would not be ended
        apiserver.wait_for(lambda: apiserver.open_watches == 1, what="the cache's watch")
        apiserver.down = True
        apiserver.end_watches()
        apiserver.wait_for(lambda: apiserver.refused >= 2, what="the refused relist")
        apiserver.down = False
        apiserver.wait_for(lambda: cache.relists == 2, seconds=20, what="the retried relist")
    finally:
        cache.stop()


def test_the_cache_runs_in_a_named_daemon_thread_that_stop_ends(cache, apiserver):
    """A daemon: a gunicorn worker that exits does not wait on a watch. Stopped, the
    thread ends though the watch it was reading had nothing to send."""
    thread = cache._thread
    assert thread is not None
    assert (thread.name, thread.daemon) == ("whoexec-pod-cache", True)
    apiserver.wait_for(lambda: cache._response is not None, what="the watch's response")
    cache.stop()
    assert not thread.is_alive()
    assert apiserver.open_watches in (0, 1)  # the fake notices the close at its next write


# --- api_client: how the cache reaches the apiserver --------------------------------------


def test_a_kubeconfig_names_the_apiserver_and_the_credentials(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: c\n"
        "clusters: [{name: k, cluster: {server: 'https://10.1.2.3:6443',"
        " insecure-skip-tls-verify: true}}]\n"
        "users: [{name: u, user: {token: t0ken}}]\n"
        "contexts: [{name: c, context: {cluster: k, user: u}}]\n"
    )
    api = api_client(str(kubeconfig))
    assert api.configuration.host == "https://10.1.2.3:6443"
    assert api.configuration.auth_settings()["BearerToken"]["value"] == "Bearer t0ken"
    assert api.configuration.retries is False


def test_in_cluster_reads_the_service_account_that_kubelet_mounts(tmp_path, monkeypatch):
    from kubernetes.config import incluster_config

    (tmp_path / "token").write_text("sa-t0ken")
    (tmp_path / "ca.crt").write_text("a PEM bundle\n")  # read by urllib3 only on a request
    monkeypatch.setattr(incluster_config, "SERVICE_TOKEN_FILENAME", str(tmp_path / "token"))
    monkeypatch.setattr(incluster_config, "SERVICE_CERT_FILENAME", str(tmp_path / "ca.crt"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    api = api_client("in-cluster")

    assert api.configuration.host == "https://10.96.0.1:443"
    assert api.configuration.auth_settings()["BearerToken"]["value"].lower() == "bearer sa-t0ken"
    assert api.configuration.ssl_ca_cert == str(tmp_path / "ca.crt")


@pytest.mark.parametrize("kube", ["in-cluster", "/nonexistent/kubeconfig"])
def test_a_client_that_cannot_be_configured_is_an_error_naming_where_it_looked(kube, monkeypatch):
    from webhook.errors import ConfigError

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match=f"cannot configure the Kubernetes client from '{kube}'"):
        api_client(kube)
