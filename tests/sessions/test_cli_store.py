"""The audit CLI: every command through click's runner, and once as a real subprocess."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import DATA
from webhook.cli import main

FALCO = DATA / "falco"
AUDIT_LOG = DATA / "audit" / "kube-apiserver-audit.log"
ALICE_SID = "0d3c4a8e-7f21-4b6a-9c55-1e2f3a4b5c6d"
EVER = "2020-01-01T00:00:00Z"


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env)


def consume_into(store_url: str, scenario: str) -> None:
    """`whoexec consume --db` over one Falco fixture."""
    result = run(
        "consume",
        "--input",
        str(FALCO / f"{scenario}.jsonl"),
        "--identity-pub",
        str(FALCO / "identity.pub"),
        "--db",
        store_url,
        "--no-stdout",
    )
    assert result.exit_code == 0, result.output


@pytest.fixture
def db(store_url: str, tmp_path: Path) -> str:
    """A store filled by the real commands: consume --db, then audit ingest."""
    consume_into(store_url, "shell_and_grandchild")
    state = tmp_path / "state"
    result = run("audit", "ingest", str(AUDIT_LOG), "--db", store_url, "--state-dir", str(state))
    assert result.exit_code == 0, result.output
    assert "2 malformed lines skipped" in result.stderr
    letters = (state / "audit-dead-letters.jsonl").read_text().splitlines()
    assert [json.loads(x)["where"] for x in letters] == [f"{AUDIT_LOG} line {n}" for n in (3, 5)], (
        "each skipped line is kept whole"
    )
    assert "1 exec or debug not attributed by the webhook" in result.stderr
    return store_url


def test_sessions_table_shows_user_pod_commands_and_alerts(db):
    result = run("sessions", "--db", db, "--since", EVER)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["started", "(UTC)", "user"]
    alice = next(line for line in lines if "alice@corp.example" in line)
    assert "2026-11-22T09:59:59Z" in alice
    assert "web-7d9f8b6c5-x2k4q" in alice and "Warning:1 Notice:1" in alice
    assert lines.index(alice) > 2, "newest first: dave's later session comes before"


def test_sessions_json_and_csv_are_for_machines(db):
    rows = json.loads(run("sessions", "--db", db, "--since", EVER, "--format", "json").stdout)
    alice = next(r for r in rows if r["user_name"] == "alice@corp.example")
    assert alice["started_utc"] == "2026-11-22T09:59:59Z"
    assert alice["alerts"] == {"Notice": 1, "Warning": 1}
    table = list(
        csv.reader(
            io.StringIO(run("sessions", "--db", db, "--since", EVER, "--format", "csv").stdout)
        )
    )
    assert table[0][0] == "started (UTC)"
    assert any(row[1] == "alice@corp.example" for row in table[1:])


def test_sessions_filters_by_user_and_window(db):
    only = json.loads(
        run(
            "sessions",
            "--db",
            db,
            "--user",
            "dave@corp.example",
            "--since",
            EVER,
            "--format",
            "json",
        ).stdout
    )
    assert [r["user_name"] for r in only] == ["dave@corp.example"]
    none = json.loads(
        run(
            "sessions",
            "--db",
            db,
            "--since",
            EVER,
            "--until",
            "2026-11-22T09:00:00Z",
            "--format",
            "json",
        ).stdout
    )
    assert none == []


def test_session_timeline_in_order(db):
    result = run("session", ALICE_SID, "--db", db)
    assert result.exit_code == 0, result.output
    timeline = [line for line in result.stdout.splitlines() if line.startswith("2026-")]
    kinds = [line.split()[1] for line in timeline]
    assert kinds == ["audit", "root", "alert", "command", "alert"]
    assert "alice@corp.example" in result.stdout and "/bin/bash" in timeline[0]
    assert (
        json.loads(run("session", ALICE_SID, "--db", db, "--format", "json").stdout)["session_id"]
        == ALICE_SID
    )


def test_unknown_session_is_a_clear_error(db):
    result = run("session", "nope", "--db", db)
    assert result.exit_code == 1
    assert "no session 'nope'" in result.output


def test_users_and_findings(db):
    users = json.loads(run("users", "--db", db, "--since", EVER, "--format", "json").stdout)
    assert {u["user_name"] for u in users} == {"alice@corp.example", "dave@corp.example"}
    result = run("findings", "--db", db, "--since", EVER)
    assert "Exec not attributed by the webhook" in result.stdout
    assert "bob@corp.example" in result.stdout


def test_prune_older_than(db):
    # the fixtures are dated 2026-11-22 10:00Z: younger than ten years, older than a minute
    kept = run("prune", "--db", db, "--older-than", "3650d")
    assert kept.exit_code == 0, kept.output
    assert "sessions: 0 deleted" in kept.stdout
    result = run("prune", "--db", db, "--older-than", "1m")
    assert "sessions: 2 deleted" in result.stdout
    assert json.loads(run("sessions", "--db", db, "--since", EVER, "--format", "json").stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["sessions", "--since", "yesterday"],
            "Invalid value for '--since': 'yesterday' is neither",
        ),
        (["sessions", "--format", "xml"], "'xml' is not one of"),
        (["prune", "--older-than", "forever"], "Invalid value for '--older-than': "),
        (["audit", "crosscheck", "--grace", "-1"], "Invalid value for '--grace'"),
        (["prune"], "Missing option '--older-than'"),
    ],
)
def test_bad_values_are_click_errors(tmp_path, args, message):
    result = run(*args, "--db", f"sqlite:///{tmp_path}/x.db")
    assert result.exit_code == 2
    assert message in result.output


def test_missing_store_is_a_clear_error(tmp_path):
    result = run("sessions", "--db", f"sqlite:///{tmp_path}/absent.db")
    assert result.exit_code == 1
    assert "no session store at" in result.output


def test_db_comes_from_the_environment_too(db):
    result = run("sessions", "--since", EVER, "--format", "json", env={"WHOEXEC_DB": db})
    assert result.exit_code == 0
    assert len(json.loads(result.stdout)) == 2


@pytest.mark.slow
def test_the_cli_as_a_real_subprocess(tmp_path):
    url = f"sqlite:///{tmp_path}/real.db"
    whoexec = [sys.executable, "-m", "webhook.cli"]
    ingest = subprocess.run(
        [*whoexec, "audit", "ingest", str(AUDIT_LOG), "--db", url, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ingest.returncode == 0, ingest.stderr
    assert "line 3: not JSON" in ingest.stderr
    listed = subprocess.run(
        [*whoexec, "findings", "--db", url, "--since", EVER],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert listed.returncode == 0
    assert "Exec not attributed by the webhook" in listed.stdout


FORGED_LINE = "\n2026-11-22T09:00:00Z  audit     create exec by admin@corp.example: rm -rf /"
TERMINAL_ESCAPES = "\x1b]0;pwned\x07\x1b[2J\u202e"


@pytest.fixture
def hostile_db(tmp_path) -> str:
    """A session whose command, pod and host come from an attacker."""
    from webhook.sessions.store import Batch, open_store
    from webhook.sessions.store.model import ProcessFact, SessionFact

    url = f"sqlite:///{tmp_path / 'hostile.db'}"
    store = open_store(url)
    t0 = 1795341600_000_000_000
    store.ingest(
        Batch(
            sessions=[
                SessionFact(
                    session_id="hostile-1",
                    time_ns=t0,
                    learnt_from="token",
                    user="eve@corp.example",
                    namespace="shop",
                    pod='web,"0"\nx',
                    container="app",
                    command=("sh", "-c", f"echo hi{FORGED_LINE}{TERMINAL_ESCAPES}"),
                    attribution="verified",
                    started_ns=t0,
                )
            ],
            processes=[
                ProcessFact("hostile-1", "node-a", 42, t0, 1, f"cat x{FORGED_LINE}", t0 + 1)
            ],
        )
    )
    store.close()
    return url


def test_the_timeline_shows_control_characters_as_escapes_never_raw(hostile_db):
    result = run("session", "hostile-1", "--db", hostile_db)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "\u202e" not in result.stdout
    timeline = [line for line in result.stdout.splitlines() if line[:4].isdigit()]
    assert len(timeline) == 1, "the forged line did not become an entry of its own"
    assert "\\n2026-11-22T09:00:00Z  audit" in timeline[0]
    assert "\\x1b]0;pwned\\x07" in result.stdout


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_session_lists_escape_control_characters(hostile_db, fmt):
    result = run("sessions", "--db", hostile_db, "--since", EVER, "--format", fmt)
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\u202e" not in result.stdout
    assert "\\x1b" in result.stdout


def test_csv_quotes_commas_quotes_and_newlines_and_round_trips(hostile_db):
    result = run("sessions", "--db", hostile_db, "--since", EVER, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert len(rows) == 1
    assert rows[0]["pod"] == 'web,"0"\\nx'
    assert rows[0]["user"] == "eve@corp.example"


def test_json_keeps_the_exact_values_for_machines(hostile_db):
    result = run("sessions", "--db", hostile_db, "--since", EVER, "--format", "json")
    (row,) = json.loads(result.stdout)
    assert row["pod"] == 'web,"0"\nx'
    assert "\x1b" not in result.stdout, "JSON escapes control characters itself"


def test_a_replayed_session_is_shown_under_nobody_with_the_claim_apart(store_url):
    consume_into(store_url, "replay_stale")
    listing = run("sessions", "--db", store_url, "--since", EVER, "--format", "json")
    (row,) = json.loads(listing.stdout)
    assert (row["user_name"], row["attribution"]) == (None, "replayed")
    assert row["claimed_user"] == "bob@corp.example"
    only = run("sessions", "--db", store_url, "--since", EVER, "--attribution", "verified")
    assert only.stdout.strip() == "(none)"
    timeline = run("session", row["session_id"], "--db", store_url)
    assert "user       nobody: a replayed token (it claims bob@corp.example" in timeline.stdout
    assert "reason     stale: " in timeline.stdout
    found = run("findings", "--db", store_url, "--since", EVER, "--format", "json")
    (finding,) = json.loads(found.stdout)
    assert finding["kind"] == "Exec identity replayed"
    assert finding["user_name"] is None
