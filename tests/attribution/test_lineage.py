from __future__ import annotations

import copy
import dataclasses
import json
import re
from pathlib import Path

import pytest

from tests.conftest import DATA
from webhook.attribution.falco import parse_alert, process_facts, token_pattern
from webhook.attribution.lineage import (
    Attribution,
    Attributor,
    ProcessRecord,
    ProcessTable,
    TokenVerifier,
)
from webhook.attribution.pipeline import MemorySink, Pipeline
from webhook.keyfiles import load_key_ring

FALCO = DATA / "falco"
ALICE = "alice@corp.example"
TAMPERED = "Exec identity tampered"
INVALID = "Exec identity token invalid"
NO_IDENTITY = "Exec session without identity"
REPLAYED = "Exec identity replayed"
CAROL = "carol@corp.example"
READ_SHADOW = "Read sensitive file untrusted"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def run_scenario(name: str, hold: float = 0.0, forward_roots: bool = False):
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    attributor = Attributor(verifier, hold_seconds=hold)
    sink = MemorySink()
    pipeline = Pipeline(attributor, [sink], forward_roots=forward_roots, clock=FakeClock())
    pipeline.feed((FALCO / f"{name}.jsonl").read_bytes().splitlines(), where=name)
    pipeline.close()
    return sink.alerts, pipeline, verifier


def summary(alerts):
    passed = [
        (
            a["rule"],
            a["output_fields"]["whoexec.attribution"],
            a["output_fields"]["whoexec.user.name"],
        )
        for a in alerts
        if a["source"] == "syscall"
    ]
    found = [a["rule"] for a in alerts if a["source"] == "whoexec"]
    return passed, found


SCENARIOS = [
    (
        "shell_and_grandchild",
        0.0,
        [
            ("Terminal shell in container", "verified", ALICE),
            ("Read sensitive file untrusted", "verified", ALICE),
        ],
        [],
    ),
    ("env_cut_at_4k", 0.0, [("Search Private Keys or Passwords", "verified", ALICE)], []),
    (
        "shadowed_export",
        0.0,
        [
            ("Read sensitive file untrusted", "tampered", ALICE),
            ("Read sensitive file untrusted", "tampered", ALICE),
        ],
        [TAMPERED, TAMPERED],
    ),
    ("pid_reuse", 0.0, [("Drop and execute new binary in container", "none", None)], []),
    ("unrelated_container", 0.0, [("Run shell untrusted", "none", None)], []),
    (
        "forged_token",
        0.0,
        [
            ("Terminal shell in container", "unverified", None),
            ("Terminal shell in container", "unverified", None),
        ],
        [INVALID, INVALID],
    ),
    ("token_for_another_pod", 0.0, [("Terminal shell in container", "replayed", None)], [REPLAYED]),
    ("replay_stale", 0.0, [("Read sensitive file untrusted", "replayed", None)], [REPLAYED]),
    (
        "replay_reused_a_minute_later",
        0.0,
        [
            ("Read sensitive file untrusted", "verified", CAROL),
            ("Read sensitive file untrusted", "replayed", None),
        ],
        [REPLAYED],
    ),
    (
        "replay_reused_within_window",
        0.0,
        [
            ("Read sensitive file untrusted", "verified", CAROL),
            ("Read sensitive file untrusted", "replayed", None),
        ],
        [REPLAYED],
    ),
    (
        "replay_bound_elsewhere",
        0.0,
        [("Read sensitive file untrusted", "replayed", None)],
        [REPLAYED],
    ),
    (
        "replay_recreated_pod",
        0.0,
        [("Read sensitive file untrusted", "replayed", None)],
        [REPLAYED],
    ),
    ("out_of_order", 5.0, [("Read sensitive file untrusted", "verified", ALICE)], []),
    ("out_of_order", 0.0, [("Read sensitive file untrusted", "none", None)], []),
    ("exec_without_identity", 0.0, [("Terminal shell in container", "none", None)], [NO_IDENTITY]),
    ("token_from_future", 0.0, [], [INVALID]),
]


@pytest.mark.parametrize(
    ("scenario", "hold", "expected", "expected_findings"),
    SCENARIOS,
    ids=[f"{s[0]}-hold{s[1]:g}" for s in SCENARIOS],
)
def test_scenario_attributes_every_alert(scenario, hold, expected, expected_findings):
    alerts, _, _ = run_scenario(scenario, hold)
    passed, found = summary(alerts)
    assert passed == expected
    assert sorted(found) == sorted(expected_findings)


