"""/proc walking against real processes this test spawns."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.falco import check_alert, process_facts, token_pattern
from webhook.identity import Identity, sign_identity
from webhook.lineage import Attributor, ProcessTable, TokenVerifier
from webhook.procfs import ProcFS

PROC = Path("/proc")
pytestmark = pytest.mark.skipif(not (PROC / "self/environ").exists(), reason="needs Linux /proc")


def token_for(signer, user: str) -> str:
    return sign_identity(
        Identity("sess-1", user, "", ("devs",), "shop", "web-0", "app", int(time.time()) - 5),
        signer,
    )


def children(pid: int) -> list[int]:
    found = []
    for task in (PROC / str(pid) / "task").iterdir():
        text = (task / "children").read_text().split()
        found.extend(int(p) for p in text)
    return found


def innermost(pid: int, depth: int) -> list[int]:
    """The chain pid -> child -> grandchild ..., waiting until it is ``depth`` long."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        chain = [pid]
        while len(chain) < depth and (kids := children(chain[-1])):
            chain.append(kids[0])
        if len(chain) == depth:
            return chain
        time.sleep(0.02)
    raise AssertionError(f"process chain under {pid} never reached depth {depth}")


@pytest.fixture
def spawn() -> Iterator:
    procs: list[subprocess.Popen[bytes]] = []

    def start(*argv: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env={"PATH": os.environ["PATH"]})
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def synthetic_alert(pid: int, start_ns: int) -> dict:
    """What Falco would say about ``pid`` if its environment had been cut at 4 KiB."""
    fields = {
        "container.id": None,
        "evt.time": time.time_ns(),
        "proc.env[WHOEXEC_IDENTITY]": None,
        "proc.aenv[WHOEXEC_IDENTITY]": None,
        "proc.name": "sleep",
        "proc.pid": pid,
        "proc.pid.ts": start_ns,
    }
    return check_alert(
        {
            "hostname": "node-a",
            "output": "Read sensitive file untrusted",
            "output_fields": fields,
            "priority": "Warning",
            "rule": "Read sensitive file untrusted",
            "source": "syscall",
            "tags": [],
            "time": "2026-11-22T10:00:00.000000000Z",
        }
    )


def attribute_live(pid: int, signer, trusted):
    procfs = ProcFS(PROC)
    start_ns = procfs.read(pid).start_ns
    attributor = Attributor(TokenVerifier(trusted), ProcessTable(), lineage_source=procfs.learn)
    (outcome,) = attributor.submit(synthetic_alert(pid, start_ns), now=0)
    return outcome.attribution


def test_innermost_process_resolves_to_the_env_root_token(spawn, signer, trusted):
    token = token_for(signer, "alice@corp.example")
    root = spawn("env", f"WHOEXEC_IDENTITY={token}", "sh", "-c", 'sh -c "sleep 30; true"; true')
    chain = innermost(root.pid, 3)
    attribution = attribute_live(chain[-1], signer, trusted)
    assert attribution.status == "verified"
    assert attribution.identity.user == "alice@corp.example"
    assert attribution.root_pid == root.pid


def test_descendant_that_re_exports_another_value_is_flagged(spawn, signer, trusted):
    token = token_for(signer, "alice@corp.example")
    other = token_for(signer, "bob@corp.example")
    root = spawn(
        "env",
        f"WHOEXEC_IDENTITY={token}",
        "sh",
        "-c",
        f'WHOEXEC_IDENTITY={other} sh -c "sleep 30; true"; true',
    )
    chain = innermost(root.pid, 3)
    attribution = attribute_live(chain[-1], signer, trusted)
    assert attribution.status == "tampered"
    assert attribution.identity.user == "alice@corp.example", "the root's token is believed"
    assert "different WHOEXEC_IDENTITY" in attribution.reason


def test_pid_with_another_start_time_is_not_trusted(spawn, signer, trusted):
    token = token_for(signer, "alice@corp.example")
    root = spawn("env", f"WHOEXEC_IDENTITY={token}", "sh", "-c", 'sh -c "sleep 30; true"; true')
    pid = innermost(root.pid, 3)[-1]
    procfs = ProcFS(PROC)
    table = ProcessTable()
    alert = synthetic_alert(pid, procfs.read(pid).start_ns - 60 * 1_000_000_000)
    attributor = Attributor(TokenVerifier(trusted), table, lineage_source=procfs.learn)
    (outcome,) = attributor.submit(alert, now=0)
    assert outcome.attribution.status == "none"


def test_gone_process_teaches_nothing():
    procfs = ProcFS(PROC)
    gone = max(int(p.name) for p in PROC.iterdir() if p.name.isdigit()) + 100_000
    assert procfs.read(gone) is None
    facts = process_facts(
        synthetic_alert(gone, 1), "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY")
    )
    table = ProcessTable()
    assert procfs.learn(facts, table) == 0
    assert len(table) == 0


def test_stat_with_parentheses_in_the_command_name_is_parsed(tmp_path):
    fake = tmp_path / "proc"
    (fake / "4242").mkdir(parents=True)
    (fake / "stat").write_text("cpu  1 2 3\nbtime 1795000000\n")
    rest = " ".join(["S", "4100"] + ["0"] * 17 + ["250"] + ["0"] * 10)
    (fake / "4242" / "stat").write_text(f"4242 (evil) name) {rest}\n")
    (fake / "4242" / "environ").write_bytes(b"PATH=/bin\0WHOEXEC_IDENTITY=v1.x\0")
    info = ProcFS(fake).read(4242)
    assert (info.ppid, info.token) == (4100, "v1.x")
    assert info.start_ns == 1795000000 * 10**9 + 250 * 10**9 // os.sysconf("SC_CLK_TCK")
