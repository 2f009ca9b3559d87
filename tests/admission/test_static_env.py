"""whoexec's static env (staticenv/env.c), built from the repo's source as the Dockerfile
builds it, does what env(1) does with the command lines the webhook writes and nothing
else: the program that runs is the command itself, found on the PATH, with its own argv,
pid and file descriptors, and nothing of the static env's is ever written to stdout."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

ROOT = Path(__file__).parent.parent.parent
BUILD = ROOT / "staticenv" / "build"
GNU_ENV = Path("/usr/bin/env")
TOKEN = "v1.0123456789abcdef.eyJzaWQiOiJ4In0.c2ln"
PATH = "/usr/local/bin:/usr/bin:/bin"


@pytest.fixture(scope="module")
def static_env(tmp_path_factory) -> Path:
    if shutil.which("cc") is None:
        pytest.fail("no C compiler: `apt-get install gcc libc6-dev` (.ci/run does)")
    env = tmp_path_factory.mktemp("static") / ".whoexec" / "env"
    env.parent.mkdir()
    built = subprocess.run([str(BUILD), str(env)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stderr
    return env


def run(argv: list[str], *, env: dict[str, str] | None = None, **kwargs):
    return subprocess.run(
        argv,
        capture_output=True,
        env={"PATH": PATH} if env is None else env,
        check=False,
        **kwargs,
    )


def program_headers(path: Path) -> list[int]:
    """The p_type of each ELF64 program header (PT_INTERP = 3 names a dynamic loader)."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "a 64-bit ELF file"
    phoff, phentsize, phnum = (
        struct.unpack_from("<Q", data, 0x20)[0],
        *struct.unpack_from("<HH", data, 0x36),
    )
    return [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]


def test_it_is_statically_linked_so_it_runs_in_images_without_a_c_library(static_env):
    assert 3 not in program_headers(static_env), "no PT_INTERP: no dynamic loader needed"
    ldd = run(["ldd", str(static_env)], env=dict(os.environ))
    assert b"not a dynamic executable" in ldd.stdout + ldd.stderr


def test_it_fits_the_init_containers_volume_many_times_over(static_env):
    # the pod CREATE mutation's emptyDir has sizeLimit 8Mi (webhook/admission/pods.py)
    assert static_env.stat().st_size < 2 * 1024 * 1024


def test_the_shell_that_runs_is_the_systems_own_with_the_pid_env_was_started_with(static_env):
    proc = subprocess.Popen(
        [
            str(static_env),
            f"WHOEXEC_IDENTITY={TOKEN}",
            "sh",
            "-c",
            'echo "$$"; readlink /proc/$$/exe',
        ],
        stdout=subprocess.PIPE,
        env={"PATH": PATH},
    )
    out, _ = proc.communicate(timeout=10)
    pid, exe = out.decode().split()
    assert int(pid) == proc.pid, "execvp in place: the session root keeps its pid"
    assert exe == os.path.realpath(shutil.which("sh", path=PATH) or ""), "not an applet"


def test_coreutils_run_as_themselves_not_as_applets(static_env):
    done = run([str(static_env), f"WHOEXEC_IDENTITY={TOKEN}", "ls", "--version"])
    assert done.returncode == 0
    assert done.stdout.startswith(b"ls (GNU coreutils)")


def test_the_variable_reaches_the_command_and_its_exit_status_passes_through(static_env):
    done = run(
        [
            str(static_env),
            f"WHOEXEC_IDENTITY={TOKEN}",
            "/bin/sh",
            "-c",
            'printf %s "$WHOEXEC_IDENTITY"; exit 7',
        ]
    )
    assert (done.stdout, done.returncode) == (TOKEN.encode(), 7)


def test_the_command_gets_its_own_argv_unchanged_argv0_included(static_env):
    argv = ["cat", "/proc/self/cmdline"]
    done = run([str(static_env), f"WHOEXEC_IDENTITY={TOKEN}", *argv])
    assert done.stdout == b"\0".join(a.encode() for a in argv) + b"\0"


def test_a_name_ends_at_the_first_equals_sign_and_the_value_keeps_the_rest(static_env):
    done = run([str(static_env), "A=1=2", "B==", "printenv", "A", "B"])
    assert done.stdout == b"1=2\n=\n"


def test_later_assignments_win_and_override_the_inherited_environment(static_env):
    done = run(
        [str(static_env), "A=first", "A=second", "HOME=/x", "printenv", "A", "HOME"],
        env={"PATH": PATH, "HOME": "/root"},
    )
    assert done.stdout == b"second\n/x\n"


def test_the_inherited_environment_is_passed_on_untouched(static_env):
    done = run(
        [str(static_env), f"WHOEXEC_IDENTITY={TOKEN}", "/usr/bin/env"],
        env={"PATH": PATH, "KEEP": "a b\tc"},
    )
    assert done.stdout.decode().splitlines() == [
        f"PATH={PATH}",
        "KEEP=a b\tc",
        f"WHOEXEC_IDENTITY={TOKEN}",
    ]