def test_enriched_alert_keeps_everything_else_and_names_the_user():
    alerts, _, _ = run_scenario("shell_and_grandchild")
    original = [
        parse_alert(line)
        for line in (FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()
    ][2]
    enriched = alerts[1]
    fields = enriched["output_fields"]
    assert fields["whoexec.user.name"] == ALICE
    assert fields["whoexec.user.uid"] == "5b2f1e7c-1d0a-4c3e-9b7a-2f6d8e9c0a11"
    assert fields["whoexec.user.groups"] == ["platform-admins", "devs", "system:authenticated"]
    assert fields["whoexec.session.id"] == "0d3c4a8e-7f21-4b6a-9c55-1e2f3a4b5c6d"
    assert enriched["output"] == (
        original["output"] + f" k8s_user={ALICE} k8s_session=0d3c4a8e-7f21-4b6a-9c55-1e2f3a4b5c6d"
    )
    for key, value in original.items():
        if key not in ("output", "output_fields"):
            assert enriched[key] == value
    for key, value in original["output_fields"].items():
        assert fields[key] == value


def test_unattributed_alert_gets_null_fields_and_an_unchanged_output():
    alerts, _, _ = run_scenario("unrelated_container")
    (alert,) = alerts
    original = parse_alert((FALCO / "unrelated_container.jsonl").read_bytes().splitlines()[1])
    assert alert["output"] == original["output"]
    assert alert["output_fields"]["whoexec.attribution"] == "none"
    assert alert["output_fields"]["whoexec.user.name"] is None


def test_session_root_rule_is_not_forwarded_unless_asked():
    alerts, _, _ = run_scenario("shell_and_grandchild", forward_roots=True)
    rules = [a["rule"] for a in alerts]
    assert rules[0] == "Whoexec exec session root"
    assert alerts[0]["output_fields"]["whoexec.attribution"] == "verified"


def test_findings_are_falco_shaped_with_source_whoexec():
    alerts, _, _ = run_scenario("token_for_another_pod")
    (finding,) = [a for a in alerts if a["source"] == "whoexec"]
    assert list(finding) == sorted(finding)
    assert finding["priority"] == "Critical"
    assert "payments-0" in finding["output_fields"]["whoexec.reason"]
    assert finding["time"].endswith("Z")


def test_invalid_token_finding_names_the_error():
    alerts, _, _ = run_scenario("forged_token")
    reasons = sorted(
        a["output_fields"]["whoexec.reason"] for a in alerts if a["source"] == "whoexec"
    )
    assert reasons[0].startswith("BadSignature")
    assert reasons[1].startswith("UnknownKeyId")


def test_verification_is_cached_not_repeated_per_alert():
    _, _, verifier = run_scenario("shell_and_grandchild")
    assert verifier.verifications == 1


def test_process_table_evicts_least_recently_used():
    table = ProcessTable(max_entries=2)
    table.put(("h", 1), ProcessRecord(None, None, None))
    table.put(("h", 2), ProcessRecord(None, None, None))
    assert table.get(("h", 1)) is not None  # 1 is now the most recently used
    table.put(("h", 3), ProcessRecord(None, None, None))
    assert table.get(("h", 2)) is None
    assert table.get(("h", 1)) is not None
    assert (len(table), table.evictions) == (2, 1)


def test_evicted_root_leaves_later_alerts_unattributed_not_misattributed():
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    attributor = Attributor(verifier, table=ProcessTable(max_entries=3))
    lines = (FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()
    root, _, grandchild = (parse_alert(line) for line in lines)
    attributor.submit(root, 0)
    for pid in range(10_000, 10_010):  # unrelated processes push the root out
        noise = parse_alert(lines[2])
        noise["output_fields"] = {
            **noise["output_fields"],
            "proc.pid": pid,
            "proc.apid[1]": pid + 1000,
            "proc.apid[2]": None,
            "proc.apid[3]": None,
            "proc.aenv[WHOEXEC_IDENTITY]": None,
            "proc.env[WHOEXEC_IDENTITY]": None,
        }
        attributor.submit(noise, 0)
    grandchild["output_fields"] = {
        **grandchild["output_fields"],
        "proc.env[WHOEXEC_IDENTITY]": None,
        "proc.aenv[WHOEXEC_IDENTITY]": None,
    }
    (outcome,) = attributor.submit(grandchild, 0)
    assert outcome.attribution.status == "none"
    assert attributor.table.evictions > 0


def test_held_alert_is_released_when_its_wait_is_over():
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    attributor = Attributor(verifier, hold_seconds=2.0)
    lone = parse_alert((FALCO / "out_of_order.jsonl").read_bytes().splitlines()[0])
    assert attributor.submit(lone, now=10.0) == []
    assert attributor.held == 1
    assert attributor.release(now=11.0) == []
    (released,) = attributor.release(now=12.5)
    assert released.attribution.status == "none"
    assert attributor.held == 0


def test_token_is_found_in_args_and_cmdline_only_as_a_whole_assignment():
    pattern = token_pattern("WHOEXEC_IDENTITY")
    token = "v1.0123456789abcdef.eyJ9.c2ln"
    assert pattern.search(f"WHOEXEC_IDENTITY={token} /bin/sh").group(1) == token
    assert pattern.search(f"env WHOEXEC_IDENTITY={token} sh").group(1) == token
    assert pattern.search(f"NOT_WHOEXEC_IDENTITY={token} sh") is None
    assert pattern.search("WHOEXEC_IDENTITY=forged sh") is None


def test_facts_read_iso8601_time_when_evt_time_is_absent():
    alert = parse_alert((FALCO / "env_cut_at_4k.jsonl").read_bytes().splitlines()[1])
    assert "evt.time" not in alert["output_fields"]
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    assert facts.time_ns == 1795341600_000_000_000 + 9_000_000_000
    assert [pid for pid, _ in facts.ancestors] == [4242, 3100]


def test_fixture_public_key_is_the_only_key_material_committed():
    assert sorted(p.name for p in FALCO.glob("*.key")) == []
    assert Path(FALCO / "identity.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")


@pytest.mark.parametrize("ns", [0, 1795341600_000_000_200, 1795341609_123456789])
def test_falco_time_format_round_trips(ns):
    from webhook.attribution.falco import format_time_ns, parse_time_ns

    text = format_time_ns(ns)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z", text)
    assert parse_time_ns(text) == ns


REPLAY_REASONS = [
    ("replay_stale", "bob@corp.example", "stale: the session root started 10800s after"),
    ("replay_reused_a_minute_later", CAROL, "stale: the session root started 61s after"),
    ("replay_reused_within_window", CAROL, "reused: session ca201000-"),
    ("replay_bound_elsewhere", "dave@corp.example", "bound elsewhere: token minted for pod 'db-0'"),
    ("replay_recreated_pod", "erin@corp.example", "bound elsewhere: token minted for pod uid"),
    ("token_for_another_pod", ALICE, "bound elsewhere: token minted for pod 'payments-0'"),
]


@pytest.mark.parametrize(("scenario", "victim", "reason"), REPLAY_REASONS)
def test_a_replayed_root_names_nobody_and_keeps_the_claim_apart(scenario, victim, reason):
    alerts, _, _ = run_scenario(scenario)
    replayed = [
        a
        for a in alerts
        if a["source"] == "syscall" and a["output_fields"]["whoexec.attribution"] == "replayed"
    ]
    assert replayed
    for alert in replayed:
        fields = alert["output_fields"]
        assert fields["whoexec.user.name"] is None
        assert fields["whoexec.session.id"] is None
        assert fields["whoexec.user.groups"] is None
        assert fields["whoexec.claimed.user.name"] == victim
        assert "k8s_user=" not in alert["output"]
        assert victim not in alert["output"]
    (finding,) = [a for a in alerts if a["rule"] == REPLAYED]
    assert finding["priority"] == "Critical"
    assert finding["source"] == "whoexec"
    assert finding["output_fields"]["whoexec.reason"].startswith(reason)
    assert finding["output_fields"]["whoexec.claimed.user.name"] == victim
    assert "whoexec.user.name" not in finding["output_fields"]
    assert "nobody is attributed" in finding["output"]


def test_a_genuine_session_is_verified_and_carries_no_claim():
    alerts, _, _ = run_scenario("shell_and_grandchild")
    for alert in alerts:
        assert alert["output_fields"]["whoexec.attribution"] == "verified"
        assert alert["output_fields"]["whoexec.claimed.user.name"] is None


def test_a_tampered_alert_carries_a_marker_before_the_user_in_output():
    alerts, _, _ = run_scenario("shadowed_export")
    tampered = [
        a
        for a in alerts
        if a["source"] == "syscall" and a["output_fields"]["whoexec.attribution"] == "tampered"
    ]
    assert tampered
    for alert in tampered:
        assert "[WHOEXEC: IDENTITY TAMPERED INSIDE THE SESSION] k8s_user=" in alert["output"]


def test_an_alert_from_a_worker_thread_of_the_session_root_keeps_its_identity():
    # shared/falco-0.44.1 run 2: proc.pid.ts is the clone time of the thread that raised
    # the event; a worker thread's later value is no pid reuse, and must not make the
    # consumer forget the root's token (its env was over 4 KiB: no token in proc.env)
    root_line, *_ = (FALCO / "env_cut_at_4k.jsonl").read_bytes().splitlines()
    root = parse_alert(root_line)
    thread = copy.deepcopy(root)
    fields = thread["output_fields"]
    fields["thread.tid"] = fields["proc.pid"] + 41
    fields["proc.pid.ts"] += 500_000_000
    fields["evt.time"] += 600_000_000
    fields["proc.name"] = "python3"
    fields["proc.args"] = "-c import threading"
    fields["proc.cmdline"] = "python3 -c import threading"
    fields["proc.env[WHOEXEC_IDENTITY]"] = ""
    thread["rule"] = "Read sensitive file untrusted"
    thread["tags"] = ["filesystem"]
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    attributor = Attributor(verifier)
    attributor.submit(root, now=0)
    (outcome,) = attributor.submit(thread, now=0)
    assert outcome.attribution.status == "verified"
    assert outcome.attribution.identity.user == ALICE
    assert outcome.attribution.root_pid == fields["proc.pid"]


@pytest.mark.parametrize("minutes_into_the_session", [0, 10])
def test_a_token_inherited_from_an_unseen_root_names_nobody_and_is_no_replay(
    minutes_into_the_session,
):
    # the grandchild alone, as a consumer restarted mid-session without --procfs sees
    # it: its root (and so the session's start) was never seen. It is no replay (that
    # would be a false Critical finding against a genuine session), and nobody is named
    *_, line = (FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()
    grandchild = parse_alert(line)
    later = minutes_into_the_session * 60 * 10**9
    grandchild["output_fields"]["evt.time"] += later
    grandchild["output_fields"]["proc.pid.ts"] += later
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    sink = MemorySink()
    pipeline = Pipeline(Attributor(verifier), [sink], clock=FakeClock())
    pipeline.feed([json.dumps(grandchild)], where="restarted consumer")
    pipeline.close()
    (alert,) = [a for a in sink.alerts if a["source"] == "syscall"]
    assert alert["output_fields"]["whoexec.attribution"] == "unverified"
    assert alert["output_fields"]["whoexec.user.name"] is None
    assert alert["output_fields"]["whoexec.claimed.user.name"] == ALICE
    (finding,) = [a for a in sink.alerts if a["source"] == "whoexec"]
    assert finding["rule"] == "Exec identity not verifiable"
    assert "session root not seen" in finding["output_fields"]["whoexec.reason"]
    assert "Exec identity replayed" not in [a["rule"] for a in sink.alerts]


def test_attribution_never_needs_whoexecs_own_rules_to_have_fired():
    # Falco's default rule_matching is "first", and the stock rules load before ours: a
    # stock rule ("Terminal shell in container") can win the very event our root rule
    # matches. The lineage and the token in the process's own fields decide, not the rule.
    lines = [
        line
        for line in (FALCO / "shell_and_grandchild.jsonl").read_bytes().splitlines()
        if "whoexec" not in json.loads(line)["tags"]
    ]
    assert len(lines) == 2, "only the stock rules' alerts are left"
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    sink = MemorySink()
    pipeline = Pipeline(Attributor(verifier), [sink], clock=FakeClock())
    pipeline.feed(lines)
    pipeline.close()
    passed, found = summary(sink.alerts)
    assert passed == [
        ("Terminal shell in container", "verified", ALICE),
        ("Read sensitive file untrusted", "verified", ALICE),
    ]
    assert found == []


@pytest.mark.parametrize(
    ("status", "named"),
    [
        ("verified", True),
        ("tampered", True),
        ("unverified", False),
        ("replayed", False),
        ("none", False),
    ],
)
def test_only_a_verified_or_tampered_attribution_ever_names_a_user(status, named):
    # the last guard before an alert leaves: even handed an identity, enrichment names a
    # person only for the statuses that prove one (a replay or a bad token never does)
    from webhook.attribution.lineage import Attribution, Outcome, enrich
    from webhook.identity import Identity

    alice = Identity("sid-1", ALICE, "uid-1", ("devs",), "shop", "web-0", "app", 1)
    alert = parse_alert((FALCO / "unrelated_container.jsonl").read_bytes().splitlines()[1])
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    out = enrich(Outcome(alert, Attribution(status, identity=alice), facts, False))  # type: ignore[arg-type]
    fields = out["output_fields"]
    assert (fields["whoexec.user.name"] == ALICE) is named
    assert (fields["whoexec.session.id"] == "sid-1") is named
    assert (f"k8s_user={ALICE}" in out["output"]) is named
    assert ("IDENTITY TAMPERED" in out["output"]) is (status == "tampered")
    assert out["rule"] == alert["rule"] and out["time"] == alert["time"], "nothing else changes"


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, ""),
        (
            {"namespace": "payments"},
            "token minted for namespace 'shop' is used in namespace 'payments'",
        ),
        ({"pod": "db-0"}, "token minted for pod 'web-0' is used in pod 'db-0'"),
        (
            {"container": "sidecar"},
            "token minted for container 'app' is used in container 'sidecar'",
        ),
        ({"pod_uid": "uid-B"}, "token minted for pod uid 'uid-A' is used in pod uid 'uid-B'"),
        ({"pod_uid": None}, ""),  # k8s metadata still pending: cannot be compared
        ({"namespace": None, "pod": None}, ""),
    ],
    ids=["same", "namespace", "pod", "container", "pod-uid", "uid-pending", "meta-pending"],
)
def test_a_token_is_bound_to_its_namespace_pod_uid_and_container(changes, reason):
    import dataclasses

    from webhook.attribution.lineage import binding_problem
    from webhook.identity import Identity

    minted = Identity("s", ALICE, "u", (), "shop", "web-0", "app", 1, pod_uid="uid-A")
    alert = parse_alert((FALCO / "unrelated_container.jsonl").read_bytes().splitlines()[1])
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    seen = dataclasses.replace(
        facts, namespace="shop", pod="web-0", container_name="app", pod_uid="uid-A"
    )
    renamed = {"container": "container_name"}
    seen = dataclasses.replace(seen, **{renamed.get(k, k): v for k, v in changes.items()})
    problem = binding_problem(minted, seen)
    assert problem == (f"bound elsewhere: {reason}" if reason else "")


