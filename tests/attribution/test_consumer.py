from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import DATA
from tests.servers import closed_port
from webhook.attribution.falco import WHOEXEC_TAG, parse_alert
from webhook.attribution.inbox import InboxLogReader, InboxWriter
from webhook.attribution.lineage import Attributor, TokenVerifier
from webhook.attribution.pipeline import ForwardSink, InboxReader, MemorySink, Pipeline
from webhook.cli import main
from webhook.deadletters import DeadLetters
from webhook.follow import FileFollower
from webhook.keyfiles import load_key_ring

FALCO = DATA / "falco"
PUB = str(FALCO / "identity.pub")
GRANDCHILD = FALCO / "shell_and_grandchild.jsonl"


def pipeline_with_sink(hold: float = 0.0) -> tuple[Pipeline, MemorySink]:
    sink = MemorySink()
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    return Pipeline(Attributor(verifier, hold_seconds=hold), [sink]), sink


def users(alerts) -> list[tuple[str, str | None]]:
    return [
        (a["rule"], a["output_fields"].get("whoexec.user.name"))
        for a in alerts
        if a["source"] == "syscall"
    ]


# --- batch and stdin ----------------------------------------------------------------------


def test_batch_mode_writes_enriched_alerts_to_stdout_and_exits_0():
    result = CliRunner().invoke(
        main, ["consume", "--input", str(GRANDCHILD), "--identity-pub", PUB, "--hold", "0"]
    )
    assert result.exit_code == 0, result.output
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    assert users(alerts) == [
        ("Terminal shell in container", "alice@corp.example"),
        ("Read sensitive file untrusted", "alice@corp.example"),
    ]
    assert "3 alerts read" in result.stderr


@pytest.mark.slow
def test_stdin_pipe_as_a_real_subprocess():
    result = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "consume", "--input", "-", "--identity-pub", PUB],
        input=GRANDCHILD.read_bytes(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    alerts = [json.loads(line) for line in result.stdout.splitlines()]
    assert [a["output_fields"]["whoexec.attribution"] for a in alerts] == ["verified"] * 2


def test_broken_lines_are_counted_and_never_stop_the_stream(tmp_path):
    lines = GRANDCHILD.read_bytes().splitlines()
    internal = {
        "hostname": "node-a",
        "output": "Falco internal: syscall event drop. 815508 system calls dropped",
        "output_fields": {},
        "priority": "Debug",
        "rule": "Falco internal: syscall event drop",
        "source": "internal",
        "tags": [],
        "time": "2026-11-22T10:00:01.000000000Z",
    }
    mixed = tmp_path / "events.json"
    mixed.write_bytes(
        b"\n".join(
            [
                lines[0],
                b"{not json",
                json.dumps(internal).encode(),
                b'{"rule": 5}',
                b"[1, 2]",  # an array is a batch: two items that are not alerts
                lines[1][: len(lines[1]) // 2],  # a line cut in half
                lines[1],
                lines[2],
            ]
        )
        + b"\n"
    )
    result = CliRunner().invoke(
        main, ["consume", "--input", str(mixed), "--identity-pub", PUB, "--hold", "0"]
    )
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 2
    assert "6 lines skipped" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--input", str(GRANDCHILD)], "no identity public key"),
        (["--input", "/nonexistent/events.json", "--identity-pub", PUB], "cannot read --input"),
        (["--identity-pub", PUB], "give --input"),
        (["--input", "-", "--follow", "--identity-pub", PUB], "--follow needs --input FILE"),
        (["--input", str(GRANDCHILD), "--identity-pub", "/nonexistent.pub"], "cannot read"),
    ],
)
def test_consume_usage_errors_are_clear(args, message):
    result = CliRunner().invoke(main, ["consume", *args])
    assert result.exit_code in (1, 2)
    assert message in result.output


# --- following a file ---------------------------------------------------------------------


class Follow:
    """A follower running in a thread, as `whoexec consume --follow` runs it."""

    def __init__(self, path: Path, state: Path) -> None:
        self.pipeline, self.sink = pipeline_with_sink()
        self.follower = FileFollower(path, state, poll=0.02)
        self.thread = threading.Thread(target=self.follower.run, args=(self.pipeline,))
        self.thread.start()

    def wait_for(self, count: int) -> list:
        wait_until(lambda: len(self.sink.alerts) >= count)
        return self.sink.alerts

    def wait_seen(self, what: str, at_least: int = 1) -> None:
        """Wait until the follower has noticed something: caught_up, truncations..."""
        wait_until(lambda: getattr(self.follower, what) >= at_least)

    def stop(self) -> None:
        self.follower.stop()
        self.thread.join(timeout=10)


def append(path: Path, lines: list[bytes]) -> None:
    with path.open("ab") as out:
        out.write(b"".join(line + b"\n" for line in lines))


def rule_lines(rule: str, n: int) -> list[bytes]:
    """Unrelated-container alerts (attribution none) with distinct, countable rule names."""
    template = parse_alert((FALCO / "unrelated_container.jsonl").read_bytes().splitlines()[1])
    out = []
    for i in range(n):
        alert = {**template, "rule": f"{rule} {i}"}
        out.append(json.dumps(alert).encode())
    return out


def test_follow_survives_rotation_and_truncation(tmp_path):
    log = tmp_path / "events.json"
    append(log, rule_lines("first", 3))
    follow = Follow(log, tmp_path / "state" / "events.offset")
    try:
        assert len(follow.wait_for(3)) == 3
        log.rename(tmp_path / "events.json.1")  # logrotate: rename, then a new file
        append(tmp_path / "events.json.1", rule_lines("late-in-old-file", 1))
        append(log, rule_lines("second", 2))
        assert len(follow.wait_for(6)) == 6
        log.write_bytes(b"")  # copytruncate
        follow.wait_seen("truncations")  # seen as a truncation, before anything is appended
        append(log, rule_lines("after-truncate", 1))
        alerts = follow.wait_for(7)
    finally:
        follow.stop()
    assert (follow.follower.rotations, follow.follower.truncations) == (1, 1)
    rules = [a["rule"] for a in alerts]
    assert rules == [
        "first 0",
        "first 1",
        "first 2",
        "late-in-old-file 0",
        "second 0",
        "second 1",
        "after-truncate 0",
    ]


