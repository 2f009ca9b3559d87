"""/proc walking against real processes this test spawns."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from webhook.attribution.falco import check_alert, process_facts, token_pattern
from webhook.attribution.lineage import Attributor, ProcessTable, TokenVerifier
from webhook.attribution.procfs import START_TOLERANCE_NS, ProcFS
from webhook.identity import Identity, sign_identity

PROC = Path("/proc")
pytestmark = pytest.mark.skipif(not (PROC / "self/environ").exists(), reason="needs Linux /proc")


WEB_0 = ("shop", "web-0", "app", "0000aaaa-1111-4222-8333-444455556666")


def token_for(signer, user: str, *, age: int = 1, where=WEB_0, sid: str = "sess-1") -> str:
    ns, pod, container, pod_uid = where
    return sign_identity(
        Identity(sid, user, "", ("devs",), ns, pod, container, int(time.time()) - age, pod_uid),
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


def synthetic_alert(pid: int, start_ns: int, where=None) -> dict:
    """What Falco would say about ``pid`` if its environment had been cut at 4 KiB."""
    k8s = {}
    if where is not None:
        ns, pod, container, pod_uid = where
        k8s = {
            "k8s.ns.name": ns,
            "k8s.pod.name": pod,
            "container.name": container,
            "k8s.pod.uid": pod_uid,
        }
    fields = {
        **k8s,
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


def attribute_live(pid: int, signer, trusted, attributor=None, where=None):
    procfs = ProcFS(PROC)
    start_ns = procfs.read(pid).start_ns
    if attributor is None:
        attributor = Attributor(TokenVerifier(trusted), ProcessTable(), lineage_source=procfs.learn)
    (outcome,) = attributor.submit(synthetic_alert(pid, start_ns, where), now=0)
    return outcome.attribution


def live_root(spawn, token: str) -> int:
    """A real session root (``env VAR=<token> sh``) and the pid of its grandchild."""
    root = spawn("env", f"WHOEXEC_IDENTITY={token}", "sh", "-c", 'sh -c "sleep 30; true"; true')
    return innermost(root.pid, 3)[-1]


DB_0 = ("shop", "db-0", "postgres", "0000bbbb-1111-4222-8333-444455556666")
WEB_0_RECREATED = (*WEB_0[:3], "0000cccc-1111-4222-8333-444455556666")


@pytest.mark.parametrize(
    ("case", "age", "minted_for", "seen_in", "status", "reason"),
    [
        ("a fresh, first, bound token", 1, WEB_0, WEB_0, "verified", ""),
        ("bob's token minted 3 hours earlier", 3 * 3600, WEB_0, WEB_0, "replayed", "stale"),
        ("dave's token for db-0 planted in web-0", 1, DB_0, WEB_0, "replayed", "bound elsewhere"),
        (
            "a token of web-0 before it was recreated",
            1,
            WEB_0,
            WEB_0_RECREATED,
            "replayed",
            "bound",
        ),
    ],
)
def test_real_session_roots_are_believed_only_when_fresh_and_bound(
    spawn, signer, trusted, case, age, minted_for, seen_in, status, reason
):
    pid = live_root(spawn, token_for(signer, "victim@corp.example", age=age, where=minted_for))
    attribution = attribute_live(pid, signer, trusted, where=seen_in)
    assert attribution.status == status, case
    assert attribution.reason.startswith(reason), attribution.reason
    if status == "replayed":
        assert attribution.identity is None
        assert attribution.claimed.user == "victim@corp.example"


def test_a_second_real_root_with_the_same_token_is_a_replay(spawn, signer, trusted):
    token = token_for(signer, "carol@corp.example")
    procfs = ProcFS(PROC)
    attributor = Attributor(TokenVerifier(trusted), ProcessTable(), lineage_source=procfs.learn)
    first = attribute_live(live_root(spawn, token), signer, trusted, attributor, WEB_0)
    second = attribute_live(live_root(spawn, token), signer, trusted, attributor, WEB_0)
    assert first.status == "verified"
    assert second.status == "replayed"
    assert second.reason.startswith("reused: session sess-1 was already rooted by pid ")


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


def test_an_alert_from_another_node_is_never_looked_up_in_this_node_s_proc(spawn, signer, trusted):
    pid = live_root(spawn, token_for(signer, "victim@corp.example"))
    here = ProcFS(PROC, node="node-a")  # synthetic alerts come from "node-a"
    elsewhere = ProcFS(PROC, node="node-b")
    start_ns = here.read(pid).start_ns
    alert = synthetic_alert(pid, start_ns, WEB_0)
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    assert elsewhere.learn(facts, ProcessTable()) == 0, "node-b's /proc says nothing of node-a"
    assert here.learn(facts, ProcessTable()) > 0


def gone_pid() -> int:
    return max(int(p.name) for p in PROC.iterdir() if p.name.isdigit()) + 100_000


def alert_of_an_exited_child(pid: int, start_ns: int, *ancestors: int) -> dict:
    """Falco's alert of ``cat /etc/shadow`` in a session, read after cat has exited:
    only its own proc.apid[N] name the shell above it."""
    alert = synthetic_alert(pid, start_ns, WEB_0)
    fields = alert["output_fields"]
    fields["proc.pname"] = "sh"
    for n, ancestor in enumerate(ancestors, 1):
        fields[f"proc.apid[{n}]"] = ancestor
        fields[f"proc.aname[{n}]"] = "sh"
    return alert


def test_an_exited_command_is_attributed_through_its_nearest_living_ancestor(
    spawn, signer, trusted
):
    # kubectl debug --target: the alerting `cat` is gone, its shell (and so the token in
    # its whole environment) still runs
    token = token_for(signer, "alice@corp.example")
    root, shell, _ = innermost(spawn_root(spawn, token), 3)
    procfs = ProcFS(PROC)
    attributor = Attributor(TokenVerifier(trusted), ProcessTable(), lineage_source=procfs.learn)
    alert = alert_of_an_exited_child(gone_pid(), time.time_ns(), shell, root)
    (outcome,) = attributor.submit(alert, now=0)
    assert outcome.attribution.status == "verified"
    assert (outcome.attribution.identity.user, outcome.attribution.root_pid) == (
        "alice@corp.example",
        root,
    )


def test_whoexec_consume_procfs_attributes_an_exited_command_only_on_its_own_node(
    spawn, signer, tmp_path
):
    import orjson

    from tests.attribution.test_consumer import built

    token = token_for(signer, "alice@corp.example")
    root, shell, _ = innermost(spawn_root(spawn, token), 3)
    alert = alert_of_an_exited_child(gone_pid(), time.time_ns(), shell, root)
    seen = {}
    for node in ("node-a", "node-b"):
        (tmp_path / node).mkdir()
        consumer, sink = built(tmp_path / node, signer, procfs=PROC, node_name=node)
        consumer.pipeline.feed([orjson.dumps(alert)], where="test")
        consumer.close()
        (passed,) = sink.alerts
        seen[node] = (
            passed["output_fields"]["whoexec.attribution"],
            passed["output_fields"].get("whoexec.user.name"),
        )
    # the alert is node-a's (Falco's hostname): node-b's /proc is not where it ran
    assert seen == {"node-a": ("verified", "alice@corp.example"), "node-b": ("none", None)}


def test_whoexec_consume_refuses_a_procfs_that_is_not_one(tmp_path, signer):
    from tests.attribution.test_consumer import built
    from webhook.errors import ConfigError

    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=rf"^--procfs {tmp_path}/empty is not a procfs: "):
        built(tmp_path, signer, procfs=tmp_path / "empty")


def test_a_living_ancestor_younger_than_the_exited_command_is_a_reused_pid(spawn, signer, trusted):
    token = token_for(signer, "alice@corp.example")
    root, shell, _ = innermost(spawn_root(spawn, token), 3)
    procfs = ProcFS(PROC)
    attributor = Attributor(TokenVerifier(trusted), ProcessTable(), lineage_source=procfs.learn)
    # the alert's process started a minute before these pids' processes did: whatever
    # runs under them now is not its parent
    started = procfs.read(root).start_ns - 60 * 1_000_000_000
    alert = alert_of_an_exited_child(gone_pid(), started, shell, root)
    (outcome,) = attributor.submit(alert, now=0)
    assert outcome.attribution.status == "none"
    assert (
        procfs.learn(
            process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY")),
            ProcessTable(),
        )
        == 0
    )


def test_a_living_ancestor_at_another_start_than_the_table_knows_is_a_reused_pid(
    spawn, signer, trusted
):
    from webhook.attribution.lineage import ProcessRecord

    token = token_for(signer, "alice@corp.example")
    _, shell, _ = innermost(spawn_root(spawn, token), 3)
    procfs = ProcFS(PROC)
    table = ProcessTable()
    earlier = procfs.read(shell).start_ns - 60 * 1_000_000_000
    table.put(("node-a", shell), ProcessRecord(None, earlier, None))  # another process, once
    alert = alert_of_an_exited_child(gone_pid(), time.time_ns(), shell)
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    assert procfs.learn(facts, table) == 0


def spawn_root(spawn, token: str) -> int:
    """``env VAR=<token> sh`` whose shell runs a shell that sleeps; the root's pid."""
    return spawn("env", f"WHOEXEC_IDENTITY={token}", "sh", "-c", 'sh -c "sleep 30; true"; true').pid