def no_container_token(signer, trusted) -> tuple[dict, str]:
    """The review of a `kubectl exec` without -c, and the token the webhook minted."""
    import base64

    from tests.conftest import load_json
    from webhook.admission.decide import AdmissionPolicy, review_admission

    review = load_json("admission/exec_no_container_named.json")
    assert "container" not in review["request"]["object"], "kubectl sent no container"
    policy = AdmissionPolicy(env_trusted_namespaces=("*",))
    admission = review_admission(review, policy, signer, trusted, now=T_ISSUED)
    (op,) = json.loads(base64.b64decode(admission.response["response"]["patch"]))
    return review, op["value"][1].split("=", 1)[1]


def test_a_token_minted_for_an_exec_that_named_no_container_verifies_in_its_container(
    signer, trusted
):
    # the apiserver runs it in the pod's default container; the webhook saw no name and
    # minted container "": that is no binding to compare, and never a replay
    review, token = no_container_token(signer, trusted)
    request = review["request"]
    where = {"k8s.ns.name": request["namespace"], "k8s.pod.name": request["name"]}
    (attribution,) = submitted(
        Attributor(TokenVerifier(trusted)),
        root_facts(40, token, **where, **{"container.name": "app"}),
    )
    assert attribution.status == "verified", attribution.reason
    assert attribution.identity is not None and attribution.identity.container == ""
    assert attribution.identity.user == request["userInfo"]["username"]
    # the namespace and the pod are still bound
    (elsewhere,) = submitted(
        Attributor(TokenVerifier(trusted)), root_facts(40, token, **{"container.name": "app"})
    )
    assert elsewhere.status == "replayed"
    assert elsewhere.reason == (
        f"bound elsewhere: token minted for pod {request['name']!r} is used in pod 'web-0'"
    )


def test_a_reinvoked_exec_that_named_no_container_is_recognised_as_our_own(signer, trusted):
    from webhook.admission.decide import AdmissionPolicy, review_admission

    review, token = no_container_token(signer, trusted)
    again = copy.deepcopy(review)
    command = again["request"]["object"]["command"]
    again["request"]["object"]["command"] = ["/usr/bin/env", f"WHOEXEC_IDENTITY={token}", *command]
    policy = AdmissionPolicy(env_trusted_namespaces=("*",))
    admission = review_admission(again, policy, signer, trusted, now=T_ISSUED + 1)
    assert admission.decision.outcome == "skipped-already-injected"
    assert admission.decision.session_id == review["request"]["uid"]


def attribution_rows(name: str, hold: float) -> dict[str, list]:
    """Every alert of a scenario with its whole attribution, and every finding raised."""
    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    sink = MemorySink()
    pipeline = Pipeline(Attributor(verifier, hold_seconds=hold), [sink], clock=FakeClock())
    seen: list = []
    pipeline.observe(seen.append)
    pipeline.feed((FALCO / f"{name}.jsonl").read_bytes().splitlines(), where=name)
    pipeline.close()
    rows = []
    for outcome in seen:
        a = outcome.attribution
        rows.append(
            [
                outcome.facts.pid,
                outcome.alert["rule"],
                a.status,
                a.identity.user if a.identity else None,
                a.root_pid,
                a.via,
                a.reason,
                a.claimed.user if a.claimed else None,
                a.root_start_ns,
                a.incomplete,
                a.token is not None,
            ]
        )
    found = [
        {
            k: alert[k]
            for k in (
                "rule",
                "priority",
                "output",
                "output_fields",
                "tags",
                "hostname",
                "source",
                "time",
            )
        }
        for alert in sink.alerts
        if alert["source"] == "whoexec"
    ]
    return {"attributions": rows, "findings": found}


ATTRIBUTIONS = json.loads((FALCO / "attributions.json").read_text())


@pytest.mark.parametrize(
    ("scenario", "hold"),
    [(s[0], s[1]) for s in SCENARIOS],
    ids=[f"{s[0]}-hold{s[1]:g}" for s in SCENARIOS],
)
def test_each_alert_s_whole_attribution_and_each_finding_are_as_reviewed(scenario, hold):
    """The table in tests/data/falco/attributions.json was read line by line: for each
    alert [pid, rule, status, user, root pid, via, reason, claimed user, root start,
    incomplete, token seen], and each finding as Falco-shaped output."""
    assert attribution_rows(scenario, hold) == ATTRIBUTIONS[f"{scenario}-hold{hold:g}"]


def test_real_falco_output_flows_through_and_its_placeholder_tokens_name_nobody(tmp_path):
    from webhook.deadletters import DeadLetters

    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    sink = MemorySink()
    letters = DeadLetters(tmp_path / "dead.jsonl")
    pipeline = Pipeline(
        Attributor(verifier, hold_seconds=0), [sink], clock=FakeClock(), dead_letters=letters
    )
    real = sorted((DATA / "falco-0.44.1").glob("*.jsonl"))
    for path in real:
        pipeline.feed(path.read_bytes().splitlines(), where=path.name)
    pipeline.close()
    assert letters.written == 0, "every real line is a readable alert"
    syscall = [a for a in sink.alerts if a["source"] == "syscall"]
    assert {a["output_fields"]["whoexec.attribution"] for a in syscall} <= {"none", "unverified"}
    assert all(a["output_fields"].get("whoexec.user.name") is None for a in sink.alerts)
    found = sorted({a["rule"] for a in sink.alerts if a["source"] == "whoexec"})
    assert found == [INVALID, NO_IDENTITY], "placeholders are invalid; runc's child has none"
    # the stock rule's alert kept its own text in front of whoexec's fields
    shadow = [a for a in syscall if a["rule"] == "Read sensitive file untrusted"]
    assert shadow and all("/etc/shadow" in a["output"] for a in shadow)


# --- the attribution of one alert, branch by branch ---------------------------------------

T_ISSUED = 1795341600


def make_token(signer, **changes) -> tuple[str, object]:
    from webhook.identity import Identity, sign_identity

    fields = dict(
        session_id="s-1", user=ALICE, uid="", groups=("devs",), namespace="shop",
        pod="web-0", container="app", issued_at=T_ISSUED,
    )  # fmt: skip
    fields.update(changes)
    identity = Identity(**fields)  # type: ignore[arg-type]
    return sign_identity(identity, signer), identity


def alert_for(pid: int, **fields):
    """An alert of a process in container c1 (app) of pod shop/web-0 on node-a."""
    from webhook.attribution.falco import check_alert

    return check_alert(
        {
            "rule": "r",
            "source": "syscall",
            "time": "2026-11-22T10:00:01Z",
            "hostname": "node-a",
            "output_fields": {
                "proc.pid": pid,
                "container.id": "c1",
                "container.name": "app",
                "k8s.ns.name": "shop",
                "k8s.pod.name": "web-0",
                **fields,
            },
        }
    )