def test_follow_resumes_at_the_saved_offset_after_a_restart(tmp_path):
    log = tmp_path / "events.json"
    state = tmp_path / "state" / "events.offset"
    append(log, rule_lines("before", 4))
    first = Follow(log, state)
    assert len(first.wait_for(4)) == 4
    first.stop()
    append(log, rule_lines("while-down", 2))
    with log.open("ab") as out:
        out.write(b'{"partial": ')  # a line the writer has not finished yet
    second = Follow(log, state)
    try:
        second.wait_for(2)
        second.wait_seen("caught_up")  # it read up to the partial line and holds it
        assert second.pipeline.stats.get("skipped_not_an_alert", 0) == 0
        with log.open("ab") as out:
            out.write(b'"no"}\n')  # the writer finishes the line: not an alert, skipped
        append(log, rule_lines("after", 1))
        alerts = second.wait_for(3)
    finally:
        second.stop()
    assert [a["rule"] for a in alerts] == ["while-down 0", "while-down 1", "after 0"]
    assert second.pipeline.stats["skipped_not_an_alert"] == 1


def test_follow_waits_for_a_file_that_does_not_exist_yet(tmp_path):
    log = tmp_path / "later.json"
    follow = Follow(log, tmp_path / "later.offset")
    try:
        follow.wait_seen("absent_polls", 2)  # it looked, and looked again
        append(log, rule_lines("x", 1))
        assert len(follow.wait_for(1)) == 1
    finally:
        follow.stop()


