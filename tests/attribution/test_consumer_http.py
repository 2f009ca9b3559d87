"""The real `whoexec consume --listen` (gunicorn) on 127.0.0.1, fed as Falco feeds it."""

from __future__ import annotations

import http.client
import json
import os
import signal
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import DATA, http_ok, issue_client_certificate
from tests.servers import ServerProcess
from webhook.cli import main

pytestmark = pytest.mark.slow
FALCO = DATA / "falco"
LINES = (FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()
FALCO_HEADERS = {"Content-Type": "application/json", "User-Agent": "falcosecurity/falco"}


class Intake:
    def __init__(self, server: ServerProcess, output: Path, ctx) -> None:
        self.server, self.output, self.ctx = server, output, ctx
        self.proc, self.port = server.proc, server.port

    def connection(self) -> http.client.HTTPConnection:
        if self.ctx is None:
            return http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        return http.client.HTTPSConnection("localhost", self.port, context=self.ctx, timeout=10)

    def post(self, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
        conn = self.connection()
        try:
            conn.request("POST", "/falco", body=body, headers=headers or FALCO_HEADERS)
            reply = conn.getresponse()
            return reply.status, json.loads(reply.read())
        finally:
            conn.close()

    def enriched(self, count: int) -> list[dict]:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.output.exists():
                lines = self.output.read_bytes().splitlines()
                if len(lines) >= count:
                    return [json.loads(line) for line in lines]
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} enriched alerts in {self.output}")


@pytest.fixture
def start_intake(tmp_path) -> Iterator[Callable[..., Intake]]:
    started: list[ServerProcess] = []

    def start(*extra: str, ctx: ssl.SSLContext | None = None) -> Intake:
        n = len(started)
        output = tmp_path / f"enriched-{n}.jsonl"
        env = {k: v for k, v in os.environ.items() if not k.startswith("WHOEXEC_")}
        server = ServerProcess(
            [
                sys.executable,
                "-m",
                "webhook.cli",
                "consume",
                "--listen",
                "127.0.0.1:0",
                "--identity-pub",
                str(FALCO / "identity.pub"),
                "--output",
                str(output),
                "--no-stdout",
                "--hold",
                "0",
                "--state-dir",
                str(tmp_path / f"state-{n}"),
                *extra,
            ],
            tmp_path / f"consumer-{n}.log",
            env,
        )
        started.append(server)
        intake = Intake(server, output, ctx)
        server.wait_until(lambda: http_ok(intake.connection, "/healthz"), "the consumer")
        return intake

    yield start
    for server in started:
        server.stop()


def test_one_post_per_alert_like_falco_http_output(start_intake):
    intake = start_intake()
    for line in LINES:
        status, reply = intake.post(line)
        assert (status, reply["accepted"]) == (200, 1)
    alerts = intake.enriched(2)
    assert [a["output_fields"]["whoexec.user.name"] for a in alerts] == ["alice@corp.example"] * 2


def test_falcosidekick_uuid_and_ndjson_batches_are_accepted(start_intake):
    intake = start_intake()
    with_uuid = [
        json.dumps({**json.loads(line), "uuid": f"5c0b1a9e-0000-4000-8000-00000000000{i}"}).encode()
        for i, line in enumerate(LINES)
    ]
    status, reply = intake.post(b"\n".join(with_uuid) + b"\n")
    assert (status, reply["accepted"]) == (200, 3)
    alerts = intake.enriched(2)
    assert alerts[-1]["uuid"] == "5c0b1a9e-0000-4000-8000-000000000002"


def test_bad_bodies_are_refused_or_counted_and_the_rest_kept(start_intake):
    intake = start_intake()
    status, reply = intake.post(b"this is not json")
    assert status == 400
    assert "not JSON" in reply["errors"][0]
    status, reply = intake.post(LINES[0] + b"\n{broken\n" + LINES[1] + b"\n" + LINES[2])
    assert status == 200
    assert (reply["accepted"], reply["rejected"]) == (3, 1)
    assert len(intake.enriched(2)) == 2


def test_pipeline_process_stops_when_the_master_is_killed(start_intake):
    intake = start_intake()
    intake.post(b"\n".join(LINES))
    assert len(intake.enriched(2)) == 2
    intake.proc.kill()  # SIGKILL of the master alone: no on_exit hook runs
    intake.proc.wait(timeout=10)
    # the forked pipeline process notices, drains and exits; so do the workers
    intake.server.wait_group_gone()
    assert "master process is gone" in intake.server.output()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def pipeline_pid(master: int) -> int:
    """The master's children are its workers and the supervisor; the pipeline is the
    supervisor's one child."""
    (pid,) = [grandchild for child in children(master) for grandchild in children(child)]
    return pid


def test_a_pipeline_process_that_dies_is_restarted_and_nothing_is_lost(start_intake):
    intake = start_intake()
    assert intake.post(LINES[0])[0] == 200
    first = pipeline_pid(intake.proc.pid)
    os.kill(first, signal.SIGKILL)  # the OOM killer, a defect
    for line in LINES[1:]:  # accepted meanwhile: durable in the inbox
        assert intake.post(line)[0] == 200
    alerts = intake.enriched(2)  # processed by the restarted pipeline
    assert [a["output_fields"]["whoexec.user.name"] for a in alerts] == ["alice@corp.example"] * 2
    assert pipeline_pid(intake.proc.pid) != first
    assert "restarting it in 1s" in intake.server.output()


def test_sigterm_drains_what_was_accepted(start_intake):
    intake = start_intake()
    intake.post(b"\n".join(LINES))
    intake.proc.send_signal(signal.SIGTERM)
    assert intake.proc.wait(timeout=30) == 0
    assert len(intake.enriched(2)) == 2


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("consumer-tls") / "certs"
    assert CliRunner().invoke(main, ["certs", "--out", str(out)]).exit_code == 0
    issue_client_certificate(out)
    return out


def test_tls_intake(start_intake, certs):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    intake = start_intake(
        "--tls-cert", str(certs / "tls.crt"), "--tls-key", str(certs / "tls.key"), ctx=ctx
    )
    assert intake.post(LINES[0])[0] == 200


def test_mtls_intake_requires_a_client_certificate(start_intake, certs):
    ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    ctx.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    intake = start_intake(
        "--tls-cert",
        str(certs / "tls.crt"),
        "--tls-key",
        str(certs / "tls.key"),
        "--client-ca",
        str(certs / "ca.crt"),
        ctx=ctx,
    )
    assert intake.post(LINES[0])[0] == 200
    anonymous = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    conn = http.client.HTTPSConnection("localhost", intake.port, context=anonymous, timeout=10)

    def post_without_certificate() -> None:
        # with TLS 1.3 the server's refusal arrives on the first read, not in the handshake
        conn.request("POST", "/falco", body=LINES[0], headers=FALCO_HEADERS)
        conn.getresponse()

    try:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            post_without_certificate()
    finally:
        conn.close()
