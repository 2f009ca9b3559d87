"""The session store, on SQLite and on a real PostgreSQL server: the same tests for both."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import threading
import time
from collections.abc import Iterator

import pytest

from tests.conftest import DATA
from tests.servers import closed_port
from webhook.attribution.lineage import Attributor, TokenVerifier
from webhook.attribution.pipeline import MemorySink, Pipeline
from webhook.errors import StoreError, StoreUnavailable
from webhook.keyfiles import load_key_ring
from webhook.sessions.auditlog import AuditIngestor
from webhook.sessions.store import Batch, SessionQuery, open_store
from webhook.sessions.store import sql as store_sql
from webhook.sessions.store.claims import StoreRootClaims
from webhook.sessions.store.sql import FINDING_AUDIT_USER_MISMATCH, FINDING_NOT_IN_AUDIT_LOG
from webhook.sessions.store.writer import FINDING_UNATTRIBUTED, StoreWriter

FALCO = DATA / "falco"
AUDIT_LOG = DATA / "audit" / "kube-apiserver-audit.log"
ALICE_SID = "0d3c4a8e-7f21-4b6a-9c55-1e2f3a4b5c6d"
T0 = 1795341600_000_000_000
EVER = -(2**62)


def consume_into(url: str, *scenarios: str) -> None:
    """Each scenario through its own consumer: the fixtures reuse pids, as separate nodes."""
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    for name in scenarios:
        writer = StoreWriter(open_store(url))
        pipeline = Pipeline(Attributor(verifier), [MemorySink(), writer])
        pipeline.observe(writer.record)
        pipeline.feed((FALCO / f"{name}.jsonl").read_bytes().splitlines(), where=name)
        pipeline.close()


def ingest_audit(url: str) -> AuditIngestor:
    ingestor = AuditIngestor(StoreWriter(open_store(url)), "exec.whoexec.io")
    with AUDIT_LOG.open("rb") as handle:
        ingestor.feed(handle, where="audit.log")
    ingestor.close()
    return ingestor


def count(url: str, table: str) -> int:
    store = open_store(url)
    try:
        return int(store._query(f"SELECT count(*) AS n FROM {table}")[0]["n"])  # noqa: S608
    finally:
        store.close()


def test_schema_is_migrated_to_the_latest_version(store_url):
    store = open_store(store_url)
    assert store.schema_version() == store_sql.LATEST
    store.close()
    again = open_store(store_url)  # reopening migrates nothing and loses nothing
    assert again.schema_version() == store_sql.LATEST
    again.close()


def test_upgrade_from_version_1_keeps_the_data(store_url, monkeypatch):
    monkeypatch.setattr(store_sql, "MIGRATIONS", store_sql.MIGRATIONS[:1])
    monkeypatch.setattr(store_sql, "LATEST", 1)
    old = open_store(store_url)
    assert old.schema_version() == 1
    # a session as release 1 wrote it, with release 1's columns only
    with old._transaction() as cursor:
        cursor.execute(
            old._sql(
                "INSERT INTO sessions (session_id, user_name, namespace, pod, started_ns, "
                "last_seen_ns, via_token, attribution_rank) VALUES (?, ?, ?, ?, ?, ?, 1, 1)"
            ),
            (ALICE_SID, "alice@corp.example", "shop", "web-0", T0, T0),
        )
    old.close()
    monkeypatch.undo()
    new = open_store(store_url)  # the upgrade adds findings, session_roots and columns
    assert new.schema_version() == store_sql.LATEST
    (row,) = new.sessions(SessionQuery(since_ns=EVER))
    assert (row["session_id"], row["user_name"], row["attribution"]) == (
        ALICE_SID,
        "alice@corp.example",
        "verified",
    )
    assert row["claimed_user"] is None
    assert new.findings(EVER) == []
    assert new.claim_root(ALICE_SID, "app", "node-a", 42, T0) == ("node-a", 42, T0)
    new.close()


def test_newer_schema_than_this_release_is_refused(store_url, monkeypatch):
    open_store(store_url).close()
    monkeypatch.setattr(store_sql, "LATEST", 1)
    with pytest.raises(StoreError, match="newer than this whoexec"):
        open_store(store_url)


def test_consumer_writes_the_session_its_commands_and_alerts(store_url):
    consume_into(store_url, "shell_and_grandchild")
    store = open_store(store_url)
    (row,) = store.sessions(SessionQuery(user="alice@corp.example", since_ns=EVER))
    assert row["session_id"] == ALICE_SID
    assert (row["namespace"], row["pod"], row["container"]) == (
        "shop",
        "web-7d9f8b6c5-x2k4q",
        "app",
    )
    assert row["user_groups"] == ["platform-admins", "devs", "system:authenticated"]
    assert row["command"] == ["/bin/bash"]
    assert row["commands"] == 2
    assert row["alerts"] == {"Notice": 1, "Warning": 1}
    assert row["attribution"] == "verified"
    assert row["learnt_from"] == ["token"]
    detail = store.session(ALICE_SID)
    assert [p["pid"] for p in detail["processes"]] == [4242, 4300]
    assert "WHOEXEC_IDENTITY=v1." in detail["processes"][0]["args"]
    assert detail["processes"][0]["args"].endswith("... /bin/bash"), "tokens are shortened"
    assert [a["rule"] for a in detail["alerts"]] == [
        "Terminal shell in container",
        "Read sensitive file untrusted",
    ]
    store.close()


def test_ingestion_is_idempotent(store_url):
    consume_into(store_url, "shell_and_grandchild", "forged_token")
    before = {t: count(store_url, t) for t in ("sessions", "processes", "alerts", "findings")}
    consume_into(store_url, "shell_and_grandchild", "forged_token")  # a re-read after restart
    ingest_audit(store_url)
    ingest_audit(store_url)
    after = {t: count(store_url, t) for t in ("sessions", "processes", "alerts", "findings")}
    assert after["alerts"] == before["alerts"] == 4
    assert after["processes"] == before["processes"]
    assert count(store_url, "audit_events") == 4


def test_falcosidekick_uuid_is_the_idempotency_key(store_url):
    from webhook.attribution.falco import parse_alert
    from webhook.sessions.store.writer import facts_from_alerts

    alert = parse_alert((FALCO / "unrelated_container.jsonl").read_bytes().splitlines()[1])
    first = {**alert, "uuid": "5c0b1a9e-0000-4000-8000-000000000001"}
    # a retry carries the same uuid, even where what it carries differs
    retried = {**first, "output": first["output"] + " (retried)", "time": "2026-11-22T10:00:09Z"}
    # two events that look alike are still two events when falcosidekick says so
    twin = {**alert, "uuid": "5c0b1a9e-0000-4000-8000-000000000002"}
    store = open_store(store_url)
    store.ingest(facts_from_alerts([first]))
    store.ingest(facts_from_alerts([retried]))
    assert count(store_url, "alerts") == 1, "the retry is the same alert"
    store.ingest(facts_from_alerts([twin]))
    store.close()
    assert count(store_url, "alerts") == 2, "the twin is another one"


def test_audit_events_link_to_sessions_by_the_webhook_annotation(store_url):
    consume_into(store_url, "shell_and_grandchild")
    ingestor = ingest_audit(store_url)
    assert ingestor.stats["exec"] == 5  # 4 events for 3 execs, 1 cut line does not count
    store = open_store(store_url)
    detail = store.session(ALICE_SID)
    assert detail["learnt_from"] == ["token", "admission", "audit"]
    (audit,) = detail["audit_events"]
    assert audit["audit_id"] == "7b36f2ea-2e64-4b4a-a946-f387c75b7d72"
    assert audit["stage"] == "ResponseComplete", "the later stage of the same request wins"
    assert audit["verb"] == "create"
    assert audit["command"] == ["/bin/bash"]
    store.close()


def test_exec_without_the_annotation_is_a_finding_with_its_whole_command(store_url):
    ingest_audit(store_url)
    store = open_store(store_url)
    (finding,) = [f for f in store.findings(EVER) if f["kind"] == FINDING_UNATTRIBUTED]
    assert finding["user_name"] == "bob@corp.example"
    assert "['sh', '-c', 'cat /etc/shadow']" in finding["detail"]
    assert "c1a2b3c4-0000-4000-8000-00000000000b" in finding["detail"]
    store.close()


def test_attach_and_request_received_stages_are_not_findings(store_url):
    ingest_audit(store_url)
    store = open_store(store_url)
    kinds = [f["kind"] for f in store.findings(EVER)]
    assert kinds == [FINDING_UNATTRIBUTED], "only bob's exec; not the attach, not RequestReceived"
    store.close()


def test_impersonated_exec_is_recorded_as_the_impersonated_user(store_url):
    ingest_audit(store_url)
    store = open_store(store_url)
    (row,) = store.sessions(SessionQuery(user="dave@corp.example", since_ns=EVER))
    assert row["command"] == ["psql", "-U", "app"]
    assert row["learnt_from"] == ["admission", "audit"]
    assert row["attribution"] == "pending", "minted by the webhook, not yet seen by a consumer"
    store.close()


def test_malformed_audit_lines_are_named_and_the_rest_ingested(store_url):
    ingestor = ingest_audit(store_url)
    assert ingestor.stats["malformed"] == 2
    assert ingestor.errors[0].startswith("audit.log line 3: not JSON")
    assert "audit.log line 5: field 'auditID' must be a string" in ingestor.errors[1]
    assert count(store_url, "audit_events") == 4


def test_event_list_with_a_bad_item_names_its_index(store_url):
    ingestor = AuditIngestor(StoreWriter(open_store(store_url)), "exec.whoexec.io")
    body = json.loads((DATA / "audit" / "eventlist.json").read_text())
    body["items"].insert(1, {"kind": "Pod"})
    ingestor.feed_event_list(json.dumps(body).encode())
    ingestor.close()
    assert ingestor.errors[0].startswith("items[1]: expected kind Event")
    assert count(store_url, "audit_events") == 4


def test_session_queries_filter_and_sort_newest_first(store_url):
    consume_into(store_url, "shell_and_grandchild", "token_for_another_pod")
    ingest_audit(store_url)
    store = open_store(store_url)
    everything = store.sessions(SessionQuery(since_ns=EVER))
    starts = [row["started_ns"] for row in everything]
    assert starts == sorted(starts, reverse=True)
    # the replayed root is a session of its own, under nobody's name
    assert {row["user_name"] for row in everything} == {
        "alice@corp.example",
        "dave@corp.example",
        None,
    }
    assert store.sessions(SessionQuery(namespace="payments", since_ns=EVER))[0]["pod"] == (
        "payments-0"
    )
    assert store.sessions(SessionQuery(pod="nope", since_ns=EVER)) == []
    assert store.sessions(SessionQuery(since_ns=T0 + 3600 * 10**9)) == []
    assert len(store.sessions(SessionQuery(until_ns=T0 + 1, since_ns=EVER))) == 1
    assert len(store.sessions(SessionQuery(until_ns=T0 + 101, since_ns=EVER))) == 2
    (replayed,) = store.sessions(SessionQuery(attribution="replayed", since_ns=EVER))
    assert replayed["session_id"].startswith("replayed:")
    assert replayed["user_name"] is None
    assert replayed["claimed_user"] == "alice@corp.example"
    assert replayed["claimed_session_id"] == "77777777-0000-4000-8000-000000000007"
    assert replayed["reason"].startswith("bound elsewhere: token minted for pod 'payments-0'")
    assert store.session("77777777-0000-4000-8000-000000000007") is None, "never the victim's"
    store.close()


def test_session_pages_by_keyset_cover_every_session_once_in_order(store_url):
    consume_into(store_url, "shell_and_grandchild", "token_for_another_pod")
    ingest_audit(store_url)
    store = open_store(store_url)
    everything = [row["session_id"] for row in store.sessions(SessionQuery(since_ns=EVER))]
    assert len(everything) >= 3
    paged: list[str] = []
    after = None
    while True:
        page = store.sessions(SessionQuery(since_ns=EVER, after=after, limit=1))
        if not page:
            break
        paged += [row["session_id"] for row in page]
        after = (page[-1]["started_ns"], page[-1]["session_id"])
    assert paged == everything
    store.close()


def test_sessions_filter_by_alerts_and_by_having_no_verified_identity(store_url):
    consume_into(store_url, "shell_and_grandchild", "token_for_another_pod")
    ingest_audit(store_url)
    store = open_store(store_url)

    def attributions(**query) -> list[str]:
        rows = store.sessions(SessionQuery(since_ns=EVER, **query))
        return sorted(row["attribution"] for row in rows)

    everything = attributions()
    assert attributions(has_alerts=True) + attributions(has_alerts=False) != []
    assert sorted(attributions(has_alerts=True) + attributions(has_alerts=False)) == everything
    # the replayed root's session holds its alerts too, and still names nobody
    assert set(attributions(has_alerts=True)) == {"verified", "replayed"}
    # "unattributed" is every status no token vouches for: pending and unverified
    unattributed = attributions(attribution="unattributed")
    assert unattributed and set(unattributed) <= {"pending", "unverified"}
    assert len(unattributed) == sum(a in ("pending", "unverified") for a in everything)
    store.close()


def test_session_alerts_name_their_process_and_audit_events_where_they_came_from(store_url):
    consume_into(store_url, "shell_and_grandchild")
    ingest_audit(store_url)
    store = open_store(store_url)
    found = store.session(ALICE_SID)
    assert found is not None
    assert [(a["rule"], a["pid"]) for a in found["alerts"]] == [
        ("Terminal shell in container", 4242),
        ("Read sensitive file untrusted", 4300),
    ]
    (audit,) = found["audit_events"]
    assert audit["source_ips"] == ["10.0.8.14"]
    assert audit["user_agent"].startswith("kubectl/v1.34.1")
    event = store.audit_event(audit["audit_id"])
    assert event is not None and event["event"]["auditID"] == audit["audit_id"]
    assert event["command"] == audit["command"] == ["/bin/bash"], "a list, as the session's is"
    assert store.audit_event("no-such-event") is None
    # the exec the webhook did not see is a finding that names its audit event
    (unattributed,) = [f for f in store.findings(EVER) if f["kind"] == FINDING_UNATTRIBUTED]
    assert unattributed["audit_id"] and store.audit_event(unattributed["audit_id"]) is not None
    store.close()


def test_users_summarise_sessions_pods_and_alerts(store_url):
    consume_into(store_url, "shell_and_grandchild")
    ingest_audit(store_url)
    store = open_store(store_url)
    rows = {row["user_name"]: row for row in store.users(EVER)}
    assert rows["alice@corp.example"]["sessions"] == 1
    assert rows["alice@corp.example"]["pods"] == 1
    assert rows["alice@corp.example"]["alerts"] == {"Notice": 1, "Warning": 1}
    assert rows["dave@corp.example"]["alerts"] == {}
    store.close()


def test_findings_include_tampering_and_invalid_tokens(store_url):
    consume_into(store_url, "token_for_another_pod", "forged_token")
    store = open_store(store_url)
    kinds = sorted(f["kind"] for f in store.findings(EVER))
    assert kinds == [
        "Exec identity replayed",
        "Exec identity token invalid",
        "Exec identity token invalid",
    ]
    (replay,) = [f for f in store.findings(EVER) if f["kind"] == "Exec identity replayed"]
    assert replay["user_name"] is None, "a replay finding names nobody as its user"
    assert "claims user alice@corp.example" in replay["detail"]
    store.close()


def test_prune_deletes_what_is_older_than_the_cut(store_url):
    consume_into(store_url, "shell_and_grandchild")
    ingest_audit(store_url)
    store = open_store(store_url)
    kept = store.prune(T0 - 10**9)
    assert sum(kept.values()) == 0
    deleted = store.prune(T0 + 24 * 3600 * 10**9)
    assert deleted["alerts"] == 2 and deleted["sessions"] == 2
    assert store.sessions(SessionQuery(since_ns=EVER)) == []
    store.close()


def test_concurrent_writers_are_safe(store_url):
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            consume_into(store_url, "shell_and_grandchild", "shadowed_export")
            ingest_audit(store_url)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert count(store_url, "sessions") == 2
    assert count(store_url, "alerts") == 4


def test_an_empty_batch_opens_no_transaction(store_url):
    # the writer flushes on every tick, mostly with nothing: that must cost nothing
    store = open_store(store_url)
    store.close()
    store._transaction = None  # any transaction now raises TypeError  # type: ignore[assignment]
    store.ingest(Batch())


def test_unreachable_postgres_is_a_clear_error_without_the_password():
    with closed_port() as port, pytest.raises(StoreUnavailable) as caught:
        open_store(f"postgresql://whoexec:s3cretpw@127.0.0.1:{port}/whoexec")
    assert "cannot reach PostgreSQL store postgresql://127.0.0.1:" in str(caught.value)
    assert "s3cretpw" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://whoexec:s3cretpw@db.example:5433/whoexec", "postgresql://db.example:5433/whoexec"),
        ("postgresql://whoexec:s3cretpw@db.example/whoexec", "postgresql://db.example/whoexec"),
        ("postgresql:///whoexec?password=s3cretpw", "postgresql://localhost/whoexec"),
    ],
)  # fmt: skip
def test_a_postgres_store_is_named_in_errors_by_its_server_and_database_alone(url, shown):
    from webhook.sessions.store.sql import PostgresStore

    store = PostgresStore.__new__(PostgresStore)  # named, never connected
    store.url = url
    assert store._redacted() == shown


def test_unusable_sqlite_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreUnavailable, match="cannot open SQLite store"):
        open_store(f"sqlite:///{tmp_path}/file/whoexec.db")


def test_postgres_connection_lost_mid_stream_is_retried_without_loss(postgres_url):
    import psycopg

    store = open_store(postgres_url)
    writer = StoreWriter(store, backoff=(0.01, 0.05))
    # the server drops our connection (a failover, a restart)
    with psycopg.connect(postgres_url, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    from webhook.sessions.audit import check_event, exec_audit
    from webhook.sessions.store.writer import facts_from_audit

    line = AUDIT_LOG.read_text().splitlines()[1]
    audit = exec_audit(check_event(json.loads(line)), "exec.whoexec.io")
    writer.add(facts_from_audit(audit, line))
    writer.flush()  # first attempt fails on the dead connection, the retry reconnects
    assert writer.failures >= 1
    assert count(postgres_url, "audit_events") == 1
    writer.close()


class FlakyStore:
    """A real SQLite store that is 'down' for the first ``failures`` writes."""

    def __init__(self, url: str, failures: int) -> None:
        self.real = open_store(url)
        self.failures = failures

    def ingest(self, batch: Batch) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("database is down")
        self.real.ingest(batch)

    def close(self) -> None:
        self.real.close()


def test_writer_keeps_the_batch_while_the_database_is_down(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    sleeps: list[float] = []
    writer = StoreWriter(FlakyStore(url, failures=3), sleep=sleeps.append)  # type: ignore[arg-type]
    ingestor = AuditIngestor(writer, "exec.whoexec.io")
    with AUDIT_LOG.open("rb") as handle:
        ingestor.feed(handle)
    assert sleeps == [0.2, 0.4, 0.8], "exponential backoff"
    ingestor.close()
    assert count(url, "audit_events") == 4


def test_batch_mode_gives_up_after_max_wait_and_keeps_the_batch(tmp_path):
    url = f"sqlite:///{tmp_path}/w.db"
    writer = StoreWriter(FlakyStore(url, failures=10**6), max_wait=0.0, sleep=lambda _: None)  # type: ignore[arg-type]
    ingestor = AuditIngestor(writer, "exec.whoexec.io")
    with pytest.raises(StoreUnavailable), AUDIT_LOG.open("rb") as handle:
        ingestor.feed(handle)
    assert len(writer.pending) > 0, "nothing accepted was thrown away"


def test_audit_log_is_followed_across_rotation_into_the_store(tmp_path):
    from webhook.follow import FileFollower

    url = f"sqlite:///{tmp_path}/follow.db"
    log = tmp_path / "audit.log"
    lines = AUDIT_LOG.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:4]))
    ingestor = AuditIngestor(StoreWriter(open_store(url)), "exec.whoexec.io")
    follower = FileFollower(log, tmp_path / "audit.offset", poll=0.02)
    thread = threading.Thread(target=follower.run, args=(ingestor,))
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while count(url, "audit_events") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        log.rename(tmp_path / "audit.log.1")  # kube-apiserver rotates its audit log
        log.write_bytes(b"".join(lines[4:]))
        while count(url, "audit_events") < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        follower.stop()
        thread.join(timeout=10)
        ingestor.close()
    assert count(url, "audit_events") == 4
    assert ingestor.stats["malformed"] == 2


def ingest_audit_lines(url: str, text: str) -> None:
    ingestor = AuditIngestor(StoreWriter(open_store(url)), "exec.whoexec.io")
    ingestor.feed(io.BytesIO(text.encode()), where="audit.log")
    ingestor.close()


CAROL_SID = "ca201000-0000-4000-8000-000000000012"
LATER = T0 + 3600 * 10**9


def crosscheck_findings(url: str) -> dict[str, dict]:
    store = open_store(url)
    try:
        store.crosscheck(LATER, 60 * 10**9)
        return {f["kind"]: f for f in store.findings(EVER) if f["kind"].startswith("Exec session")}
    finally:
        store.close()


def test_crosscheck_finds_a_session_root_the_audit_log_never_saw(store_url):
    consume_into(store_url, "shell_and_grandchild", "replay_reused_within_window")
    ingest_audit(store_url)  # alice's exec is there; carol's is not
    store = open_store(store_url)
    assert store.crosscheck(LATER, 60 * 10**9) == 1
    assert store.crosscheck(LATER, 60 * 10**9) == 0, "idempotent"
    (finding,) = [f for f in store.findings(EVER) if f["kind"] == FINDING_NOT_IN_AUDIT_LOG]
    assert finding["session_id"] == CAROL_SID
    assert finding["priority"] == "Warning"
    assert "carol@corp.example" in finding["detail"]
    store.close()


def test_crosscheck_waits_until_the_audit_log_has_moved_past_the_session(store_url):
    consume_into(store_url, "replay_reused_within_window")
    store = open_store(store_url)
    assert store.crosscheck(LATER, 60 * 10**9) == 0, "no audit event at all yet: no verdict"
    store.close()


def test_crosscheck_flags_an_audit_event_that_names_another_user(store_url):
    consume_into(store_url, "shell_and_grandchild")
    forged = AUDIT_LOG.read_text().replace(
        '"username":"alice@corp.example"', '"username":"mallory"'
    )
    ingest_audit_lines(store_url, forged)
    store = open_store(store_url)
    store.crosscheck(LATER, 60 * 10**9)
    (finding,) = [f for f in store.findings(EVER) if f["kind"] == FINDING_AUDIT_USER_MISMATCH]
    assert finding["priority"] == "Critical"
    assert finding["session_id"] == ALICE_SID
    assert "names alice@corp.example" in finding["detail"]
    assert "names mallory" in finding["detail"]
    store.close()


def test_crosscheck_is_quiet_when_token_and_audit_event_agree(store_url):
    consume_into(store_url, "shell_and_grandchild")
    ingest_audit(store_url)
    store = open_store(store_url)
    assert store.crosscheck(LATER, 60 * 10**9) == 0
    store.close()


def two_consumers_on_one_store(url: str, first: list[bytes], second: list[bytes]):
    """Two consumers (two nodes) with their own process tables, sharing one store."""
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    sinks = []
    for lines in (first, second):
        writer = StoreWriter(open_store(url))
        sink = MemorySink()
        claims_store = open_store(url)
        attributor = Attributor(verifier, claims=StoreRootClaims(claims_store))
        pipeline = Pipeline(attributor, [sink, writer])
        pipeline.observe(writer.record)
        pipeline.feed(lines, where="node")
        pipeline.close()
        claims_store.close()
        sinks.append(sink)
    return [
        [a["output_fields"]["whoexec.attribution"] for a in sink.alerts if a["source"] == "syscall"]
        for sink in sinks
    ]


def test_a_session_id_roots_one_process_across_consumers_sharing_postgresql(postgres_url):
    lines = (FALCO / "replay_reused_within_window.jsonl").read_bytes().splitlines()
    genuine, replay = lines[:2], lines[2:]
    on_node_a, on_node_b = two_consumers_on_one_store(postgres_url, genuine, replay)
    assert on_node_a == ["verified"]
    assert on_node_b == ["replayed"], "node b's own table has never seen the genuine root"
    store = open_store(postgres_url)
    (replayed,) = store.sessions(SessionQuery(attribution="replayed", since_ns=EVER))
    assert replayed["reason"].startswith(f"reused: session {CAROL_SID} was already rooted by")
    store.close()


def test_a_replayed_root_evicted_from_the_process_table_and_seen_again_stays_replayed(
    store_url, signer, trusted
):
    """The attacker spawns enough alerting processes to push its replayed root out of the
    process table; seen again, the root is judged again, and the claim it lost must still
    name the genuine root (the cache keeps the holder, never the claimant)."""
    from tests.attribution.test_lineage import START, facts_for, make_token, root_facts, submitted
    from webhook.attribution.lineage import ProcessTable

    token, _ = make_token(signer)
    genuine_node, this_node = open_store(store_url), open_store(store_url)
    try:
        genuine = Attributor(TokenVerifier(trusted), claims=StoreRootClaims(genuine_node))
        (first,) = submitted(genuine, root_facts(40, token))
        assert first.status == "verified"
        attributor = Attributor(
            TokenVerifier(trusted), ProcessTable(max_entries=2), claims=StoreRootClaims(this_node)
        )
        # a second root of the same token, 10 s later: fresh, but not first
        replay = root_facts(50, token, **{"proc.pid.ts": START + 10 * 10**9})
        (before,) = submitted(attributor, replay)
        assert before.status == "replayed"
        assert before.reason.startswith("reused: session s-1 was already rooted by pid 40")
        noise = [facts_for(pid, **{"proc.apid[1]": 1, "proc.pid.ts": START}) for pid in (60, 61)]
        submitted(attributor, *noise)
        assert attributor.table.get(("node-a", 50)) is None, "the replayed root was evicted"
        (again,) = submitted(attributor, replay)
        assert (again.status, again.identity) == ("replayed", None)
        assert again.reason == before.reason
    finally:
        genuine_node.close()
        this_node.close()


class FlakyClaimStore:
    """The part of a store that root claims use: first wins, down for ``down`` calls."""

    def __init__(self, down: int = 0) -> None:
        self.down = down
        self.calls: list[tuple[str, str, int]] = []
        self.roots: dict[tuple[str, str], tuple[str, int, int]] = {}

    def claim_root(self, session_id, container, host, pid, start_ns):
        self.calls.append((session_id, container, pid))
        if self.down:
            self.down -= 1
            raise StoreUnavailable("cannot reach PostgreSQL store: connection refused")
        return self.roots.setdefault((session_id, container), (host, pid, start_ns))


def test_a_root_claim_waits_for_the_store_with_growing_delays_and_never_decides_without_it(
    caplog,
):
    from webhook.attribution.lineage import SessionRoot

    store = FlakyClaimStore(down=5)
    store.roots[("s-1", "app")] = ("node-a", 40, T0)  # another node rooted it first
    slept: list[float] = []
    claims = StoreRootClaims(store, backoff=(0.2, 1.0), sleep=slept.append)  # type: ignore[arg-type]
    holder = claims.claim("s-1", "app", SessionRoot("node-b", 50, T0))
    assert holder == SessionRoot("node-a", 40, T0), "the store decided, once it was back"
    assert slept == [0.2, 0.4, 0.8, 1.0, 1.0]
    assert len(store.calls) == 6
    # the reason is logged, each time
    said = "unavailable for a root claim (cannot reach PostgreSQL store: connection refused)"
    assert [r.getMessage().count(said) for r in caplog.records] == [1] * 5


def test_root_claims_ask_the_store_once_per_session_and_container_within_their_bound():
    from webhook.attribution.lineage import SessionRoot

    store = FlakyClaimStore()
    claims = StoreRootClaims(store, max_cached=2)  # type: ignore[arg-type]

    def root(pid: int) -> SessionRoot:
        return SessionRoot("node-a", pid, T0)

    assert claims.claim("s-1", "app", root(1)) == root(1)
    assert claims.claim("s-1", "app", root(9)) == root(1)
    assert claims.claim("s-1", "debug", root(2)) == root(2), "a claim per container"
    assert len(store.calls) == 2, "the holder was remembered"
    claims.claim("s-2", "app", root(3))  # the third pushes the oldest out of the cache
    assert len(claims._holders) == 2
    # forgotten here, still held in the store: asked again, the answer is the same
    assert claims.claim("s-1", "app", root(9)) == root(1)
    assert store.calls[-1] == ("s-1", "app", 9)


def test_concurrent_root_claims_have_exactly_one_winner(postgres_url):
    import concurrent.futures

    stores = [open_store(postgres_url) for _ in range(8)]
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            holders = list(
                pool.map(
                    lambda n: stores[n].claim_root("race-sid", "app", f"node-{n}", 100 + n, T0),
                    range(8),
                )
            )
    finally:
        for store in stores:
            store.close()
    assert len(set(holders)) == 1, holders


STORE_SCENARIOS = [
    "shell_and_grandchild",
    "shadowed_export",
    "forged_token",
    "token_for_another_pod",
    "replay_stale",
    "replay_reused_within_window",
    "exec_without_identity",
    "unrelated_container",
]
#: columns read back; ids and whole JSON documents are left out
STORE_DUMP = {
    "sessions": "SELECT * FROM sessions ORDER BY session_id",
    "processes": "SELECT * FROM processes ORDER BY session_id, host, pid, start_ns",
    "alerts": "SELECT session_id, time_ns, rule, priority, source, output, attribution,"
    " user_name, hostname FROM alerts ORDER BY time_ns, rule, output",
    "findings": "SELECT kind, priority, time_ns, session_id, user_name, namespace, pod, detail"
    " FROM findings ORDER BY time_ns, kind, detail",
    "audit_events": "SELECT audit_id, stage, time_ns, verb, subresource, namespace, pod,"
    " container, command, user_name, impersonated_user, response_code, session_id, outcome"
    " FROM audit_events ORDER BY audit_id",
}


def store_dump(url: str) -> dict[str, list[dict]]:
    store = open_store(url)
    try:
        # sorted here: the databases collate text differently in ORDER BY
        return {
            table: sorted(
                ({k: row[k] for k in sorted(row)} for row in store._query(sql)),
                key=lambda row: json.dumps(row, sort_keys=True),
            )
            for table, sql in STORE_DUMP.items()
        }
    finally:
        store.close()


def test_what_the_store_holds_after_every_scenario_and_the_audit_log_is_as_reviewed(store_url):
    """tests/data/store-contents.json was read row by row: who each session is, which
    processes and alerts belong to it, which findings were raised and why."""
    consume_into(store_url, *STORE_SCENARIOS)
    ingest_audit(store_url)
    expected = json.loads((DATA / "store-contents.json").read_text())
    assert store_dump(store_url) == expected


def test_a_replayed_root_s_session_holds_its_alerts_and_finding_and_names_nobody(store_url):
    # the investigator opens the replay's own session: what the replayed token did is
    # there, under no user, with the victim kept apart as the claim
    consume_into(store_url, "replay_stale")
    store = open_store(store_url)
    (replay,) = store.sessions(SessionQuery(since_ns=EVER, attribution="replayed"))
    session = store.session(replay["session_id"])
    assert session is not None
    assert session["session_id"] == "replayed:ip-10-0-3-17.ec2.internal:5242:1795341600000000100"
    assert (session["user_name"], session["claimed_user"]) == (None, "bob@corp.example")
    assert [(a["rule"], a["attribution"], a["pid"]) for a in session["alerts"]] == [
        ("Read sensitive file untrusted", "replayed", 5243)
    ]
    assert [f["kind"] for f in session["findings"]] == ["Exec identity replayed"]
    store.close()


def _changed(fields: dict | None = None, **changes):
    # no state: each call makes the same change (a pop here emptied it after the first)
    def change(alert: dict) -> dict:
        return {**alert, **changes, "output_fields": {**alert["output_fields"], **(fields or {})}}

    return change


@pytest.mark.parametrize(
    ("change", "same"),
    [
        # a restarted consumer attributes a re-read alert anew: still the same alert
        (_changed(fields={"whoexec.attribution": "none", "whoexec.user.name": None}), True),
        (_changed(output="another rendering of the same fields"), True),
        (_changed(tags=["other"], priority="Critical"), True),
        # anything Falco says about the event makes it another event
        (_changed(hostname="node-b"), False),  # the same pid and time on another node
        (_changed(time="2026-11-22T10:00:01.000000001Z"), False),
        (_changed(rule="Another rule"), False),
        (_changed(source="k8s_audit"), False),
        (_changed(fields={"proc.pid": 4243}), False),
        (_changed(fields={"fd.name": "/etc/gshadow"}), False),
    ],
    ids=["re-enriched", "output", "tags-priority", "hostname", "time", "rule", "source",
         "pid", "a-field"],
)  # fmt: skip
def test_an_alert_is_stored_once_however_often_it_is_read_and_only_then(change, same):
    from webhook.attribution.falco import parse_alert
    from webhook.sessions.store.writer import alert_key

    alert = parse_alert((FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()[2])
    assert (alert_key(change(alert)) == alert_key(alert)) is same
    assert alert_key(alert).startswith("sha256:")
    assert alert_key({**alert, "uuid": "u-1"}) == alert_key({**change(alert), "uuid": "u-1"})


def test_a_batch_sorted_back_from_its_facts_is_the_same_batch():
    # the writer splits a batch the store refused into its facts, and stores the others
    # as batches again: each fact must land back in its own list
    from webhook.sessions.store import model as m

    batch = m.Batch(
        sessions=[m.SessionFact("s-1", 1, "token"), m.SessionFact("s-2", 2, "audit")],
        processes=[m.ProcessFact("s-1", "node-a", 40, 0, 30, "sh", 1)],
        alerts=[m.AlertFact("k", 1, "r", "Notice", "syscall", "o", "{}", "verified", "node-a")],
        audits=[
            m.AuditFact(
                "a-1",
                "ResponseComplete",
                1,
                "create",
                "exec",
                "shop",
                "web-0",
                "app",
                ("sh",),
                "alice",
                None,
                "/api",
                101,
                "s-1",
                "injected",
                "{}",
            )
        ],
        findings=[m.FindingFact("f", "kind", 1, "detail")],
    )
    assert m.Batch.of(batch.facts()) == batch
    assert m.Batch.of([]) == m.Batch()
    twice = m.Batch()
    twice.extend(batch)
    twice.extend(batch)
    assert twice == m.Batch.of(batch.facts() + batch.facts()), "each kind added to, in order"


@contextlib.contextmanager
def crosschecked(url: str) -> Iterator[store_sql.SqlStore]:
    """A store with alice's and carol's sessions, the audit log, and its findings."""
    consume_into(url, "shell_and_grandchild", "replay_reused_within_window")
    ingest_audit(url)
    store = open_store(url)
    try:
        store.crosscheck(LATER, 60 * 10**9)
        yield store
    finally:
        store.close()


def test_prune_names_what_it_deleted_table_by_table(store_url):
    with crosschecked(store_url) as store:
        before = {
            "sessions": len(store.sessions(SessionQuery(since_ns=EVER))),
            "findings": len(store.findings(EVER)),
        }
        deleted = store.prune(LATER + 10**9)
        assert set(deleted) == {"alerts", "processes", "sessions", "audit_events", "findings"}
        assert (deleted["sessions"], deleted["findings"]) == (
            before["sessions"],
            before["findings"],
        )
        assert deleted["alerts"] > 0 and deleted["processes"] > 0 and deleted["audit_events"] > 0
        assert sum(store.prune(LATER + 10**9).values()) == 0, "nothing left to delete"


def test_crosscheck_accuses_no_session_before_its_grace_has_passed_on_its_own_clock(store_url):
    # the apiserver's clock runs ahead of the consumer's: its audit log already shows an
    # event past carol's grace, but on the clock that judges, the grace has not passed
    consume_into(store_url, "replay_reused_within_window")
    store = open_store(store_url)
    try:
        started = store.session(CAROL_SID)["started_ns"]  # type: ignore[index]
    finally:
        store.close()
    grace = 60 * 10**9
    ahead = datetime.datetime.fromtimestamp((started + grace) / 1e9 + 5, datetime.UTC)
    event = json.loads(AUDIT_LOG.read_text().splitlines()[0])
    event.update(auditID="ahead-1", stageTimestamp=ahead.strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
    ingest_audit_lines(store_url, json.dumps(event) + "\n")
    store = open_store(store_url)
    try:
        assert store.crosscheck(started + 10 * 10**9, grace) == 0, "10 s after it started"
        assert store.crosscheck(started + grace + 10 * 10**9, grace) == 1
    finally:
        store.close()


def test_an_exec_s_audit_event_shows_where_it_came_from_and_only_what_the_event_says(store_url):
    consume_into(store_url, "shell_and_grandchild")
    lines = [
        json.loads(line) for line in AUDIT_LOG.read_text().splitlines() if line.startswith('{"')
    ]
    # alice's exec as its ResponseComplete stage wrote it, with the webhook's session id
    event = [e for e in lines if e.get("auditID") == "7b36f2ea-2e64-4b4a-a946-f387c75b7d72"][-1]
    odd = {**event, "auditID": "odd-1", "sourceIPs": "10.0.0.9", "userAgent": None}
    ingest_audit_lines(store_url, "\n".join(json.dumps(e) for e in (event, odd)) + "\n")
    store = open_store(store_url)
    try:
        session = store.session(ALICE_SID)
    finally:
        store.close()
    assert session is not None
    shown = {e["audit_id"]: e for e in session["audit_events"]}
    assert (shown[event["auditID"]]["source_ips"], shown[event["auditID"]]["user_agent"]) == (
        event["sourceIPs"],
        event["userAgent"],
    )
    assert shown[event["auditID"]]["command"] == ["/bin/bash"]
    # a sourceIPs that is not a list is shown as none, never as its characters
    assert (shown["odd-1"]["source_ips"], shown["odd-1"]["user_agent"]) == ([], None)


def test_users_and_findings_without_a_start_reach_back_to_the_first(store_url):
    with crosschecked(store_url) as store:
        assert store.users(None) == store.users(EVER) != []
        assert store.findings(None) == store.findings(EVER) != []
