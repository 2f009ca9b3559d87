"""kubectl exec through the real apiserver, the real webhook and a real container."""

from __future__ import annotations

import os
import time

import pytest

from webhook.identity import verify_token
from webhook.keyfiles import load_key_ring

from .conftest import Cluster, Webhook, token_from_environ

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def shop(cluster: Cluster, webhook: Webhook) -> dict:
    cluster.kubectl("create", "namespace", "shop", check=False)
    return cluster.pod("shop", "web-0", cluster.images["with-env"])


@pytest.fixture(scope="module")
def alice(cluster: Cluster) -> object:
    return cluster.user("alice", "devs", "sre")


def test_exec_as_alice_carries_a_token_that_verifies_as_her(cluster, webhook, shop, alice):
    done = cluster.kubectl(
        "exec", "-n", "shop", "web-0", "--", "cat", "/proc/self/environ", user=alice
    )
    token = token_from_environ(done.stdout)
    identity = verify_token(token, load_key_ring([webhook.identity_pub]), now=int(time.time()))
    assert identity.user == "alice"
    assert identity.groups == ("devs", "sre", "system:authenticated")
    # kubectl resolves the default container itself and names it in the request
    assert (identity.namespace, identity.pod, identity.container) == ("shop", "web-0", "app")
    assert identity.pod_uid == shop["metadata"]["uid"]


def test_the_command_runs_with_its_own_argv_unchanged(cluster, shop, alice):
    done = cluster.kubectl(
        "exec", "-n", "shop", "web-0", "-c", "app", "--", "cat", "/proc/self/cmdline", user=alice
    )
    assert done.stdout == b"cat\0/proc/self/cmdline\0"


def test_kubectl_cp_is_byte_exact_both_ways(cluster, shop, alice, tmp_path):
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(1 << 20) + b"\0\r\n\x1b" * 100)
    cluster.kubectl("cp", str(blob), "shop/web-0:/tmp/blob.bin", user=alice)
    back = tmp_path / "back.bin"
    cluster.kubectl("cp", "shop/web-0:/tmp/blob.bin", str(back), user=alice)
    assert back.read_bytes() == blob.read_bytes()


def test_a_caller_who_sets_the_identity_variable_is_refused_with_the_reason(cluster, shop, alice):
    done = cluster.kubectl(
        "exec",
        "-n",
        "shop",
        "web-0",
        "--",
        "env",
        "WHOEXEC_IDENTITY=x",
        "sh",
        "-c",
        "true",
        user=alice,
        check=False,
    )
    assert done.returncode != 0
    stderr = done.stderr.decode()
    assert "denied the request" in stderr
    assert "only the whoexec webhook may set" in stderr