def facts_for(pid: int, **fields):
    from webhook.attribution.falco import process_facts, token_pattern

    alert = alert_for(pid, **fields)
    return process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))


def attributor_with(trusted, *records) -> Attributor:
    from webhook.attribution.lineage import ProcessRecord, ProcessTable

    table = ProcessTable()
    for pid, record in records:
        assert isinstance(record, ProcessRecord)
        table.put(("node-a", pid), record)
    return Attributor(TokenVerifier(trusted), table)


def test_a_token_seen_only_in_the_parent_s_environment_names_nobody(signer, trusted):
    from webhook.attribution.lineage import Attribution

    token, identity = make_token(signer)
    facts = facts_for(50, **{"proc.aenv[WHOEXEC_IDENTITY]": token})
    attribution = attributor_with(trusted).attribute(facts)
    assert attribution == Attribution(
        "unverified",
        None,
        None,
        "aenv",
        "session root not seen: only proc.aenv carries the token, so freshness and single "
        "use cannot be checked",
        token=token,
        claimed=identity,
        incomplete=True,  # a late root may still settle it
    )


def test_a_forged_token_in_the_parent_s_environment_is_unverified_and_settled(signer, trusted):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from webhook.attribution.lineage import Attribution
    from webhook.identity import Signer

    forged, _ = make_token(Signer(Ed25519PrivateKey.generate()))
    facts = facts_for(50, **{"proc.aenv[WHOEXEC_IDENTITY]": forged})
    attribution = attributor_with(trusted).attribute(facts)
    assert attribution.status == "unverified" and attribution.via == "aenv"
    assert attribution.reason.startswith("UnknownKeyId: token kid ")
    assert (attribution.claimed, attribution.incomplete) == (None, False)
    assert attribution == Attribution(
        "unverified", None, None, "aenv", attribution.reason, token=forged
    )


def test_a_root_whose_start_time_is_unknown_is_not_believed_yet(signer, trusted):
    from webhook.attribution.lineage import Attribution, ProcessRecord

    token, identity = make_token(signer)
    root = ProcessRecord(1, None, "c1", token, entry=True)
    child = ProcessRecord(40, None, "c1")
    attribution = attributor_with(trusted, (40, root), (41, child)).attribute(
        facts_for(41, **{"proc.apid[1]": 40})
    )
    assert attribution == Attribution(
        "unverified",
        None,
        40,
        "lineage",
        "the start time of session root pid 40 is unknown, so its freshness cannot be checked",
        token=token,
        claimed=identity,
        incomplete=True,
    )


def test_a_token_inherited_from_an_unseen_root_is_held_not_judged(signer, trusted):
    from webhook.attribution.lineage import Attribution, ProcessRecord

    token, identity = make_token(signer)
    inherited = ProcessRecord(1, T_ISSUED * 10**9, "c1", token, entry=False)
    child = ProcessRecord(40, T_ISSUED * 10**9 + 1, "c1")
    attribution = attributor_with(trusted, (40, inherited), (41, child)).attribute(
        facts_for(41, **{"proc.apid[1]": 40})
    )
    assert attribution == Attribution(
        "unverified",
        None,
        40,
        "lineage",
        "session root not seen: pid 40 inherited its token from an ancestor this consumer "
        "never saw",
        token=token,
        claimed=identity,
        incomplete=True,
    )


def test_a_different_token_between_the_root_and_the_alert_is_tampering(signer, trusted):
    from webhook.attribution.lineage import ProcessRecord

    token, identity = make_token(signer)
    other, _ = make_token(signer, session_id="s-2", user="mallory@corp.example")
    start = T_ISSUED * 10**9
    records = (
        (40, ProcessRecord(1, start, "c1", token, entry=True)),  # the session root
        (41, ProcessRecord(40, start + 1, "c1", other)),  # exported another token
        (42, ProcessRecord(41, start + 2, "c1", token)),  # and the first one back
        (43, ProcessRecord(42, start + 3, "c1")),
    )
    attribution = attributor_with(trusted, *records).attribute(
        facts_for(43, **{"proc.apid[1]": 42, "proc.pid.ts": start + 3})
    )
    assert (attribution.status, attribution.identity, attribution.root_pid) == (
        "tampered",
        identity,
        40,
    )
    assert attribution.reason == (
        "descendant pid 41 carries a different WHOEXEC_IDENTITY than session root pid 40"
    )


def test_an_alert_without_a_pid_names_nobody(signer, trusted):
    from webhook.attribution.lineage import Attribution

    facts = dataclasses.replace(facts_for(50), pid=None)
    assert attributor_with(trusted).attribute(facts) == Attribution("none")


def submitted(attributor: Attributor, *alerts_facts) -> list:
    """Each alert's attribution, as the pipeline asks for them (learn, then attribute)."""
    out = []
    for facts in alerts_facts:
        attributor.learn(facts)
        out.append(attributor.attribute(facts))
    return out


def test_a_token_of_a_process_in_another_container_never_roots_this_one(signer, trusted):
    # pid 40 was a session root in container c-old; the pid now lives in container c1
    token, _ = make_token(signer)
    start = T_ISSUED * 10**9
    attributor = attributor_with(trusted)
    root_elsewhere = facts_for(
        40,
        **{"container.id": "c-old", "proc.args": f"WHOEXEC_IDENTITY={token} sh",
           "proc.pid.ts": start, "proc.apid[1]": 30},
    )  # fmt: skip
    child_here = facts_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": start + 5})
    _, attribution = submitted(attributor, root_elsewhere, child_here)
    assert attribution.status == "none" and attribution.identity is None


def test_a_reused_pid_higher_up_the_lineage_stops_the_walk(signer, trusted):
    # the grandparent's pid was reused after the parent started: its token is not ours
    token, _ = make_token(signer)
    start = T_ISSUED * 10**9
    attributor = attributor_with(trusted)
    late_root = facts_for(
        40,
        **{"proc.args": f"WHOEXEC_IDENTITY={token} sh", "proc.pid.ts": start + 100,
           "proc.apid[1]": 30},
    )  # fmt: skip
    parent = facts_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": start + 10})
    child = facts_for(42, **{"proc.apid[1]": 41, "proc.pid.ts": start + 20})
    *_, attribution = submitted(attributor, late_root, parent, child)
    assert attribution.status == "none"


def test_a_debug_container_s_pid_1_with_a_token_is_a_session_root(signer, trusted):
    token, identity = make_token(signer)
    start = T_ISSUED * 10**9
    attributor = attributor_with(trusted)
    debug_root = facts_for(
        40,
        **{"proc.vpid": 1, "proc.env[WHOEXEC_IDENTITY]": token, "proc.pid.ts": start,
           "proc.apid[1]": 30, "proc.aname[1]": "containerd-shim"},
    )  # fmt: skip
    child = facts_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": start + 5, "proc.vpid": 2})
    _, attribution = submitted(attributor, debug_root, child)
    assert (attribution.status, attribution.identity, attribution.root_pid) == (
        "verified",
        identity,
        40,
    )


def test_the_oldest_held_alert_is_released_when_too_many_wait(signer, trusted):
    attributor = Attributor(TokenVerifier(trusted), hold_seconds=60, max_held=2)
    orphans = [
        parse_alert(line)
        for line in (FALCO / "out_of_order.jsonl").read_bytes().splitlines()[:1] * 3
    ]
    released = []
    for n, alert in enumerate(orphans):
        alert = {**alert, "output_fields": {**alert["output_fields"], "proc.pid": 9000 + n}}
        released.extend(attributor.submit(alert, now=0))
    assert attributor.held == 2
    (first,) = released
    assert first.alert["output_fields"]["proc.pid"] == 9000, "the oldest one, not dropped"
    assert first.attribution.status == "none"


def test_the_verifier_caches_a_bounded_number_of_verdicts_and_judges_time_per_event(
    signer, trusted
):
    token, identity = make_token(signer)
    other, _ = make_token(signer, session_id="s-2")
    third, _ = make_token(signer, session_id="s-3")
    verifier = TokenVerifier(trusted, max_skew=300, cache_size=2)
    assert verifier.verify(token, T_ISSUED).identity == identity
    assert verifier.verify(token, T_ISSUED + 10).identity == identity
    assert verifier.verifications == 1, "the second look is the cache's"
    # a token up to max_skew seconds in the future of the event is believed, beyond it not
    assert verifier.verify(token, T_ISSUED - 300).identity == identity
    early = verifier.verify(token, T_ISSUED - 301)
    assert early.identity is None
    assert early.error == (
        f"TokenFromFuture: token iat {T_ISSUED} is 301s after the event (allowed skew 300s)"
    )
    assert verifier.verifications == 1, "the time is judged per event, on the cached verdict"
    verifier.verify(other, T_ISSUED)
    verifier.verify(third, T_ISSUED)  # the oldest entry leaves the cache
    assert verifier.verifications == 3
    verifier.verify(token, T_ISSUED)
    assert verifier.verifications == 4, "the evicted token is verified again"
    verifier.verify(third, T_ISSUED)
    assert verifier.verifications == 4