def test_the_command_is_found_on_the_path_of_the_environment_it_was_given(static_env, tmp_path):
    tool = tmp_path / "bin" / "only-here"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\necho found\n")
    tool.chmod(0o755)
    done = run([str(static_env), "A=1", "only-here"], env={"PATH": f"{tool.parent}:{PATH}"})
    assert (done.stdout, done.returncode) == (b"found\n", 0)
    missing = run([str(static_env), "A=1", "only-here"])
    assert missing.returncode == 127
    # as with env(1), a PATH among the assignments is the one searched
    moved = run([str(static_env), f"PATH={tool.parent}", "only-here"])
    assert moved.stdout == b"found\n"


def test_without_a_path_the_c_library_default_is_searched(static_env):
    done = run([str(static_env), "A=1", "true"], env={})
    assert done.returncode == 0


def test_a_script_without_a_shebang_runs_under_sh_as_with_env(static_env, tmp_path):
    script = tmp_path / "plain"
    script.write_text("echo plain\n")
    script.chmod(0o755)
    done = run([str(static_env), "A=1", str(script)])
    assert (done.stdout, done.returncode) == (b"plain\n", 0)


def test_a_leading_double_dash_ends_the_options(static_env):
    done = run([str(static_env), "--", "A=1", "printenv", "A"])
    assert done.stdout == b"1\n"


def test_after_an_assignment_an_argument_that_looks_like_an_option_is_the_command(static_env):
    done = run([str(static_env), "A=1", "-i"])
    assert done.returncode == 127
    assert done.stderr == b"env: '-i': No such file or directory\n"


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["A=1", "/no/such/program"], 127, b"env: '/no/such/program': No such file or directory\n"),
        (["A=1", "no-such-program-anywhere"], 127, b"No such file or directory"),
        (["A=1", "/etc/passwd"], 126, b"env: '/etc/passwd': Permission denied\n"),
        (["A=1", "/tmp"], 126, b"Permission denied"),
        (["A=1", ""], 127, b"env: '': No such file or directory\n"),
        (["A=1", "bad\x1b[2Jname"], 127, b"env: 'bad?[2Jname'"),
    ],
    ids=["missing", "not-on-path", "not-executable", "directory", "empty", "control-chars"],
)
def test_a_command_that_cannot_run_fails_as_env_does_on_stderr_only(
    static_env, argv, status, message
):
    done = run([str(static_env), *argv])
    assert done.returncode == status
    assert message in done.stderr
    assert done.stdout == b""
    gnu = run([str(GNU_ENV), *argv])
    assert gnu.returncode == status, "the same status as GNU env"


@pytest.mark.parametrize("argv", [["-i", "true"], ["-u", "A", "true"], ["-"], ["A=1"], []])
def test_options_and_a_missing_command_are_refused_and_nothing_is_printed(static_env, argv):
    done = run([str(static_env), *argv])
    assert done.returncode == 125
    assert done.stdout == b"", "stdout belongs to the session: env never prints the environment"
    assert done.stderr.startswith(b"env: ")


def test_it_execs_in_place_so_kubectl_cp_streams_pass_through_byte_exact(static_env):
    payload = bytes(range(256)) * 4096  # what tar would stream
    done = run([str(static_env), f"WHOEXEC_IDENTITY={TOKEN}", "cat"], input=payload)
    assert done.returncode == 0
    assert done.stdout == payload
    assert done.stderr == b"", "nothing of its own is ever written"


def test_tar_through_it_is_gnu_tar_and_round_trips_a_tree(static_env, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "f").write_bytes(os.urandom(100_000))
    version = run([str(static_env), f"WHOEXEC_IDENTITY={TOKEN}", "tar", "--version"])
    assert version.stdout.startswith(b"tar (GNU tar)")
    packed = run(
        [str(static_env), f"WHOEXEC_IDENTITY={TOKEN}", "tar", "cf", "-", "-C", str(src), "."]
    )
    dst = tmp_path / "dst"
    dst.mkdir()
    unpacked = run(
        [str(static_env), f"WHOEXEC_IDENTITY={TOKEN}", "tar", "xf", "-", "-C", str(dst)],
        input=packed.stdout,
    )
    assert unpacked.returncode == 0
    assert (dst / "d" / "f").read_bytes() == (src / "d" / "f").read_bytes()


# names and values env(1) can be given on a command line: no NUL; a name without "="
NAMES = st.text(st.sampled_from("ABCXYZ_abc019"), min_size=1, max_size=8)
VALUES = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"), max_size=40
)


@settings(max_examples=60)
@given(st.lists(st.tuples(NAMES, VALUES), max_size=6), st.booleans())
def test_any_assignments_give_the_command_the_environment_gnu_env_gives_it(
    static_env, assignments, double_dash
):
    args = (["--"] if double_dash else []) + [f"{name}={value}" for name, value in assignments]
    command = ["/usr/bin/env"]  # prints what it was given: the environment after the assignments
    base = {"PATH": PATH, "A": "inherited"}
    ours = run([str(static_env), *args, *command], env=base)
    gnu = run([str(GNU_ENV), *args, *command], env=base)
    assert (ours.returncode, ours.stdout, ours.stderr) == (gnu.returncode, gnu.stdout, gnu.stderr)