# --- a /proc written by the test: exact start times, gaps, reused pids and loops ---------

BOOT_S = 1_795_000_000
TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class FakeProc:
    """A procfs mount with the processes a test writes into it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pids: list[int] = []
        root.mkdir()
        (root / "stat").write_text(f"cpu  1 2 3\nbtime {BOOT_S}\n")

    def add(self, pid: int, ppid: int, ticks: int, token: str | None = None) -> int:
        """A process started ``ticks`` after boot; its start in ns."""
        (self.root / str(pid)).mkdir()
        self.pids.append(pid)
        rest = " ".join(["S", str(ppid)] + ["0"] * 17 + [str(ticks)] + ["0"] * 10)
        (self.root / str(pid) / "stat").write_text(f"{pid} (sh) {rest}\n")
        env = b"PATH=/bin\0" + (b"WHOEXEC_IDENTITY=%s\0" % token.encode() if token else b"")
        (self.root / str(pid) / "environ").write_bytes(env)
        return BOOT_S * 10**9 + ticks * TICK_NS


@pytest.fixture
def fake(tmp_path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def facts_of(pid: int, start_ns: int | None, *ancestors: int):
    """The facts of an alert from ``pid`` whose proc.apid[N] are ``ancestors``."""
    alert = alert_of_an_exited_child(pid, start_ns or time.time_ns(), *ancestors)
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    return dataclasses.replace(facts, start_ts=start_ns)


def learnt(fake: FakeProc, facts, table=None) -> list[int]:
    table = ProcessTable() if table is None else table
    count = ProcFS(fake.root).learn(facts, table)
    pids = sorted(pid for pid in fake.pids if table.get(("node-a", pid)) is not None)
    assert count == len(pids)
    return pids


def test_the_alerting_process_is_believed_up_to_the_start_tolerance_and_no_further(fake):
    start = fake.add(400, 300, 5_000)
    assert learnt(fake, facts_of(400, start + START_TOLERANCE_NS)) == [400]
    assert learnt(fake, facts_of(400, start - START_TOLERANCE_NS)) == [400]
    assert learnt(fake, facts_of(400, start + START_TOLERANCE_NS + 1)) == []


def test_an_exited_command_whose_parent_is_gone_too_is_attributed_through_the_next_one_up(
    fake,
):
    root = fake.add(300, 1, 1_000, "v1.tok")
    assert learnt(fake, facts_of(500, root + 10**9, 400, 300)) == [300]


def test_an_ancestor_whose_pid_was_reused_is_passed_over_for_the_next_one_up(fake):
    command_start = BOOT_S * 10**9 + 2_000 * TICK_NS
    fake.add(400, 300, 9_000)  # started after the command: not its parent
    fake.add(300, 1, 1_000, "v1.tok")
    assert learnt(fake, facts_of(500, command_start, 400, 300)) == [300]


def test_an_ancestor_that_started_up_to_the_tolerance_after_the_command_is_believed(fake):
    parent = fake.add(400, 1, 2_000)
    assert learnt(fake, facts_of(500, parent - START_TOLERANCE_NS, 400)) == [400]
    assert learnt(fake, facts_of(500, parent - START_TOLERANCE_NS - 1, 400)) == []


def test_an_ancestor_is_believed_at_the_start_the_table_knows_up_to_the_tolerance(fake):
    from webhook.attribution.lineage import ProcessRecord

    parent = fake.add(400, 1, 2_000)
    for known, believed in (
        (parent, [400]),
        (parent + START_TOLERANCE_NS, [400]),
        (parent - START_TOLERANCE_NS - 1, []),
    ):
        table = ProcessTable()
        table.put(("node-a", 400), ProcessRecord(None, known, None))
        count = ProcFS(fake.root).learn(facts_of(500, parent + 10**9, 400), table)
        assert (count == 1) == bool(believed), known


def test_the_walk_stops_below_pid_1_and_never_learns_it(fake):
    init = fake.add(1, 0, 0)
    start = fake.add(400, 1, 2_000)
    fake.add(450, 400, 2_100)
    assert learnt(fake, facts_of(450, None, 400, 1)) == [400, 450]
    assert learnt(fake, facts_of(999, start + 10**9, 1)) == [], "only pid 1 is left"
    assert learnt(fake, facts_of(1, init)) == [], "an alert of the node's init itself"


def test_a_chain_deeper_than_64_is_learnt_64_deep(fake):
    for pid in range(100, 170):
        fake.add(pid, pid - 1 if pid > 100 else 1, 1_000)
    assert learnt(fake, facts_of(169, None)) == list(range(106, 170))


def test_a_parent_loop_from_reused_pids_is_learnt_once(fake):
    fake.add(400, 401, 1_000)
    fake.add(401, 400, 1_000)
    assert learnt(fake, facts_of(400, None)) == [400, 401]


def test_what_the_table_knew_of_a_process_is_kept_and_its_parent_learnt(fake):
    from webhook.attribution.lineage import ProcessRecord

    start = fake.add(400, 300, 2_000)
    fake.add(300, 1, 1_000)
    table = ProcessTable()
    table.put(("node-a", 400), ProcessRecord(None, start - 5, "c0ffee", "v1.from-falco"))
    learnt(fake, facts_of(400, start), table)
    record = table.get(("node-a", 400))
    assert (record.ppid, record.start_ts, record.container_id, record.token) == (
        300,
        start - 5,
        "c0ffee",
        "v1.from-falco",
    )


def test_the_process_under_one_without_the_token_is_where_the_token_entered(fake):
    # env WHOEXEC_IDENTITY=... sh (the root, under a runtime shim without it), then a
    # child that dropped the variable (env -u), then the alerting grandchild
    fake.add(200, 1, 500)
    fake.add(300, 200, 1_000, "v1.tok")
    fake.add(400, 300, 1_100)
    fake.add(450, 400, 1_200)
    table = ProcessTable()
    assert ProcFS(fake.root).learn(facts_of(450, None), table) == 4
    entries = {pid: table.get(("node-a", pid)).entry for pid in fake.pids}
    assert entries == {200: False, 300: True, 400: False, 450: False}


def test_a_procfs_without_the_boot_time_is_refused_naming_its_stat(tmp_path):
    (tmp_path / "stat").write_text("cpu  1 2 3\n")
    with pytest.raises(OSError, match=f"^{tmp_path / 'stat'} has no btime line$"):
        ProcFS(tmp_path)


def test_a_token_that_is_not_utf_8_is_read_replaced_and_the_walk_goes_on(fake):
    # anyone can put any bytes in their own environment: they must not stop the walk
    fake.add(300, 1, 1_000, "v1.tok")
    fake.add(400, 300, 1_100)
    (fake.root / "400" / "environ").write_bytes(b"WHOEXEC_IDENTITY=v1.\xff\xfe\0")
    table = ProcessTable()
    assert ProcFS(fake.root).learn(facts_of(400, None), table) == 2
    assert table.get(("node-a", 400)).token == "v1.\ufffd\ufffd"
    assert table.get(("node-a", 300)).token == "v1.tok"