def test_a_bad_token_s_verdict_names_the_error_class(signer, trusted):
    verdict = TokenVerifier(trusted).verify("v1.0123456789abcdef.e30.c2ln", T_ISSUED)
    assert verdict.identity is None
    assert verdict.error == "TokenMalformed: token signature is 3 bytes, expected 64"


def test_held_alerts_leave_in_deadline_order_or_as_soon_as_their_root_is_learnt(trusted):
    from webhook.keyfiles import load_key_ring

    verifier = TokenVerifier(load_key_ring([FALCO / "identity.pub"]))
    attributor = Attributor(verifier, hold_seconds=5)
    child, root = (FALCO / "out_of_order.jsonl").read_bytes().splitlines()
    orphan = parse_alert(child)
    stranger = {**orphan, "output_fields": {**orphan["output_fields"], "proc.pid": 99_999}}
    stranger["output_fields"]["proc.apid[1]"] = 99_998
    assert attributor.submit(stranger, now=0) == []
    assert attributor.submit(orphan, now=1) == []
    assert attributor.held == 2
    assert attributor.release(now=4.9) == [], "nothing is due yet"
    (due,) = attributor.release(now=5)  # the stranger's time is up: it leaves first
    assert (due.alert["output_fields"]["proc.pid"], due.attribution.status) == (99_999, "none")
    # the late root arrives: the held child is attributed at once, before its deadline
    ready = attributor.submit(parse_alert(root), now=5.5)
    released = [o for o in ready if o.alert["rule"] == "Read sensitive file untrusted"]
    assert [o.attribution.status for o in released] == ["verified"]
    assert attributor.held == 0
    assert attributor.release(now=100) == []


def test_drain_hands_out_everything_still_held_as_well_as_it_can(trusted):
    from webhook.keyfiles import load_key_ring

    attributor = Attributor(TokenVerifier(load_key_ring([FALCO / "identity.pub"])), hold_seconds=60)
    child, _ = (FALCO / "out_of_order.jsonl").read_bytes().splitlines()
    held = parse_alert(child)
    attributor.submit(held, now=0)
    (out,) = attributor.drain()
    assert out.attribution.status == "none" and attributor.held == 0
    assert (out.alert, out.facts.pid, out.is_root_event) == (held, 4300, False)
    assert attributor.drain() == []


# --- what the table learns, alert by alert -------------------------------------------------

START = T_ISSUED * 10**9


def _root_fields(token: str, fields: dict) -> dict:
    args = {"proc.args": f"WHOEXEC_IDENTITY={token} sh", "proc.pid.ts": START}
    return {**args, "proc.apid[1]": 30, **fields}


def root_alert(pid: int, token: str, **fields):
    """The env execve of a session: its own argv carries the token."""
    return alert_for(pid, **_root_fields(token, fields))


def root_facts(pid: int, token: str, **fields):
    """The facts of :func:`root_alert`."""
    return facts_for(pid, **_root_fields(token, fields))


def test_a_process_seen_again_without_a_parent_keeps_the_one_it_had(signer, trusted):
    token, identity = make_token(signer)
    *_, attribution = submitted(
        attributor_with(trusted),
        root_facts(40, token),
        facts_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": START + 1}),
        facts_for(41, **{"proc.pid.ts": START + 1}),  # a rule whose output names no parent
        facts_for(42, **{"proc.apid[1]": 41, "proc.pid.ts": START + 2}),
    )
    assert (attribution.status, attribution.identity, attribution.root_pid) == (
        "verified",
        identity,
        40,
    )


def test_a_parent_first_seen_as_an_ancestor_learns_its_own_parent_from_its_alert(signer, trusted):
    token, identity = make_token(signer)
    child = facts_for(42, **{"proc.apid[1]": 41, "proc.pid.ts": START + 2})
    before, after = submitted(
        attributor_with(trusted),
        root_facts(40, token),
        child,  # names its parent 41, and nothing above
        facts_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": START + 1}),
        child,
    )[1::2]
    assert before.status == "none"
    assert (after.status, after.identity) == ("verified", identity)


def test_an_ancestor_s_parent_is_learnt_from_a_later_longer_chain(signer, trusted):
    token, identity = make_token(signer)
    short, long = submitted(
        attributor_with(trusted),
        root_facts(40, token),
        facts_for(42, **{"proc.apid[1]": 41, "proc.pid.ts": START + 2}),
        facts_for(43, **{"proc.apid[1]": 41, "proc.apid[2]": 40, "proc.pid.ts": START + 3}),
    )[1:]
    assert short.status == "none"
    assert (long.status, long.identity, long.root_pid) == ("verified", identity, 40)


def test_a_reused_pid_is_a_new_process_that_inherits_no_token(signer, trusted):
    token, _ = make_token(signer)
    root, reused = submitted(
        attributor_with(trusted),
        root_facts(40, token),
        facts_for(40, **{"proc.pid.ts": START + 600 * 10**9, "proc.apid[1]": 30}),
    )
    assert root.status == "verified"
    assert reused == Attribution("none")


def test_a_root_first_seen_as_an_ancestor_still_belongs_to_its_own_container(signer, trusted):
    # pid 40 shows up in another alert's chain (no container known yet), then as the
    # session root of container c-old: a process of c1 under that pid is not its session
    token, _ = make_token(signer)
    *_, attribution = submitted(
        attributor_with(trusted),
        facts_for(45, **{"proc.apid[1]": 40, "container.id": "c-old"}),
        root_facts(40, token, **{"container.id": "c-old"}),
        facts_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": START + 5}),
    )
    assert attribution == Attribution("none")


@pytest.mark.parametrize(
    ("where", "reason"),
    [
        # exec env WHOEXEC_IDENTITY=<someone else's> sh: the same pid and start, a new argv
        ("the root re-execs",
         "pid 40 carries a different WHOEXEC_IDENTITY in its environment than session root "
         "pid 40"),
        ("a child's parent exported it",
         "pid 41 carries a different WHOEXEC_IDENTITY in its parent's environment (proc.aenv) "
         "than session root pid 40"),
    ],
)  # fmt: skip
def test_another_token_inside_a_session_keeps_the_root_s_user_and_says_where(
    signer, trusted, where, reason
):
    token, identity = make_token(signer)
    other, _ = make_token(signer, session_id="s-2", user="mallory@corp.example")
    if where == "the root re-execs":
        second = root_facts(40, other, **{"proc.env[WHOEXEC_IDENTITY]": other})
    else:
        fields = {"proc.apid[1]": 40, "proc.pid.ts": START + 1}
        second = facts_for(41, **fields, **{"proc.aenv[WHOEXEC_IDENTITY]": other})
    _, attribution = submitted(attributor_with(trusted), root_facts(40, token), second)
    assert (attribution.status, attribution.identity, attribution.root_pid) == (
        "tampered",
        identity,
        40,
    )
    assert attribution.reason == reason


def test_a_token_is_never_lost_when_the_table_of_known_tokens_is_cleared(signer, trusted):
    # the table keeps two processes, so the tokens known are cleared on the third; the
    # third root, pushed out by noise and seen again, still carries its token
    tokens = [make_token(signer, session_id=f"s-{n}")[0] for n in (1, 2, 3)]
    attributor = Attributor(TokenVerifier(trusted), ProcessTable(max_entries=2))
    roots = [root_facts(pid, token, **{"proc.apid[1]": None}) for pid, token in
             zip((10, 20, 30), tokens, strict=True)]  # fmt: skip
    noise = [facts_for(pid) for pid in (50, 51)]
    *_, again = submitted(attributor, *roots, *noise, roots[2])
    assert (again.status, again.root_pid) == ("verified", 30)
    assert again.identity is not None and again.identity.session_id == "s-3"


# --- the walk ------------------------------------------------------------------------------


def chain_of(n: int, token: str) -> list:
    """Session root 1000, then n descendants, each the child of the one before."""
    root = (1000, ProcessRecord(999, START, "c1", token, entry=True))
    return [root] + [(1000 + i, ProcessRecord(999 + i, START + i, "c1")) for i in range(1, n + 1)]


