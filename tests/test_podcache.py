"""The pod cache, through the official kubernetes client, against a faithful fake apiserver."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from webhook.podcache import PodCache, api_client

from .fake_apiserver import FakeApiserver, make_pod


@pytest.fixture
def apiserver() -> Iterator[FakeApiserver]:
    server = FakeApiserver()
    server.add(make_pod("shop", "web-0", "uid-web-0", 0), announce=False)
    server.add(
        make_pod("shop", "distroless-0", "uid-dl-0", 0, annotations={"whoexec.io/inject": "false"}),
        announce=False,
    )
    yield server
    server.close()


@pytest.fixture
def cache(apiserver) -> Iterator[PodCache]:
    pods = PodCache(
        api_client(apiserver.url, 1.0), lookup_timeout=0.3, watch_timeout=5, backoff=(0.05, 0.2)
    )
    pods.start()
    assert pods.synced.wait(10), "the cache never synced"
    yield pods
    apiserver.events.put(None)  # end the open watch, as a server shutting down would
    pods.stop()


def eventually(check, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_initial_list_fills_the_cache_and_marks_it_synced(cache, apiserver):
    facts, how = cache.lookup("shop", "web-0")
    assert (facts.uid, how) == ("uid-web-0", "cached")
    assert cache.lookup("shop", "distroless-0")[0].opted_out
    assert cache.ready() is None
    assert apiserver.lists == 1
    eventually(lambda: apiserver.watches)
    assert apiserver.watches[0] == str(apiserver.rv), "the watch starts at the list's version"


def test_watch_events_add_update_and_delete(cache, apiserver):
    apiserver.add(make_pod("shop", "web-1", "uid-web-1", 0))
    eventually(lambda: ("shop", "web-1") in cache._pods)
    apiserver.add(
        make_pod("shop", "web-1", "uid-web-1", 0, volumes=[{"name": "whoexec-env", "emptyDir": {}}])
    )
    eventually(lambda: cache._pods[("shop", "web-1")].has_env_volume)
    apiserver.delete("shop", "web-1")
    eventually(lambda: ("shop", "web-1") not in cache._pods)
    assert apiserver.gets == [], "nothing needed a GET"


def test_410_gone_leads_to_a_relist(cache, apiserver):
    apiserver.add(make_pod("shop", "missed", "uid-missed", 0), announce=False)  # not watched
    apiserver.expire_watch()
    eventually(lambda: apiserver.lists == 2)
    eventually(lambda: ("shop", "missed") in cache._pods)
    assert cache.relists == 2


def test_a_disconnect_resumes_and_an_outage_relists_with_backoff(cache, apiserver):
    apiserver.events.put(None)  # the server ends the watch
    eventually(lambda: len(apiserver.watches) >= 2)
    apiserver.down = True
    apiserver.events.put(None)
    time.sleep(0.5)
    apiserver.down = False
    apiserver.add(make_pod("shop", "after-outage", "uid-after", 0), announce=False)
    eventually(lambda: ("shop", "after-outage") in cache._pods)


def test_cache_miss_does_one_bounded_get(cache, apiserver):
    apiserver.add(make_pod("shop", "new", "uid-new", 0), announce=False)
    facts, how = cache.lookup("shop", "new")
    assert (facts.uid, how) == ("uid-new", "fetched")
    assert apiserver.gets == ["shop/new"]
    assert cache.lookup("shop", "new")[1] == "cached", "a fetched pod is kept"
    assert cache.lookup("shop", "ghost") == (None, "not-found")


def test_a_hanging_apiserver_costs_at_most_the_lookup_timeout(cache, apiserver):
    apiserver.hang_gets = 3.0
    started = time.monotonic()
    facts, how = cache.lookup("shop", "slow-0")
    elapsed = time.monotonic() - started
    assert (facts, how) == (None, "timeout")
    assert elapsed < 1.5, f"the admission waited {elapsed:.2f}s"
    assert apiserver.gets == ["shop/slow-0"], "exactly one attempt, no retries"


def test_cache_is_bounded(apiserver):
    for i in range(10):
        apiserver.add(make_pod("bulk", f"p-{i}", f"u-{i}", 0), announce=False)
    pods = PodCache(api_client(apiserver.url, 1.0), max_pods=5, watch_timeout=5)
    pods.start()
    try:
        assert pods.synced.wait(10)
        assert len(pods) == 5
    finally:
        apiserver.events.put(None)
        pods.stop()


def test_unsynced_cache_is_not_ready(apiserver):
    apiserver.down = True
    pods = PodCache(api_client(apiserver.url, 1.0), backoff=(0.05, 0.1))
    pods.start()
    try:
        time.sleep(0.3)
        assert pods.ready() == "the pod cache has not synced yet"
    finally:
        pods.stop()


# --- the webhook with a pod cache ---------------------------------------------------------


@pytest.fixture
def pod_aware_client(cache, signer, trusted):
    from webhook.admission import AdmissionPolicy
    from webhook.server import WebhookState, create_app

    from .conftest import NOW

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
    from .conftest import load_json

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
    from webhook.identity import verify_token

    from .conftest import NOW

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
    apiserver.hang_gets = 3.0
    started = time.monotonic()
    response = answer(pod_aware_client, "brand-new")
    assert time.monotonic() - started < 1.5
    assert response["auditAnnotations"]["pod-lookup"] == "timeout"
    assert response["auditAnnotations"]["outcome"] == "injected"
    assert command_of(response, "brand-new")[0] == "/usr/bin/env"


def test_readyz_waits_for_the_pod_cache(apiserver, signer, trusted):
    from webhook.admission import AdmissionPolicy
    from webhook.server import WebhookState, create_app

    pods = PodCache(api_client(apiserver.url, 1.0), watch_timeout=5)
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
        apiserver.events.put(None)
        pods.stop()


@pytest.mark.slow
def test_real_serve_with_kube_starts_the_cache_in_every_worker(apiserver, tmp_path):
    """`whoexec serve --kube URL`: the cache is started after gunicorn forks its workers."""
    import base64
    import http.client
    import json
    import os
    import ssl
    import subprocess
    import sys

    from click.testing import CliRunner

    from webhook.cli import main
    from webhook.identity import verify_token
    from webhook.keyfiles import load_key_ring

    from .conftest import free_port, http_ok, wait_until_ready

    certs = tmp_path / "certs"
    assert CliRunner().invoke(main, ["certs", "--out", str(certs)]).exit_code == 0
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "webhook.cli",
            "serve",
            "--certs",
            str(certs),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--kube",
            apiserver.url,
            "--env-trusted-namespace",
            "*",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
    )
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))

    def request(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            return reply.status, reply.read()
        finally:
            conn.close()

    try:

        def connect() -> http.client.HTTPSConnection:
            return http.client.HTTPSConnection("localhost", port, context=context, timeout=5)

        wait_until_ready(proc, lambda: http_ok(connect, "/readyz"), "whoexec serve --kube")
        ring = load_key_ring([certs / "identity.pub"])
        for _ in range(4):  # reach both workers: each must have its own synced cache
            status, body = request("POST", "/mutate", json.dumps(exec_review("web-0")).encode())
            assert status == 200
            response = json.loads(body)["response"]
            assert response["auditAnnotations"]["pod-lookup"] == "cached"
            ops = json.loads(base64.b64decode(response["patch"]))
            token = ops[0]["value"][1].split("=", 1)[1]
            assert verify_token(token, ring, now=int(time.time())).pod_uid == "uid-web-0"
    finally:
        apiserver.events.put(None)
        proc.terminate()
        proc.communicate(timeout=30)
