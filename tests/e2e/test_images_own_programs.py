"""Through the webhook and whoexec's static env, the program that runs is the image's own:
the shell, coreutils and the tar that kubectl cp runs, found on the image's PATH, with
the names Falco's stock rules know them by. (The BusyBox env this replaced ran its own
applets: `readlink /proc/$$/exe` printed /.whoexec/env, `ls --version` failed, and
kubectl cp ran BusyBox's tar.)"""

from __future__ import annotations

import os

import pytest

from .conftest import Cluster, Webhook

pytestmark = pytest.mark.e2e

#: a tar first on the image's PATH (/usr/local/bin) that records each call and runs the
#: image's GNU tar: only a PATH lookup by the static env can find it
TAR_WRAPPER = """#!/bin/sh
echo "$$ $(cat /proc/$$/comm) $*" >> /tmp/tar-calls
exec /usr/bin/tar "$@"
"""


@pytest.fixture(scope="module")
def programs(cluster: Cluster, webhook: Webhook) -> dict:
    cluster.kubectl("create", "namespace", "programs", check=False)
    return cluster.pod("programs", "debian-0", cluster.images["with-env"])


@pytest.fixture(scope="module")
def dave(cluster: Cluster) -> object:
    return cluster.user("dave", "devs")


def run(cluster: Cluster, user, *command: str, pod: str = "debian-0", check: bool = True):
    return cluster.kubectl("exec", "-n", "programs", pod, "--", *command, user=user, check=check)


def test_the_pod_execs_through_whoexec_s_static_env(cluster, programs, dave):
    names = [c["name"] for c in programs["spec"]["initContainers"]]
    assert names[0] == "whoexec-env", "created after install: it has the static env"
    # the env in the pod is whoexec's: run without a command it says so, and prints nothing
    done = run(cluster, dave, "/.whoexec/env", check=False)
    assert done.returncode == 125
    assert done.stdout == b""
    assert b"whoexec's static env never prints the environment" in done.stderr


def test_a_shell_is_the_image_s_own_with_its_own_name_and_the_token(cluster, programs, dave):
    script = 'readlink /proc/$$/exe; cat /proc/$$/comm; printf "%.3s\\n" "$WHOEXEC_IDENTITY"'
    done = run(cluster, dave, "sh", "-c", script)
    assert done.stdout.decode().splitlines() == ["/usr/bin/dash", "sh", "v1."]


def test_coreutils_are_gnu_coreutils_under_their_own_names(cluster, programs, dave):
    assert run(cluster, dave, "ls", "--version").stdout.startswith(b"ls (GNU coreutils)")
    assert run(cluster, dave, "cat", "/proc/self/comm").stdout == b"cat\n"
    # and what a shell starts is the image's too
    done = run(cluster, dave, "sh", "-c", "ls --version | head -1; tar --version | head -1")
    assert done.stdout.decode().splitlines() == ["ls (GNU coreutils) 9.1", "tar (GNU tar) 1.34"]


def test_kubectl_cp_runs_the_tar_found_on_the_image_s_path_both_ways(
    cluster, programs, dave, tmp_path
):
    run(
        cluster,
        dave,
        "sh",
        "-c",
        f"cat > /usr/local/bin/tar <<'EOF'\n{TAR_WRAPPER}EOF\nchmod 755 /usr/local/bin/tar",
    )
    blob = tmp_path / "blob.bin"
    blob.write_bytes(os.urandom(300_000) + b"\0\r\n\x1b" * 50)
    cluster.kubectl("cp", str(blob), "programs/debian-0:/tmp/blob.bin", user=dave)
    back = tmp_path / "back.bin"
    cluster.kubectl("cp", "programs/debian-0:/tmp/blob.bin", str(back), user=dave)
    assert back.read_bytes() == blob.read_bytes()
    calls = run(cluster, dave, "cat", "/tmp/tar-calls").stdout.decode().splitlines()
    # kubectl cp execs `tar -xmf - -C /tmp` into the pod, `tar cf - /tmp/blob.bin` out of it
    assert [call.split()[1:3] for call in calls] == [["tar", "-xmf"], ["tar", "cf"]]


def test_a_distroless_image_runs_its_own_shell_not_one_of_the_static_env(cluster, webhook, dave):
    cluster.kubectl("create", "namespace", "programs", check=False)
    cluster.pod("programs", "distroless-0", cluster.images["without-env"])
    # by name, as a user types it: the BusyBox env ran its own sh applet for that
    done = run(cluster, dave, "sh", "-c", "readlink /proc/$$/exe", pod="distroless-0")
    assert done.stdout == b"/bin/sh\n"


def test_a_command_that_cannot_run_fails_as_env_would_say_it(cluster, programs, dave):
    done = run(cluster, dave, "no-such-program", check=False)
    assert done.returncode != 0
    assert b"command terminated with exit code 127" in done.stderr
    assert b"env: 'no-such-program': No such file or directory" in done.stderr