def test_the_walk_climbs_at_most_64_processes(signer, trusted):
    from webhook.attribution.lineage import MAX_WALK

    token, identity = make_token(signer)
    attributor = attributor_with(trusted, *chain_of(70, token))
    top = 1000 + MAX_WALK - 1  # the root is the 64th process of its walk
    reach = attributor.attribute(facts_for(top, **{"proc.pid.ts": START + MAX_WALK - 1}))
    beyond = attributor.attribute(facts_for(top + 1, **{"proc.pid.ts": START + MAX_WALK}))
    assert (reach.status, reach.identity, reach.root_pid) == ("verified", identity, 1000)
    assert beyond == Attribution("none")


def test_a_loop_of_stale_parent_links_ends_the_walk(signer, trusted):
    loop = ((41, ProcessRecord(42, START, "c1")), (42, ProcessRecord(41, START, "c1")))
    assert attributor_with(trusted, *loop).attribute(facts_for(41)) == Attribution("none")


def test_a_grandparent_that_started_after_the_parent_is_a_reused_pid(signer, trusted):
    token, _ = make_token(signer)
    records = (
        (40, ProcessRecord(1, START + 20, "c1", token, entry=True)),  # the pid, reused
        (41, ProcessRecord(40, START + 10, "c1")),
        (42, ProcessRecord(41, START + 30, "c1")),
    )
    attribution = attributor_with(trusted, *records).attribute(
        facts_for(42, **{"proc.pid.ts": START + 30})
    )
    assert attribution == Attribution("none")


def test_a_process_reparented_to_the_host_s_init_is_in_no_session(signer, trusted):
    # its session's shell died and it was reparented to pid 1: even a token on pid 1's
    # record (the host's init) never roots it
    token, _ = make_token(signer)
    records = (
        (1, ProcessRecord(0, START - 100, None, token, entry=True)),
        (41, ProcessRecord(1, START + 1, "c1")),
    )
    assert attributor_with(trusted, *records).attribute(facts_for(41)) == Attribution("none")


# --- held alerts ---------------------------------------------------------------------------


def test_each_late_root_releases_its_own_held_alerts_at_once(signer, trusted):
    attributor = Attributor(TokenVerifier(trusted), hold_seconds=60)
    first, _ = make_token(signer)
    second, _ = make_token(signer, session_id="s-2")
    for child, parent in ((41, 40), (51, 50), (61, 60)):
        alert = alert_for(child, **{"proc.apid[1]": parent, "proc.pid.ts": START + 1})
        assert attributor.submit(alert, now=0) == []
    assert attributor.held == 3

    def seen(outcomes) -> list:
        return [
            (o.facts.pid, o.attribution.status, o.attribution.identity.session_id, o.is_root_event)
            for o in outcomes
        ]

    assert seen(attributor.submit(root_alert(40, first), now=1)) == [
        (41, "verified", "s-1", False),  # the held child, before its deadline
        (40, "verified", "s-1", False),
    ]
    assert seen(attributor.submit(root_alert(50, second), now=2)) == [
        (51, "verified", "s-2", False),
        (50, "verified", "s-2", False),
    ]
    (late,) = attributor.release(now=60)  # pid 61's root never came
    assert (late.facts.pid, late.attribution, late.is_root_event) == (
        61,
        Attribution("none"),
        False,
    )


@pytest.mark.parametrize(("hold", "held"), [(0, 0), (0.5, 1), (2, 1)])
def test_any_hold_time_above_zero_holds_an_alert_that_may_find_its_root_later(trusted, hold, held):
    attributor = Attributor(TokenVerifier(trusted), hold_seconds=hold)
    out = attributor.submit(alert_for(41, **{"proc.apid[1]": 40}), now=0)
    assert (attributor.held, len(out)) == (held, 1 - held)


def test_a_session_root_is_claimed_once_however_many_alerts_it_roots(signer, trusted):
    # the store's claims are a database round trip: one per root, not one per alert
    from webhook.attribution.lineage import MemoryRootClaims

    class CountingClaims(MemoryRootClaims):
        calls = 0

        def claim(self, session_id, container, root):
            CountingClaims.calls += 1
            return super().claim(session_id, container, root)

    token, _ = make_token(signer)
    attributor = Attributor(TokenVerifier(trusted), claims=CountingClaims())
    children = [facts_for(pid, **{"proc.apid[1]": 40, "proc.pid.ts": START + 1})
                for pid in (41, 42, 43)]  # fmt: skip
    attributions = submitted(attributor, root_facts(40, token), *children)
    assert [a.status for a in attributions] == ["verified"] * 4
    assert CountingClaims.calls == 1


# --- bounds and claims ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("apart", "same"), [(0, True), (-2_000_000_000, True), (2_000_000_000, True),
                        (2_000_000_001, False)]
)  # fmt: skip
def test_a_root_seen_in_proc_and_by_falco_is_one_process_up_to_two_seconds_apart(apart, same):
    from webhook.attribution.lineage import SessionRoot, same_process

    seen = SessionRoot("node-a", 40, START)
    assert same_process(seen, SessionRoot("node-a", 40, START + apart)) is same
    assert not same_process(seen, SessionRoot("node-b", 40, START))
    assert not same_process(seen, SessionRoot("node-a", 41, START))


def test_single_use_claims_remember_as_many_sessions_as_they_are_sized_for():
    from webhook.attribution.lineage import MemoryRootClaims, SessionRoot

    def root(pid: int) -> SessionRoot:
        return SessionRoot("node-a", pid, START)

    claims = MemoryRootClaims(max_entries=2)
    assert claims.claim("s-1", "app", root(1)) == root(1)
    assert claims.claim("s-2", "app", root(2)) == root(2)
    assert claims.claim("s-1", "app", root(9)) == root(1), "both are remembered"
    assert claims.claim("s-1", "debug", root(9)) == root(9), "a session per container"
    # the third session pushed the oldest out: bounded memory, the store keeps them all
    assert claims.claim("s-1", "app", root(8)) == root(8)


def test_a_process_table_holds_at_least_one_process():
    table = ProcessTable(max_entries=1)
    record = ProcessRecord(None, None, None)
    table.put(("h", 1), record)
    assert table.get(("h", 1)) is record
    with pytest.raises(ValueError, match=r"^max_entries must be >= 1$"):
        ProcessTable(max_entries=0)


def test_putting_a_known_process_again_makes_it_the_most_recently_used():
    table = ProcessTable(max_entries=2)
    for pid in (1, 2, 1, 3):
        table.put(("h", pid), ProcessRecord(None, None, None))
    assert (("h", 1) in table._records, ("h", 2) in table._records) == (True, False)
    assert table.evictions == 1, "2 was the least recently used"
    table.put(("h", 4), ProcessRecord(None, None, None))
    table.put(("h", 5), ProcessRecord(None, None, None))
    assert table.evictions == 3, "each eviction is counted (a metric)"


# --- what an alert and a finding say -------------------------------------------------------


def test_a_claim_is_shown_only_when_nobody_is_named():
    from webhook.attribution.lineage import enrichment
    from webhook.identity import Identity

    alice = Identity("s-1", ALICE, "u", (), "shop", "web-0", "app", 1)
    mallory = Identity("s-9", "mallory@corp.example", "u", (), "shop", "web-0", "app", 1)
    replayed = enrichment(
        Attribution("replayed", None, 40, claimed=mallory, root_start_ns=START), "node-a"
    )
    assert (replayed["whoexec.claimed.user.name"], replayed["whoexec.claimed.session.id"]) == (
        "mallory@corp.example",
        "s-9",
    )
    assert replayed["whoexec.user.name"] is None
    # a user is named: a claim beside it would read as a second person
    assert replayed["whoexec.replay.id"] == f"replayed:node-a:40:{START}"
    verified = enrichment(Attribution("verified", alice, claimed=mallory), "node-a")
    assert verified["whoexec.replay.id"] is None
    assert verified["whoexec.user.name"] == ALICE
    assert verified["whoexec.claimed.user.name"] is verified["whoexec.claimed.session.id"] is None


def test_an_unverifiable_session_s_finding_is_a_warning_that_says_where(signer, trusted):
    from webhook.attribution.lineage import Outcome, findings

    token, _ = make_token(signer)
    facts = facts_for(50, **{"proc.aenv[WHOEXEC_IDENTITY]": token, "proc.name": "cat"})
    attribution = attributor_with(trusted).attribute(facts)
    ((_, finding),) = findings(Outcome(alert_for(50), attribution, facts, False))
    assert (finding["rule"], finding["priority"]) == ("Exec identity not verifiable", "Warning")
    assert finding["output"] == (
        "Exec identity not verifiable: session root not seen: only proc.aenv carries the "
        f"token, so freshness and single use cannot be checked. The token claims user {ALICE} "
        "(session s-1); nobody is attributed (k8s_ns=shop k8s_pod_name=web-0 container=app "
        "pid=50 proc=cat)"
    )


