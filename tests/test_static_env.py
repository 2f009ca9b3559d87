"""The static env shipped for distroless pods really works: Debian's busybox-static, run on
this machine under the name `env`, as the init container installs it in the pod."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

BUSYBOX = Path("/bin/busybox")  # Debian's busybox-static, what the Dockerfile ships


@pytest.fixture
def static_env(tmp_path) -> Path:
    if not BUSYBOX.exists():
        pytest.fail(
            "busybox-static is not installed: `apt-get install busybox-static` (.ci/run does)"
        )
    env = tmp_path / ".whoexec" / "env"
    env.parent.mkdir()
    shutil.copy2(BUSYBOX, env)
    return env


def test_it_is_statically_linked_so_it_runs_in_any_image(static_env):
    ldd = subprocess.run(["ldd", str(static_env)], capture_output=True, text=True, check=False)
    assert "not a dynamic executable" in ldd.stdout + ldd.stderr


def test_the_variable_reaches_the_command_and_the_exit_code_passes_through(static_env):
    token = "v1.0123456789abcdef.eyJzaWQiOiJ4In0.c2ln"
    result = subprocess.run(
        [
            str(static_env),
            f"WHOEXEC_IDENTITY={token}",
            "/bin/sh",
            "-c",
            'printf "%s" "$WHOEXEC_IDENTITY"; exit 7',
        ],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.stdout == token
    assert result.returncode == 7


def test_it_execs_in_place_so_kubectl_cp_streams_pass_through_untouched(static_env):
    payload = bytes(range(256)) * 4096  # what tar would stream
    result = subprocess.run(
        [str(static_env), "WHOEXEC_IDENTITY=x", "cat"],
        input=payload,
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0
    assert result.stdout == payload
    assert result.stderr == b"", "nothing of its own is ever written"


def test_a_missing_command_fails_like_env_does(static_env):
    result = subprocess.run(
        [str(static_env), "WHOEXEC_IDENTITY=x", "/no/such/program"],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 127