def start_following(log: Path, state_dir: Path, output: Path) -> subprocess.Popen[bytes]:
    """`whoexec consume --input LOG --follow` as an operator starts it, its alerts to
    ``output``, what it logs to ``output`` + ``.log``: a file, which never fills and
    blocks it as an unread pipe would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
    with output.open("wb") as out, output.with_suffix(".log").open("wb") as said:
        return subprocess.Popen(
            [sys.executable, "-m", "webhook.cli", "consume", "--input", str(log), "--follow",
             "--identity-pub", PUB, "--hold", "0", "--state-dir", str(state_dir)],
            stdout=out, stderr=said, env=env,
        )  # fmt: skip


def interrupt(
    follower: subprocess.Popen[bytes], output: Path, signum: signal.Signals = signal.SIGINT
) -> None:
    """Ctrl-C (or ``signum``: SIGTERM, as Kubernetes stops a pod), as an operator stops
    it: a clean exit. One that does not stop within 30 s is killed, so that no test
    leaves it behind, and fails the test with what it logged."""
    follower.send_signal(signum)
    try:
        follower.wait(timeout=30)
    except subprocess.TimeoutExpired:
        follower.kill()
        follower.wait()
        raise AssertionError(
            f"still running 30 s after {signum.name}:\n" + output.with_suffix(".log").read_text()
        ) from None
    assert follower.returncode == 0, output.with_suffix(".log").read_text()


def saved_offset(path: Path) -> int | None:
    try:
        return int(json.loads(path.read_text())["offset"])
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def rules_in(output: Path) -> list[str]:
    """The rules of the complete lines so far: the consumer's stdout is a buffered file,
    whose flushes may end in the middle of a line."""
    data = output.read_bytes()
    return [json.loads(line)["rule"] for line in data[: data.rfind(b"\n") + 1].splitlines()]


@pytest.mark.slow
def test_whoexec_consume_follow_passes_on_what_is_appended_and_a_restart_resumes_there(
    tmp_path,
):
    log, state = tmp_path / "events.json", tmp_path / "state"
    first_out, second_out = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    append(log, rule_lines("before", 2))
    first = start_following(log, state, first_out)
    try:
        wait_until(lambda: len(rules_in(first_out)) == 2, seconds=30)
        append(log, rule_lines("appended", 1))
        wait_until(lambda: len(rules_in(first_out)) == 3, seconds=30)
        # the offset is kept under --state-dir, named after the file, once passed on
        wait_until(lambda: saved_offset(state / "events.json.offset") == log.stat().st_size)
    finally:
        interrupt(first, first_out)  # the consumer is closed, the exit clean
    assert rules_in(first_out) == ["before 0", "before 1", "appended 0"]

    append(log, rule_lines("while-down", 2))
    second = start_following(log, state, second_out)
    try:
        wait_until(lambda: len(rules_in(second_out)) >= 2, seconds=30)
    finally:
        interrupt(second, second_out, signal.SIGTERM)  # a clean exit too
    assert rules_in(second_out) == ["while-down 0", "while-down 1"]


# --- forwarding ---------------------------------------------------------------------------


class Downstream:
    """A real HTTP server on 127.0.0.1 standing in for falcosidekick.

    Its port is bound from the start and listened on only by ``start()``: until then a
    connection is refused, and no other process can take the port."""

    def __init__(self, fail_first: int = 0) -> None:
        self.bodies: list[dict] = []
        self.fail_first = fail_first
        self.unavailable_for: set[str] = set()  # rules answered 503, every time
        self.gate: threading.Event | None = None  # when set up, requests wait for it
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                if outer.gate is not None:
                    outer.gate.wait(30)
                with outer.lock:
                    outer.in_flight -= 1
                    alert = json.loads(body)
                    if outer.fail_first > 0:
                        outer.fail_first -= 1
                        status = 503
                    elif alert["rule"] in outer.unavailable_for:
                        status = 503
                    else:
                        outer.bodies.append(alert)
                        status = 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self.server.server_bind()
        self.port = self.server.server_address[1]
        self.started = False

    def start(self) -> None:
        self.server.server_activate()
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.started = True

    def stop(self) -> None:
        if self.started:
            self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def downstream() -> Iterator[Downstream]:
    server = Downstream(fail_first=2)
    yield server
    server.stop()


def wait_until(condition, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_forward_sink_loses_nothing_while_the_downstream_is_down(tmp_path, downstream):
    sink = ForwardSink(
        f"http://127.0.0.1:{downstream.port}/", tmp_path / "spool.db", backoff=(0.02, 0.1)
    )
    try:
        alerts = [parse_alert(line) for line in rule_lines("fwd", 20)]
        sink.write(alerts[:10])  # nobody listens yet: connection refused, retried
        wait_until(lambda: sink.retries >= 2)
        assert len(sink.spool) == 10 and sink.delivered == 0
        downstream.start()  # then two 503s, then 200s
        sink.write(alerts[10:])
        wait_until(lambda: len(downstream.bodies) == 20)
    finally:
        sink.close()
    assert sorted(b["rule"] for b in downstream.bodies) == sorted(f"fwd {i}" for i in range(20))
    assert sink.delivered == 20


def test_forward_spool_survives_a_restart(tmp_path, downstream):
    url = f"http://127.0.0.1:{downstream.port}/"
    first = ForwardSink(url, tmp_path / "spool.db", backoff=(0.02, 0.05))
    first.write([parse_alert(line) for line in rule_lines("kept", 5)])
    first._stop.set()  # a crash: the threads stop, nothing was delivered
    for worker in first._workers:
        worker.join()
    downstream.fail_first = 0
    downstream.start()
    second = ForwardSink(url, tmp_path / "spool.db", backoff=(0.02, 0.05))
    try:
        wait_until(lambda: len(downstream.bodies) == 5)
    finally:
        second.close()
    assert sorted(b["rule"] for b in downstream.bodies) == [f"kept {i}" for i in range(5)]


def test_one_failing_alert_is_retried_apart_and_never_holds_back_the_rest(tmp_path, downstream):
    downstream.fail_first = 0
    downstream.unavailable_for = {"fwd 0"}  # this one answers 503, the others 200
    downstream.start()
    sink = ForwardSink(
        f"http://127.0.0.1:{downstream.port}/", tmp_path / "spool.db", backoff=(0.02, 0.05)
    )
    try:
        sink.write([parse_alert(line) for line in rule_lines("fwd", 30)])
        wait_until(lambda: sink.delivered == 29)
        wait_until(lambda: sink.retries >= 3)  # "fwd 0" keeps being retried meanwhile
        assert len(sink.spool) == 1
        downstream.unavailable_for = set()
        wait_until(lambda: sink.delivered == 30)
    finally:
        sink.close()
    assert sorted(b["rule"] for b in downstream.bodies) == sorted(f"fwd {i}" for i in range(30))


def test_forwarding_runs_concurrently_within_its_bound(tmp_path, downstream):
    downstream.fail_first = 0
    downstream.gate = threading.Event()  # a slow downstream: every answer waits
    downstream.start()
    sink = ForwardSink(f"http://127.0.0.1:{downstream.port}/", tmp_path / "spool.db", concurrency=4)
    try:
        sink.write([parse_alert(line) for line in rule_lines("slow", 20)])
        wait_until(lambda: downstream.in_flight == 4)
        assert sink.max_in_flight_seen == 4, "as many as allowed, and no more"
        downstream.gate.set()
        wait_until(lambda: sink.delivered == 20)
    finally:
        sink.close()
    assert downstream.max_in_flight == 4


def test_forward_spool_is_bounded_and_counts_what_it_drops(tmp_path):
    with closed_port() as port:
        sink = ForwardSink(
            f"http://127.0.0.1:{port}/", tmp_path / "spool.db", max_items=3, backoff=(5.0, 5.0)
        )
        try:
            sink.write([parse_alert(line) for line in rule_lines("b", 5)])
            assert (len(sink.spool), sink.spool.dropped) == (3, 2)
        finally:
            sink._stop.set()
            for worker in sink._workers:
                worker.join()
            sink.spool.close()


# --- the HTTP intake ----------------------------------------------------------------------


def inbox_with(tmp_path: Path, lines: list[bytes]) -> Path:
    """An inbox as the intake leaves it: these lines accepted, nothing processed yet."""
    writer = InboxWriter(tmp_path / "inbox")
    writer.put_many(lines)
    writer.close()
    return tmp_path / "inbox"


def left_in(inbox: Path) -> list[bytes]:
    """What a pipeline restarted now would be handed."""
    reader, found = InboxLogReader(inbox), []
    while batch := reader.read(100):
        found.extend(body for _, body in batch)
    return found


def test_inbox_keeps_accepted_alerts_across_a_crash(tmp_path):
    inbox = inbox_with(tmp_path, GRANDCHILD.read_bytes().splitlines())
    # the pipeline process crashed before it read anything
    pipeline, sink = pipeline_with_sink()
    reader = InboxReader(pipeline, InboxLogReader(inbox))
    reader.stop()
    reader.run()  # after the restart: drains what was accepted
    assert [u for _, u in users(sink.alerts)] == ["alice@corp.example"] * 2
    assert left_in(inbox) == []


class BrokenSink:
    """A sink whose disk is full: it refuses every batch."""

    def write(self, alerts) -> None:
        raise OSError(28, "No space left on device")

    def close(self) -> None:
        pass


def test_inbox_items_leave_only_after_every_sink_took_them(tmp_path):
    lines = GRANDCHILD.read_bytes().splitlines()
    inbox = inbox_with(tmp_path, lines)
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    pipeline = Pipeline(Attributor(verifier), [MemorySink(), BrokenSink()])
    failing = InboxReader(pipeline, InboxLogReader(inbox, save_every=0))
    with pytest.raises(OSError, match="No space left"):
        failing.process_pending()
    assert left_in(inbox) == lines, "nothing is acknowledged that a sink did not take"
    pipeline, sink = pipeline_with_sink()
    reader = InboxReader(pipeline, InboxLogReader(inbox, save_every=0))
    assert reader.process_pending() == 3
    assert [u for _, u in users(sink.alerts)] == ["alice@corp.example"] * 2
    assert left_in(inbox) == []


def test_an_alert_held_for_its_late_root_stays_in_the_inbox_across_a_crash(tmp_path):
    child, root = (FALCO / "out_of_order.jsonl").read_bytes().splitlines()
    writer = InboxWriter(tmp_path / "inbox")
    writer.put_many([child])
    pipeline, sink = pipeline_with_sink(hold=60.0)
    first = InboxReader(pipeline, InboxLogReader(tmp_path / "inbox", save_every=0))
    assert first.process_pending() == 1
    assert (sink.alerts, pipeline.attributor.held) == ([], 1)
    assert left_in(tmp_path / "inbox") == [child], "held back, so not acknowledged"
    # kill -9 of the pipeline process: the held alert was only in its memory
    writer.put_many([root])
    pipeline, sink = pipeline_with_sink(hold=60.0)
    second = InboxReader(pipeline, InboxLogReader(tmp_path / "inbox", save_every=0))
    assert second.process_pending() == 2  # the held one again, then its root
    assert users(sink.alerts) == [("Read sensitive file untrusted", "alice@corp.example")]
    assert left_in(tmp_path / "inbox") == []


def dead_letters(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    ("time_field", "why"),
    [("2026-13-01T00:00:00Z", "is not a valid date"), ("bogus", "is not RFC 3339")],
)
def test_an_alert_that_cannot_be_read_is_dead_lettered_and_the_rest_goes_on(
    tmp_path, time_field, why
):
    good = rule_lines("good", 2)
    bad = json.dumps({**json.loads(good[0]), "rule": "bad", "time": time_field}).encode()
    inbox = inbox_with(tmp_path, [good[0], bad, good[1]])
    pipeline, sink = pipeline_with_sink()
    pipeline.dead_letters = DeadLetters(tmp_path / "dead-letters.jsonl")
    assert InboxReader(pipeline, InboxLogReader(inbox, save_every=0)).process_pending() == 3
    assert [a["rule"] for a in sink.alerts] == ["good 0", "good 1"]
    assert left_in(inbox) == [], "the bad one is accounted for too: in the dead letters"
    (letter,) = dead_letters(tmp_path / "dead-letters.jsonl")
    assert letter["reason"] == "not_an_alert" and why in letter["detail"]
    assert json.loads(letter["line"])["rule"] == "bad", "kept as it came"
    assert pipeline.stats["skipped_not_an_alert"] == 1


class Fussy:
    """A sink that cannot take one alert (its data, not its disk), and takes the rest."""

    def __init__(self) -> None:
        self.alerts: list[dict] = []

    def write(self, alerts) -> None:
        if any(a["rule"] == "poison 1" for a in alerts):
            raise ValueError("cannot store this one")
        self.alerts.extend(alerts)

    def close(self) -> None:
        pass


def test_a_sink_failing_on_one_alert_costs_that_alert_alone(tmp_path):
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    fussy, other = Fussy(), MemorySink()
    pipeline = Pipeline(
        Attributor(verifier),
        [fussy, other],
        dead_letters=DeadLetters(tmp_path / "dead-letters.jsonl"),
    )
    pipeline.feed(rule_lines("poison", 3))
    assert [a["rule"] for a in fussy.alerts] == ["poison 0", "poison 2"]
    assert [a["rule"] for a in other.alerts] == ["poison 0", "poison 1", "poison 2"]
    (letter,) = dead_letters(tmp_path / "dead-letters.jsonl")
    assert (letter["reason"], letter["where"]) == ("sink_error", "file line 2 (Fussy)")
    assert "ValueError: cannot store this one" in letter["detail"]


class BuggyAttributor(Attributor):
    """A defect in the core, on one alert."""

    def submit(self, alert, now):
        if alert["rule"] == "trigger 1":
            raise KeyError("proc.pid")
        return super().submit(alert, now)


def test_a_defect_on_one_alert_never_stops_the_stream(tmp_path):
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    sink = MemorySink()
    pipeline = Pipeline(
        BuggyAttributor(verifier), [sink], dead_letters=DeadLetters(tmp_path / "dead.jsonl")
    )
    assert pipeline.feed(rule_lines("trigger", 3)) == 3
    assert [a["rule"] for a in sink.alerts] == ["trigger 0", "trigger 2"]
    (letter,) = dead_letters(tmp_path / "dead.jsonl")
    assert letter["reason"] == "error" and "KeyError" in letter["detail"]


def test_the_dead_letter_file_is_bounded(tmp_path):
    letters = DeadLetters(tmp_path / "dead.jsonl", max_bytes=1000)
    for n in range(20):
        letters.add("not_json", "http line 1", b"x" * 200, f"broken {n}")
    assert (tmp_path / "dead.jsonl").stat().st_size <= 1000
    assert (tmp_path / "dead.jsonl.1").stat().st_size <= 1000
    assert letters.written == 20


def test_intake_serves_health_and_metrics_through_flask(tmp_path):
    from webhook.attribution.app import create_consumer_app

    client = create_consumer_app().test_client()
    assert client.get("/healthz").status_code == 200
    assert b"whoexec_consumer_alerts_in" in client.get("/metrics").data


def test_readiness_follows_the_pipeline_heartbeat(tmp_path):
    from webhook.attribution.app import create_consumer_app

    heartbeat = tmp_path / "pipeline.alive"
    client = create_consumer_app(heartbeat).test_client()
    assert client.get("/readyz").status_code == 503
    heartbeat.touch()
    assert client.get("/readyz").status_code == 200
    os.utime(heartbeat, (time.time() - 60, time.time() - 60))
    assert client.get("/readyz").status_code == 503


# --- the store over HTTP ------------------------------------------------------------------


@pytest.fixture
def api(tmp_path, store_url):
    from webhook.attribution.app import create_consumer_app
    from webhook.sessions.store import open_store

    store = open_store(store_url)
    app = create_consumer_app(store=store)
    yield app.test_client()
    store.close()


def test_k8s_audit_takes_the_audit_webhook_backend_event_list(api):
    body = (DATA / "audit" / "eventlist.json").read_bytes()
    reply = api.post("/k8s-audit", data=body, content_type="application/json")
    assert reply.status_code == 200
    assert reply.get_json()["exec"] == 5, "exec events: alice's three stages, bob, dave"
    assert reply.get_json()["unattributed"] == 1
    findings = api.get("/api/findings?since=2020-01-01T00:00:00Z").get_json()
    assert findings[0]["kind"] == "Exec not attributed by the webhook"


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"{]", "not JSON"), (b'{"kind":"Event"}', "EventList"), (b'{"kind":"EventList"}', "items")],
)
def test_k8s_audit_refuses_what_is_not_an_event_list(api, body, message):
    reply = api.post("/k8s-audit", data=body, content_type="application/json")
    assert reply.status_code == 400
    assert message in reply.get_json()["error"]


def test_api_answers_the_same_queries_as_the_cli(api):
    api.post("/k8s-audit", data=(DATA / "audit" / "eventlist.json").read_bytes())
    since = "since=2020-01-01T00:00:00Z"
    sessions = api.get(f"/api/sessions?{since}&user=dave@corp.example").get_json()
    assert [s["command"] for s in sessions] == [["psql", "-U", "app"]]
    sid = sessions[0]["session_id"]
    assert api.get(f"/api/sessions/{sid}").get_json()["pod"] == "payments-0"
    assert api.get("/api/sessions/unknown").status_code == 404
    users = api.get(f"/api/users?{since}").get_json()
    assert {u["user_name"] for u in users} == {"alice@corp.example", "dave@corp.example"}
    assert api.get("/api/sessions?since=yesterday").status_code == 400


def test_api_without_a_store_says_so(tmp_path):
    from webhook.attribution.app import create_consumer_app

    client = create_consumer_app().test_client()
    reply = client.get("/api/sessions")
    assert reply.status_code == 404
    assert reply.get_json() == {"error": "no session store: start the consumer with --db"}


def test_api_reads_the_last_day_of_sessions_and_the_last_week_of_users_by_default(api):
    api.post("/k8s-audit", data=(DATA / "audit" / "eventlist.json").read_bytes())
    # the EventList is of 2026-11-22: older than a day, and than a week, from today
    assert api.get("/api/sessions").get_json() == []
    assert api.get("/api/users").get_json() == []
    assert api.get("/api/findings").get_json() == []
    assert api.get("/api/sessions?since=2020-01-01T00:00:00Z").get_json() != []


@pytest.mark.parametrize("path", ["/api/sessions", "/api/users", "/api/findings"])
def test_api_names_the_argument_of_a_bad_time(api, path):
    reply = api.get(f"{path}?until=soon")
    assert reply.status_code == 400
    assert reply.get_json() == {
        "error": "until: 'soon' is neither a duration (30m, 24h, 7d, 2w) nor an RFC 3339 "
        "time (2026-11-22T10:00:00Z)"
    }


def test_an_audit_body_over_the_limit_is_refused_before_it_is_read(tmp_path, store_url):
    from webhook.attribution.app import create_consumer_app
    from webhook.sessions.store import open_store

    store = open_store(store_url)
    try:
        client = create_consumer_app(store=store, max_body_bytes=1024).test_client()
        body = (DATA / "audit" / "eventlist.json").read_bytes()
        assert len(body) > 1024
        reply = client.post("/k8s-audit", data=body, content_type="application/json")
        assert reply.status_code == 413
        assert client.get("/api/sessions?since=2020-01-01T00:00:00Z").get_json() == []
    finally:
        store.close()


@pytest.mark.parametrize("peer", ["10.0.0.5", "192.168.1.7", "::ffff:10.1.2.3", "fe80::1"])
def test_without_a_token_file_the_audit_webhook_and_the_api_answer_loopback_only(peer):
    from webhook.attribution.app import create_consumer_app

    client = create_consumer_app().test_client()
    for method, path in (("POST", "/k8s-audit"), ("GET", "/api/sessions"), ("GET", "/api/users")):
        remote = client.open(path, method=method, environ_base={"REMOTE_ADDR": peer})
        assert remote.status_code == 403
        assert "--api-token-file" in remote.get_json()["error"]
        local = client.open(path, method=method, environ_base={"REMOTE_ADDR": "127.0.0.1"})
        assert local.status_code == 404, "loopback passes (and finds no store here)"
    probe = client.get("/readyz", environ_base={"REMOTE_ADDR": peer})
    assert probe.status_code == 200, "the kubelet's probes ask for nothing"


API_TOKEN = "consumer-api-token-0123456789abcdef"


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        (None, 401),
        (f"Basic {API_TOKEN}", 401),
        (API_TOKEN, 401),
        ("Bearer nope", 401),
        (f"Bearer {API_TOKEN}x", 401),
        (f"Bearer  {API_TOKEN}", 401),
        (f"bearer {API_TOKEN}", 401),
        (f"Bearer {API_TOKEN}", 404),  # in (and finds no store here)
    ],
)
def test_with_a_token_file_the_audit_webhook_and_the_api_take_only_the_bearer_token(
    tmp_path, authorization, status
):
    from webhook.attribution.apitoken import TokenFile
    from webhook.attribution.app import create_consumer_app

    (tmp_path / "api-token").write_text(API_TOKEN + "\n")
    client = create_consumer_app(api_token=TokenFile(tmp_path / "api-token")).test_client()
    headers = {"Authorization": authorization} if authorization else {}
    for method, path in (("POST", "/k8s-audit"), ("GET", "/api/sessions"), ("GET", "/api/users")):
        # loopback is no way around the token once there is one
        reply = client.open(
            path, method=method, headers=headers, environ_base={"REMOTE_ADDR": "127.0.0.1"}
        )
        assert reply.status_code == status, (path, reply.get_json())
        if status == 401:
            assert reply.get_json() == {"error": "send Authorization: Bearer <the API token>"}
            assert reply.headers["WWW-Authenticate"] == 'Bearer realm="whoexec"'
    assert client.get("/readyz", environ_base={"REMOTE_ADDR": "10.0.0.5"}).status_code == 200


def test_a_rotated_token_file_is_read_again_and_a_missing_one_refuses_saying_why(tmp_path):
    from webhook.attribution.apitoken import TokenFile
    from webhook.attribution.app import create_consumer_app

    path = tmp_path / "api-token"
    path.write_text(API_TOKEN)
    client = create_consumer_app(api_token=TokenFile(path)).test_client()
    old = {"Authorization": f"Bearer {API_TOKEN}"}
    assert client.get("/api/sessions", headers=old).status_code == 404
    path.write_text("the-rotated-token-0123456789abcdef\n")
    assert client.get("/api/sessions", headers=old).status_code == 401
    new = {"Authorization": "Bearer the-rotated-token-0123456789abcdef"}
    assert client.get("/api/sessions", headers=new).status_code == 404
    for gone in ("", None):  # an empty Secret, then none: nobody is let in, and why
        if gone is None:
            path.unlink()
        else:
            path.write_text(gone)
        reply = client.get("/api/sessions", headers={"Authorization": "Bearer "})
        assert (reply.status_code, reply.get_json()) == (
            503,
            {"error": f"the API token file {path} is missing or empty"},
        )


def test_an_unreadable_token_file_lets_nobody_in_and_is_logged_once_per_change(tmp_path, caplog):
    from webhook.attribution.apitoken import TokenFile

    path = tmp_path / "api-token"
    path.write_bytes(b"\xff\xfe not text")
    token = TokenFile(path)
    assert (token.current(), token.current()) == ("", "")
    assert not token.matches("")
    assert [m for m in caplog.messages if "API token file" in m] == [
        f"cannot read the API token file {path}: 'utf-8' codec can't decode byte 0xff in "
        "position 0: invalid start byte"
    ], "once, until the file changes"
    path.write_text(API_TOKEN)
    assert token.matches(API_TOKEN)


def test_alerts_left_in_an_older_version_s_sqlite_inbox_are_moved_not_lost(tmp_path):
    from webhook.attribution.app import move_sqlite_inbox
    from webhook.attribution.spool import Spool

    lines = GRANDCHILD.read_bytes().splitlines()
    old = Spool(tmp_path / "inbox.db")
    old.put_many(lines)
    old.close()
    writer = InboxWriter(tmp_path / "inbox")
    assert move_sqlite_inbox(tmp_path / "inbox.db", writer) == 3
    assert left_in(tmp_path / "inbox") == lines
    assert not list(tmp_path.glob("inbox.db*")), "moved once: the old inbox is gone"
    assert move_sqlite_inbox(tmp_path / "inbox.db", writer) == 0


def test_an_older_sqlite_inbox_left_by_a_kill_is_moved_whole_with_what_its_wal_held(tmp_path):
    import shutil

    from webhook.attribution.app import move_sqlite_inbox
    from webhook.attribution.spool import Spool

    lines = [b'{"n": %d}' % n for n in range(10_005)]  # more than one batch of 10,000
    live = Spool(tmp_path / "live.db")
    live.put_many(lines)
    # what `kill -9` leaves: the database with its -wal and -shm, never checkpointed
    (tmp_path / "old").mkdir()
    for suffix in ("", "-wal", "-shm"):
        shutil.copy(tmp_path / f"live.db{suffix}", tmp_path / "old" / f"inbox.db{suffix}")
    live.close()
    writer = InboxWriter(tmp_path / "inbox")
    assert move_sqlite_inbox(tmp_path / "old" / "inbox.db", writer) == 10_005
    assert left_in(tmp_path / "inbox") == lines, "in order, none lost, none twice"
    assert list((tmp_path / "old").iterdir()) == [], "the database and its -wal and -shm"


def test_the_consumer_s_metrics_live_in_its_state_dir_and_start_clean(tmp_path, monkeypatch):
    from webhook.serving import prepare_metrics_dir

    # set first, so that monkeypatch takes back what prepare_metrics_dir sets (a delenv of
    # an absent variable records nothing: the directory leaked into every later test)
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    stale = tmp_path / "state" / "metrics" / "counter_12345.db"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"left by a consumer killed with -9")
    directory = prepare_metrics_dir(2, tmp_path / "state" / "metrics")
    assert directory == tmp_path / "state" / "metrics"
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
    assert list(directory.iterdir()) == [], "what a killed run left is gone"
    assert directory.stat().st_mode & 0o077 == 0


def test_a_first_start_makes_the_state_dir_for_its_metrics(tmp_path, monkeypatch):
    from webhook.serving import prepare_metrics_dir

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")
    directory = prepare_metrics_dir(2, tmp_path / "new" / "state" / "metrics")
    assert directory is not None and directory.is_dir()
    assert prepare_metrics_dir(1, tmp_path / "one") is None, "one process needs no directory"
    assert not (tmp_path / "one").exists()


@pytest.mark.slow
def test_the_webhook_s_temporary_metrics_dir_outlives_its_workers_and_goes_with_it(tmp_path):
    # `whoexec serve` has no state dir: its metrics live in a temporary directory, which a
    # gunicorn worker exiting first must not take away from the others
    code = (
        "import os, sys\n"
        "from webhook.serving import prepare_metrics_dir\n"
        "made = prepare_metrics_dir(2)\n"
        "assert os.environ['PROMETHEUS_MULTIPROC_DIR'] == str(made)\n"
        "worker = os.fork()\n"
        "if worker == 0:\n"
        "    sys.exit(0)\n"
        "os.waitpid(worker, 0)\n"
        "print(made, made.is_dir(), oct(made.stat().st_mode & 0o777))\n"
    )
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    made, alive, mode = done.stdout.split()
    assert Path(made).parent == tmp_path and Path(made).name.startswith("whoexec-metrics-")
    assert (alive, mode) == ("True", "0o700"), "still there after a worker exited"
    assert not Path(made).exists(), "removed when the server exits"


def test_a_line_is_done_only_once_every_alert_it_carried_is():
    # an inbox body can carry several alerts: it may be forgotten only when the last of
    # them, held back for a late root, has reached the sinks
    now = [0.0]
    done: list[object] = []
    sink = MemorySink()
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    pipeline = Pipeline(
        Attributor(verifier, hold_seconds=5), [sink], clock=lambda: now[0], on_done=done.extend
    )
    template = json.loads(rule_lines("x", 1)[0])
    on_the_host = {**template, "rule": "on the host"}
    on_the_host["output_fields"] = {**template["output_fields"], "container.id": "host"}
    in_a_container = {**template, "rule": "in a container"}  # held: its root may come
    pipeline.feed([json.dumps([on_the_host, in_a_container]).encode()], tags=["body-1"])
    assert [a["rule"] for a in sink.alerts] == ["on the host"]
    assert (done, pipeline.attributor.held) == ([], 1)
    now[0] = 5.0
    pipeline.tick()
    assert [a["rule"] for a in sink.alerts] == ["on the host", "in a container"]
    assert done == ["body-1"]


def test_each_input_that_is_no_alert_is_dead_lettered_with_its_reason_and_place(tmp_path, caplog):
    from prometheus_client import REGISTRY

    def skipped(reason: str) -> float:
        return (
            REGISTRY.get_sample_value("whoexec_consumer_lines_skipped_total", {"reason": reason})
            or 0
        )

    before = {reason: skipped(reason) for reason in ("not_json", "not_an_alert", "internal")}
    good = json.loads(rule_lines("good", 1)[0])
    internal = {**good, "source": "internal", "rule": "Falco internal: syscall event drop"}
    pipeline, sink = pipeline_with_sink()
    pipeline.dead_letters = DeadLetters(tmp_path / "dead.jsonl")
    lines = [
        b"not json",
        b"\xff\xfe{",  # not even UTF-8: kept, with replacement characters
        json.dumps([{"rule": 1}, good]).encode(),  # one bad item of two
        json.dumps([internal, good]).encode(),  # Falco's own message, then an alert
    ]
    assert pipeline.feed(lines) == 2
    assert [a["rule"] for a in sink.alerts] == ["good 0", "good 0"]
    letters = dead_letters(tmp_path / "dead.jsonl")
    assert all(isinstance(letter.pop("time"), float) for letter in letters)
    details = [letter.pop("detail") for letter in letters]
    assert letters == [
        {"reason": "not_json", "where": "file line 1", "line": "not json"},
        {"reason": "not_json", "where": "file line 2", "line": "\ufffd\ufffd{"},
        {"reason": "not_an_alert", "where": "file line 3", "line": '{"rule":1}'},
    ]
    assert details[0] == "invalid literal, expected 'null': line 1 column 1 (char 0)"
    assert details[2] == "field 'rule' must be str, got int"
    assert (pipeline.stats["skipped_not_json"], pipeline.stats["skipped_not_an_alert"]) == (2, 1)
    assert pipeline.stats["skipped_internal"] == 1, "counted, but no data to keep"
    after = {reason: skipped(reason) - before[reason] for reason in before}
    assert after == {"not_json": 2, "not_an_alert": 1, "internal": 1}
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "skipped input: not_an_alert: file line 3: field 'rule' must be str, got int" in warned
    assert (
        "skipped input: internal: file line 4: Falco internal message " + repr(internal["rule"])
        in warned
    )


def test_a_dead_letter_keeps_2000_characters_of_detail_and_rotates_past_its_bound(tmp_path):
    path = tmp_path / "state" / "dead" / "letters.jsonl"  # its folders are made
    letters = DeadLetters(path, max_bytes=10_000)
    letters.add("error", "http line 1", "x", "d" * 5000)
    (first,) = dead_letters(path)
    assert first["detail"] == "d" * 2000
    letters.max_bytes = path.stat().st_size + 100  # the next one does not fit
    letters.add("error", "http line 1", "x", "d" * 5000)
    assert len(dead_letters(path.with_name("letters.jsonl.1"))) == 1
    assert len(dead_letters(path)) == 1
    assert letters.written == 2


def test_a_dead_letter_that_cannot_be_written_is_still_counted_and_logged(tmp_path, caplog):
    from prometheus_client import REGISTRY

    def dead(reason: str) -> float:
        return (
            REGISTRY.get_sample_value("whoexec_consumer_dead_letters_total", {"reason": reason})
            or 0
        )

    path = tmp_path / "dead.jsonl"
    path.mkdir()  # a folder where the file should be
    before = dead("not_json")
    letters = DeadLetters(path)
    letters.add("not_json", "http line 1", b"x", "broken")
    assert letters.written == 1 and dead("not_json") == before + 1
    (record,) = [r for r in caplog.records if r.levelname == "ERROR"]
    assert record.getMessage() == f"cannot write the dead-letter file {path}: Is a directory"


def test_a_line_whose_alert_failed_is_done_too_so_the_inbox_never_hands_it_out_again(tmp_path):
    from prometheus_client import REGISTRY

    def alerts_in() -> float:
        return REGISTRY.get_sample_value("whoexec_consumer_alerts_in_total", {"input": "file"}) or 0

    before = alerts_in()
    done: list[object] = []
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    pipeline = Pipeline(
        BuggyAttributor(verifier),
        [MemorySink()],
        dead_letters=DeadLetters(tmp_path / "dead.jsonl"),
        on_done=done.extend,
    )
    lines = rule_lines("trigger", 3)
    assert pipeline.feed(lines, tags=["a", "b", "c"]) == 3
    assert sorted(done) == ["a", "b", "c"]
    (letter,) = dead_letters(tmp_path / "dead.jsonl")
    assert (letter["reason"], letter["where"], letter["detail"]) == (
        "error",
        "file line 2",
        "KeyError: 'proc.pid'",
    )
    assert json.loads(letter["line"]) == json.loads(lines[1])
    pipeline.feed(rule_lines("more", 2))
    assert pipeline.stats["alerts_in"] == 5 and alerts_in() == before + 5


def test_closing_hands_out_what_is_held_and_its_lines_are_done():
    done: list[object] = []
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    sink = MemorySink()
    pipeline = Pipeline(Attributor(verifier, hold_seconds=60), [sink], on_done=done.extend)
    pipeline.feed(rule_lines("held", 2), tags=["one", "two"])
    assert (done, sink.alerts) == ([], [])
    pipeline.close()
    assert [a["rule"] for a in sink.alerts] == ["held 0", "held 1"]
    assert done == ["one", "two"]


# --- a consumer built from its settings: each setting reaches what it is for ---------------


def built(tmp_path: Path, signer, **values) -> tuple:
    """A consumer built as `whoexec consume` builds it, trusting ``signer``, with
    ``values`` for its settings; and a sink of what it passes on."""
    from cryptography.hazmat.primitives import serialization

    from webhook.attribution.app import build_consumer
    from webhook.settings import Settings

    pub = tmp_path / "identity.pub"
    pub.write_bytes(
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    settings = Settings(identity_pub=(pub,), state_dir=tmp_path / "state", hold_seconds=0, **values)
    sink = MemorySink()
    consumer = build_consumer(settings, stdout=None, input_name="wired", extra_sinks=[sink])
    return consumer, sink


def test_forwarded_alerts_wait_in_the_state_dir_spool_of_the_size_set_then_are_delivered(
    tmp_path, signer
):
    downstream = Downstream()  # refuses connections until started
    try:
        values = {"forward_url": f"http://127.0.0.1:{downstream.port}/", "forward_spool_items": 2}
        consumer, _ = built(tmp_path, signer, **values)
        consumer.pipeline.feed(rule_lines("while-down", 3), where="test")
        consumer.close()
        from webhook.attribution.spool import Spool

        spool = Spool(tmp_path / "state" / "forward-spool.db")
        kept = [json.loads(body)["rule"] for _, body in spool.peek(10)]
        spool.close()
        assert kept == ["while-down 1", "while-down 2"], "the oldest gave way"

        downstream.start()
        consumer, _ = built(tmp_path, signer, **values)
        wait_until(lambda: len(downstream.bodies) == 2)
        consumer.close()
        assert sorted(body["rule"] for body in downstream.bodies) == kept  # sent 8 at once
    finally:
        downstream.stop()


def test_alerts_are_counted_under_the_input_they_came_from(tmp_path, signer):
    from prometheus_client import REGISTRY

    def read() -> float:
        sample = REGISTRY.get_sample_value("whoexec_consumer_alerts_in_total", {"input": "wired"})
        return sample or 0.0

    before = read()
    consumer, _ = built(tmp_path, signer)
    consumer.pipeline.feed(rule_lines("counted", 2), where="test")
    consumer.close()
    assert read() - before == 2


def test_a_consumer_with_its_own_identity_variable_attributes_and_stores_under_that_name(
    tmp_path, signer
):
    import orjson

    from tests.attribution.test_lineage import make_token, root_alert
    from webhook.sessions.store import open_store

    token, _ = make_token(signer)
    db = f"sqlite:///{tmp_path}/whoexec.db"
    consumer, sink = built(tmp_path, signer, identity_variable="MYCO_ID", db=db)
    root = root_alert(
        40, token, **{"proc.args": f"MYCO_ID={token} sh", "proc.cmdline": f"env MYCO_ID={token} sh"}
    )
    root["tags"] = [WHOEXEC_TAG]  # whoexec's own session-root rule
    child = root_alert(41, "", **{"proc.args": "cat /etc/shadow", "proc.apid[1]": 40})
    consumer.pipeline.feed([orjson.dumps(root), orjson.dumps(child)], where="test")
    consumer.close()
    (alert,) = [a for a in sink.alerts if a["output_fields"]["proc.pid"] == 41]
    assert alert["output_fields"]["whoexec.attribution"] == "verified"
    store = open_store(db)
    try:
        stored = store.session("s-1")  # make_token's
    finally:
        store.close()
    assert stored is not None and stored["command"] == ["sh"]
    args = {p["pid"]: p["args"] for p in stored["processes"]}
    assert args[40] == f"env MYCO_ID={token[:19]}... sh", "the stored token is cut to its kid"


def test_a_fact_the_store_refuses_is_a_dead_letter_of_the_consumer_that_read_it(
    tmp_path, signer, monkeypatch
):
    import orjson

    import webhook.sessions.store as store_module
    from tests.attribution.test_lineage import make_token, root_alert
    from webhook.errors import StoreError

    real_open = store_module.open_store

    class RefusesOneRule:
        def __init__(self, url: str) -> None:
            self.real = real_open(url)

        def ingest(self, batch) -> None:
            if any(alert.rule == "refuse me" for alert in batch.alerts):
                raise StoreError("invalid byte sequence")
            self.real.ingest(batch)

        def __getattr__(self, name: str):
            return getattr(self.real, name)

    monkeypatch.setattr(store_module, "open_store", RefusesOneRule)
    token, _ = make_token(signer)
    consumer, _ = built(tmp_path, signer, db=f"sqlite:///{tmp_path}/whoexec.db")
    root = root_alert(40, token)
    child = {**root_alert(41, "", **{"proc.args": "cat", "proc.apid[1]": 40}), "rule": "refuse me"}
    consumer.pipeline.feed([orjson.dumps(root), orjson.dumps(child)], where="test")
    consumer.close()
    (letter,) = [
        json.loads(line)
        for line in (tmp_path / "state" / "dead-letters.jsonl").read_bytes().splitlines()
    ]
    assert (letter["reason"], letter["where"], letter["detail"]) == (
        "store_rejected",
        "StoreWriter",
        "StoreError: invalid byte sequence",
    )
    assert json.loads(letter["line"])["rule"] == "refuse me"