def test_a_held_alert_is_never_attributed_to_a_process_that_took_its_pid(signer, trusted):
    # the alert waits for its root; meanwhile its process exits and pid 41 becomes another
    # session's root: that session is not the held alert's
    attributor = Attributor(TokenVerifier(trusted), hold_seconds=60)
    orphan = alert_for(41, **{"proc.apid[1]": 40, "proc.pid.ts": START + 1})
    assert attributor.submit(orphan, now=0) == []
    token, _ = make_token(signer, issued_at=T_ISSUED + 20)
    later = START + 20 * 10**9
    new_root = root_alert(41, token, **{"proc.pid.ts": later})
    out = attributor.submit(new_root, now=1)
    assert [(o.facts.start_ts, o.attribution.status) for o in out] == [(later, "verified")]
    assert attributor.held == 1
    (released,) = attributor.release(now=60)
    assert (released.facts.start_ts, released.attribution) == (START + 1, Attribution("none"))


def test_a_replayed_root_s_alerts_and_finding_share_its_replay_id_and_nothing_else_has_one():
    alerts, _, _ = run_scenario("replay_reused_within_window")
    replay = "replayed:ip-10-0-3-17.ec2.internal:6200:1795341610000000100"
    seen = {
        (
            a["source"],
            a["output_fields"]["whoexec.attribution"],
            a["output_fields"].get("whoexec.replay.id"),
        )
        for a in alerts
    }
    assert seen == {
        ("syscall", "verified", None),  # carol's own session
        ("syscall", "replayed", replay),
        ("whoexec", "replayed", replay),  # the finding
    }


def test_a_root_that_started_before_its_token_was_issued_is_stale_by_that_many_seconds():
    from webhook.attribution.lineage import ReplayPolicy, freshness_problem

    policy = ReplayPolicy(fresh_seconds=30, skew_seconds=5)
    assert freshness_problem(T_ISSUED, START - 10 * 10**9, policy) == (
        "stale: the session root started 10s before the token was issued (allowed skew 5s)"
    )
    assert freshness_problem(T_ISSUED, START - 5 * 10**9, policy) == ""
    assert freshness_problem(T_ISSUED, START + 30 * 10**9, policy) == ""
    assert freshness_problem(T_ISSUED, START + 31 * 10**9, policy) == (
        "stale: the session root started 31s after the token was issued (freshness window 30s)"
    )


def test_whoexec_s_own_words_are_added_to_an_alert_that_has_no_output():
    from webhook.attribution.lineage import Outcome, enrich
    from webhook.identity import Identity

    alice = Identity("s-1", ALICE, "u", (), "shop", "web-0", "app", 1)
    alert = {k: v for k, v in alert_for(50).items() if k != "output"}
    out = enrich(Outcome(alert, Attribution("verified", alice), facts_for(50), False))
    assert out["output"] == f" k8s_user={ALICE} k8s_session=s-1"


def test_a_finding_about_an_alert_without_a_hostname_has_an_empty_one(signer, trusted):
    from webhook.attribution.lineage import Outcome, findings

    token, _ = make_token(signer)
    alert = {k: v for k, v in alert_for(50).items() if k != "hostname"}
    facts = facts_for(50, **{"proc.aenv[WHOEXEC_IDENTITY]": token})
    attribution = attributor_with(trusted).attribute(facts)
    ((_, finding),) = findings(Outcome(alert, attribution, facts, False))
    assert finding["hostname"] == ""


# --- the binding: what is true of every container ---------------------------------------

#: how the container plugin's containerd engine names a container: by its id
BY_ID = {"container.id": "44d266bd8160", "container.name": "44d266bd8160"}
NO_K8S = {
    "container.name": None,
    "container.label[io.kubernetes.container.name]": None,
    "k8s.ns.name": None,
    "k8s.pod.name": None,
    "k8s.pod.uid": None,
}
BINDING_UNCHECKED = "Exec identity binding unchecked"


def session_through_pipeline(signer, trusted, **where):
    """A root and its child's alert, both in the container ``where`` describes."""
    token, _ = make_token(signer, pod_uid="uid-A")
    root = {**root_alert(40, token, **{"k8s.pod.uid": "uid-A", **where}), "tags": ["whoexec"]}
    child = alert_for(
        41,
        **{"proc.apid[1]": 40, "proc.pid.ts": START + 1, "k8s.pod.uid": "uid-A", **where},
    )
    child = {**child, "rule": READ_SHADOW, "output": "Sensitive file opened"}
    sink = MemorySink()
    pipeline = Pipeline(Attributor(TokenVerifier(trusted)), [sink], clock=FakeClock())
    pipeline.feed([json.dumps(root), json.dumps(child)])
    pipeline.close()
    (alert,) = [a for a in sink.alerts if a["source"] == "syscall"]
    found = [a for a in sink.alerts if a["source"] == "whoexec"]
    return alert, found


def test_a_container_named_by_its_id_is_unknown_and_the_genuine_session_is_verified(
    signer, trusted
):
    # cluster-2026-12-03: alice's exec into web2, created after Falco started, came out as
    # a Critical replay "minted for container 'app' ... used in container '44d266bd8160'"
    alert, found = session_through_pipeline(signer, trusted, **BY_ID)
    fields = alert["output_fields"]
    assert (fields["whoexec.attribution"], fields["whoexec.user.name"]) == ("verified", ALICE)
    assert (fields["whoexec.binding"], fields["whoexec.binding.unchecked"]) == (
        "unchecked",
        ["container"],
    )
    assert alert["output"].endswith(" k8s_session=s-1 k8s_binding=unchecked(container)")
    (finding,) = found
    assert (finding["rule"], finding["priority"]) == (BINDING_UNCHECKED, "Warning")
    assert finding["output_fields"]["whoexec.session.id"] == "s-1"
    assert finding["output_fields"]["whoexec.user.name"] == ALICE
    assert "does not show the container the token is bound to" in finding["output"]


def test_the_kubelet_s_label_binds_a_container_named_by_its_id(signer, trusted):
    label = "container.label[io.kubernetes.container.name]"
    alert, found = session_through_pipeline(signer, trusted, **BY_ID, **{label: "app"})
    assert alert["output_fields"]["whoexec.attribution"] == "verified"
    assert alert["output_fields"]["whoexec.binding"] == "checked"
    assert alert["output_fields"]["whoexec.binding.unchecked"] is None
    assert "k8s_binding" not in alert["output"] and found == []
    # and a label naming another container is a replay into it, as before
    alert, found = session_through_pipeline(signer, trusted, **BY_ID, **{label: "sidecar"})
    assert alert["output_fields"]["whoexec.attribution"] == "replayed"
    assert alert["output_fields"]["whoexec.binding"] == "mismatch"
    assert [f["rule"] for f in found] == [REPLAYED]


def test_without_kubernetes_metadata_a_session_is_never_verified_in_silence(signer, trusted):
    # the container plugin without its worker: container.name and k8s.* are null
    alert, found = session_through_pipeline(signer, trusted, **NO_K8S)
    fields = alert["output_fields"]
    assert fields["whoexec.attribution"] == "verified"
    assert fields["whoexec.binding.unchecked"] == ["namespace", "pod", "pod_uid", "container"]
    assert "k8s_binding=unchecked(namespace,pod,pod_uid,container)" in alert["output"]
    assert [(f["rule"], f["priority"]) for f in found] == [(BINDING_UNCHECKED, "Warning")]
    assert all(f["priority"] != "Critical" for f in found)


def test_a_fully_bound_session_says_checked_and_raises_nothing(signer, trusted):
    alert, found = session_through_pipeline(signer, trusted)
    assert alert["output_fields"]["whoexec.binding"] == "checked"
    assert found == []


def test_the_unchecked_binding_finding_is_raised_once_per_session_root(signer, trusted):
    lines = []
    for session, root in (("s-1", 40), ("s-2", 50)):  # two sessions, three alerts each
        token, _ = make_token(signer, session_id=session)
        lines.append(json.dumps({**root_alert(root, token, **BY_ID), "tags": ["whoexec"]}))
        for pid in (root + 1, root + 2, root + 3):
            child = alert_for(pid, **{"proc.apid[1]": root, "proc.pid.ts": START + pid, **BY_ID})
            lines.append(json.dumps({**child, "rule": READ_SHADOW}))
    sink = MemorySink()
    pipeline = Pipeline(Attributor(TokenVerifier(trusted)), [sink], clock=FakeClock())
    pipeline.feed(lines)
    pipeline.close()
    found = [a for a in sink.alerts if a["source"] == "whoexec"]
    assert [(f["rule"], f["output_fields"]["whoexec.session.id"]) for f in found] == [
        (BINDING_UNCHECKED, "s-1"),
        (BINDING_UNCHECKED, "s-2"),
    ]
    # each names the first alert of its session that showed the gap: here its root
    assert found[0]["output"].endswith(
        "(session=s-1 k8s_user=alice@corp.example k8s_ns=shop k8s_pod_name=web-0 "
        "container=None pid=40 proc=None)"
    )
    assert {a["output_fields"]["whoexec.binding"] for a in sink.alerts} == {"unchecked"}


@pytest.mark.parametrize(
    ("seen", "status", "unchecked"),
    [
        ({}, "checked", ()),
        ({"container_name": None}, "unchecked", ("container",)),
        ({"pod_uid": None, "container_name": None}, "unchecked", ("pod_uid", "container")),
        # what can be compared still counts: a pending pod UID does not hide another pod
        ({"pod_uid": None, "pod": "db-0"}, "mismatch", ("pod_uid",)),
        ({"namespace": None, "pod": None, "pod_uid": None, "container_name": None},
         "unchecked", ("namespace", "pod", "pod_uid", "container")),
    ],
    ids=["all-known", "container-unknown", "two-unknown", "mismatch-beside-unknown", "nothing"],
)  # fmt: skip
def test_the_binding_says_what_it_could_not_compare(seen, status, unchecked):
    import dataclasses

    from webhook.attribution.lineage import check_binding
    from webhook.identity import Identity

    minted = Identity("s", ALICE, "u", (), "shop", "web-0", "app", 1, pod_uid="uid-A")
    known = dict(namespace="shop", pod="web-0", container_name="app", pod_uid="uid-A")
    facts = dataclasses.replace(facts_for(50), **{**known, **seen})
    binding = check_binding(minted, facts)
    assert (binding.status, binding.unchecked) == (status, unchecked)


def test_a_token_without_a_pod_uid_binds_no_pod_uid_and_lists_none():
    from webhook.attribution.lineage import check_binding
    from webhook.identity import Identity

    minted = Identity("s", ALICE, "u", (), "shop", "web-0", "app", 1)  # no pod look-up
    binding = check_binding(minted, facts_for(50, **{"k8s.pod.uid": None}))
    assert (binding.status, binding.unchecked) == ("checked", ())


# --- entries Falco cannot name the parent of ----------------------------------------------


def test_a_debug_container_sharing_the_target_s_pid_namespace_is_attributed(signer, trusted):
    # kubectl debug --target=app: no process of the debug container has vpid 1, and its
    # first process's parent (the runtime) is gone from Falco's view: proc.pname is null
    token, identity = make_token(signer, container="debugger-x7k")
    debug = {"container.id": "5e1f00d2a9b3", "container.name": "debugger-x7k"}
    first = alert_for(
        500,
        **{
            **debug,
            "proc.vpid": 9,
            "proc.pname": None,
            "proc.ppid": None,
            "proc.pid.ts": START,
            "proc.env[WHOEXEC_IDENTITY]": token,
            "proc.aenv[WHOEXEC_IDENTITY]": "",
        },
    )
    first = {**first, "rule": "Whoexec exec entry", "tags": ["whoexec", "whoexec_entry"]}
    cat = alert_for(
        501,
        **{
            **debug,
            "proc.vpid": 12,
            "proc.apid[1]": 500,
            "proc.pname": "sh",
            "proc.pid.ts": START + 1,
            "proc.env[WHOEXEC_IDENTITY]": token,
            "proc.aenv[WHOEXEC_IDENTITY]": token,
        },
    )
    sink = MemorySink()
    pipeline = Pipeline(Attributor(TokenVerifier(trusted)), [sink], clock=FakeClock())
    pipeline.feed([json.dumps(first), json.dumps({**cat, "rule": READ_SHADOW})])
    pipeline.close()
    (alert,) = sink.alerts
    fields = alert["output_fields"]
    assert (fields["whoexec.attribution"], fields["whoexec.user.name"]) == ("verified", ALICE)
    assert fields["whoexec.session.id"] == identity.session_id
    assert fields["whoexec.binding"] == "checked"


def test_an_exec_without_identity_is_found_when_falco_names_no_parent(trusted):
    # the webhook down, bob's `kubectl exec -it web -- sh`: runc was gone before Falco
    # reported the shell
    shell = alert_for(
        600,
        **{
            "proc.vpid": 12,
            "proc.pname": None,
            "proc.ppid": None,
            "proc.pid.ts": START,
            "proc.env[WHOEXEC_IDENTITY]": "",
            "proc.aenv[WHOEXEC_IDENTITY]": "",
        },
    )
    sink = MemorySink()
    pipeline = Pipeline(Attributor(TokenVerifier(trusted)), [sink], clock=FakeClock())
    pipeline.feed([json.dumps({**shell, "rule": "Terminal shell in container"})])
    pipeline.close()
    alert, finding = sink.alerts
    assert alert["output_fields"]["whoexec.attribution"] == "none"
    assert (finding["rule"], finding["priority"]) == (NO_IDENTITY, "Notice")
    assert finding["output"].endswith("parent=unknown)")


def test_a_child_of_a_busybox_shell_named_exe_is_not_taken_for_a_session_entry(signer, trusted):
    # cluster-2026-12-03, consumer restarted mid-session: BusyBox's `cat` (exe) under
    # BusyBox's `sh` (exe, exe path /.whoexec/env) carries the session's token. Taken for
    # an entry, it was judged as a root, stale: a Critical replay of a genuine session
    token, identity = make_token(signer)
    cat = alert_for(
        41,
        **{
            "proc.vpid": 113,
            "proc.name": "exe",
            "proc.pname": "exe",
            "proc.pexepath": "/.whoexec/env",
            "proc.apid[1]": 40,
            "proc.pid.ts": START + 3600 * 10**9,  # an hour into the session
            "proc.env[WHOEXEC_IDENTITY]": token,
            "proc.aenv[WHOEXEC_IDENTITY]": token,
        },
    )
    sink = MemorySink()
    pipeline = Pipeline(Attributor(TokenVerifier(trusted)), [sink], clock=FakeClock())
    pipeline.feed([json.dumps({**cat, "rule": READ_SHADOW})])
    pipeline.close()
    alert, finding = sink.alerts
    assert alert["output_fields"]["whoexec.attribution"] == "unverified"
    assert alert["output_fields"]["whoexec.claimed.user.name"] == identity.user
    assert (finding["rule"], finding["priority"]) == ("Exec identity not verifiable", "Warning")


STALE = START + 120 * 10**9  # two minutes after the token was issued: outside 30 s


def judged_alone(trusted, **fields):
    """The attribution of one process that is also the first this consumer sees."""
    attributor = attributor_with(trusted)
    facts = facts_for(700, **{"proc.vpid": 9, "proc.pid.ts": STALE, **fields})
    attributor.learn(facts)
    return attributor.attribute(facts)


def test_a_stale_root_known_only_by_its_environment_and_no_parent_is_unverified_not_a_replay(
    signer, trusted
):
    from webhook.attribution.lineage import Attribution

    token, identity = make_token(signer)
    attribution = judged_alone(
        trusted,
        **{"proc.pname": None, "proc.ppid": None, "proc.env[WHOEXEC_IDENTITY]": token},
    )
    assert attribution == Attribution(
        "unverified",
        None,
        700,
        "env",
        "session root not seen: pid 700 carries the token only in its environment and Falco "
        "named no parent, so it may be a process of a session whose root Falco missed "
        "(stale: the session root started 120s after the token was issued (freshness "
        "window 30s)); not judged a replay",
        token=token,
        claimed=identity,
        incomplete=True,  # its real root may still arrive
    )


@pytest.mark.parametrize(
    "shows_the_entry",
    [
        # its own argv carries the token (the env execve itself), parent unknown
        {"proc.pname": None, "proc.ppid": None, "proc.args": "WHOEXEC_IDENTITY={token} sh"},
        # a runtime parent named: the container's entry for sure, token only in its env
        {"proc.pname": "runc:[2:INIT]", "proc.ppid": 5},
        # pid 1 of its container (kubectl debug's own container): its entry for sure
        {"proc.vpid": 1, "proc.pname": None, "proc.ppid": None},
    ],
    ids=["token-in-argv", "runtime-parent", "container-pid-1"],
)
def test_a_stale_root_that_shows_its_entry_is_a_replay_with_what_it_claims_and_left_unchecked(
    signer, trusted, shows_the_entry
):
    from webhook.attribution.lineage import Attribution

    token, identity = make_token(signer, pod_uid="uid-web-0")
    fields = {
        k: v.format(token=token) if isinstance(v, str) else v for k, v in shows_the_entry.items()
    }
    attribution = judged_alone(
        trusted, **{**fields, "proc.env[WHOEXEC_IDENTITY]": token, "k8s.pod.uid": None}
    )
    assert attribution == Attribution(
        "replayed",
        None,
        700,
        attribution.via,
        "stale: the session root started 120s after the token was issued (freshness window 30s)",
        token=token,
        claimed=identity,
        root_start_ns=STALE,
        binding="unchecked",
        unchecked=("pod_uid",),
    )
