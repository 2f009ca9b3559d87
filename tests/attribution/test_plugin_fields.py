"""Alerts that whoexec's Falco plugin enriched: the consumer takes the plugin's attribution,
but names a user only when the token the plugin passed along verifies with the consumer's
own keys and is bound to the alert's own Kubernetes fields."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from webhook.attribution.falco import FalcoAlert, process_facts, token_pattern
from webhook.attribution.lineage import Attributor, TokenVerifier
from webhook.attribution.pipeline import MemorySink, Pipeline
from webhook.attribution.plugin_fields import plugin_attribution
from webhook.keyfiles import load_key_ring

# real Falco 0.44.1 alerts of 2026-12-03 and the key that signed their tokens
CAPTURE = Path(__file__).parent.parent.parent / "plugin" / "tests" / "data" / "cluster-2026-12-03"
ALICE_SID = "f3415519-d9fd-474d-9308-66042c8c7347"


def capture() -> list[FalcoAlert]:
    lines = (CAPTURE / "alerts.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def verifier() -> TokenVerifier:
    return TokenVerifier(load_key_ring([CAPTURE / "identity.pub"]))


def s1_token() -> str:
    root = next(a for a in capture() if a["rule"] == "Whoexec exec session root")
    args: str = root["output_fields"]["proc.args"]
    return args.removeprefix("WHOEXEC_IDENTITY=").split(" ")[0]


def payload(token: str) -> dict[str, Any]:
    part = token.split(".")[2]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    return decoded


def enriched(**plugin: Any) -> FalcoAlert:
    """S1's real "Read sensitive file untrusted" alert (cat, pid 1172), with the fields the
    plugin adds for it (plugin/tests/runner.rs checks the plugin says exactly this)."""
    alert = next(
        a
        for a in capture()
        if a["rule"] == "Read sensitive file untrusted" and a["output_fields"]["proc.pid"] == 1172
    )
    alert = copy.deepcopy(alert)
    token = s1_token()
    fields = {
        "whoexec.attribution": "verified",
        "whoexec.user": "alice",
        "whoexec.uid": "",
        "whoexec.groups": ["devs", "system:authenticated"],
        "whoexec.session": ALICE_SID,
        "whoexec.claimed.user": None,
        "whoexec.claimed.session": None,
        "whoexec.reason": None,
        "whoexec.root.pid": 1165,
        "whoexec.root.ts": 1796314360496562221,
        "whoexec.token": token,
    }
    fields.update({k.replace("__", "."): v for k, v in plugin.items()})
    alert["output_fields"].update(fields)
    return alert


def attribute(alert: FalcoAlert):  # type: ignore[no-untyped-def]
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    return plugin_attribution(alert, facts, verifier())


def test_a_plugin_verified_alert_names_alice_after_its_token_is_checked_again():
    attribution = attribute(enriched())
    assert attribution is not None
    assert attribution.status == "verified"
    assert attribution.identity is not None and attribution.identity.user == "alice"
    assert (attribution.root_pid, attribution.via) == (1165, "plugin")


def test_an_alert_without_plugin_fields_is_left_to_the_lineage_walk():
    alert = capture()[-1]
    assert attribute(alert) is None


def test_a_forged_token_behind_a_plugin_verdict_names_nobody():
    token = s1_token()
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBA")
    attribution = attribute(enriched(whoexec__token=forged))
    assert attribution is not None
    assert attribution.status == "unverified"
    assert attribution.identity is None
    assert (attribution.reason, attribution.token, attribution.root_pid, attribution.via) == (
        "BadSignature: token signature does not verify with key '55e4635991495e2f'",
        forged,
        1165,
        "plugin",
    )


def test_a_plugin_verdict_without_its_token_names_nobody():
    attribution = attribute(enriched(whoexec__token=None))
    assert attribution is not None and attribution.status == "unverified"
    assert "no whoexec.token" in attribution.reason


def test_a_token_bound_to_another_pod_than_the_alert_s_is_a_replay():
    alert = enriched()
    alert["output_fields"]["k8s.pod.name"] = "payments-0"
    attribution = attribute(alert)
    assert attribution is not None
    assert attribution.status == "replayed"
    assert attribution.identity is None
    assert attribution.claimed is not None and attribution.claimed.user == "alice"


def test_an_alert_without_its_kubernetes_fields_cannot_vouch_for_the_token():
    alert = enriched()
    alert["output_fields"]["k8s.ns.name"] = None
    attribution = attribute(alert)
    assert attribution is not None and attribution.status == "unverified"
    assert attribution.reason.startswith("binding unknown")


def test_a_container_named_by_its_id_is_no_mismatch():
    alert = enriched()
    alert["output_fields"]["container.name"] = alert["output_fields"]["container.id"]
    attribution = attribute(alert)
    assert attribution is not None and attribution.status == "verified"


def test_a_plugin_user_that_is_not_the_token_s_names_nobody():
    attribution = attribute(enriched(whoexec__user="mallory"))
    assert attribution is not None and attribution.status == "unverified"


@pytest.mark.parametrize("status", ["replayed", "unverified"])
def test_a_plugin_verdict_that_names_nobody_keeps_the_claim_apart(status: str):
    attribution = attribute(
        enriched(whoexec__attribution=status, whoexec__user=None, whoexec__session=None)
    )
    assert attribution is not None
    assert attribution.status == status
    assert attribution.identity is None
    assert attribution.claimed is not None and attribution.claimed.user == "alice"


def test_the_consumer_passes_on_a_plugin_alert_with_its_user_and_the_plugin_s_fields():
    sink = MemorySink()
    pipeline = Pipeline(
        Attributor(verifier()),
        [sink],
        clock=lambda: 1000.0,
    )
    pipeline.feed([json.dumps(enriched()).encode()], where="plugin")
    pipeline.close()
    (out,) = [a for a in sink.alerts if a["source"] == "syscall"]
    fields = out["output_fields"]
    assert fields["whoexec.attribution"] == "verified"
    assert fields["whoexec.user.name"] == "alice"
    assert fields["whoexec.session.id"] == ALICE_SID == payload(s1_token())["sid"]
    assert fields["whoexec.user"] == "alice", "the plugin's own fields pass through"
    assert "k8s_user=alice" in out["output"]


# --- every verdict the plugin can give, and exactly what the consumer makes of it ----------


def alice():  # type: ignore[no-untyped-def]
    identity = verifier().verify(s1_token(), 1796314361).identity
    assert identity is not None and identity.user == "alice"
    return identity


ROOT = {"root_pid": 1165, "via": "plugin", "token": None}
ROOT_TS = 1796314360496562221


@pytest.mark.parametrize(
    ("plugin", "expected"),
    [
        # the plugin saw no session: nothing to check
        ({"whoexec__attribution": "none"}, {"status": "none", "via": "plugin"}),
        # a verdict that names someone, and the token to check it by is missing
        (
            {"whoexec__token": None, "whoexec__reason": "kept"},
            {"status": "unverified", **ROOT,
             "reason": "the Falco plugin named a user but passed no whoexec.token to check"},
        ),
        # one that names nobody keeps the plugin's own reason
        (
            {"whoexec__attribution": "unverified", "whoexec__token": None,
             "whoexec__reason": "no token in the session root's environment"},
            {"status": "unverified", **ROOT,
             "reason": "no token in the session root's environment"},
        ),
        (
            {"whoexec__attribution": "replayed", "whoexec__user": None,
             "whoexec__reason": "a second root with session f341's token"},
            {"status": "replayed", **ROOT, "token": "S1", "claimed": "alice",
             "reason": "a second root with session f341's token", "root_start_ns": ROOT_TS},
        ),
        (
            {"whoexec__session": "another-session"},
            {"status": "unverified", **ROOT, "token": "S1", "claimed": "alice",
             "reason": "the Falco plugin's whoexec.user or whoexec.session is not its token's"},
        ),
        (
            {"k8s__pod__name": None},
            {"status": "unverified", **ROOT, "token": "S1", "claimed": "alice",
             "reason": "binding unknown: the alert has no k8s.ns.name or k8s.pod.name to "
                       "check the token against"},
        ),
        (
            {"container__name": "sidecar"},
            {"status": "replayed", **ROOT, "token": "S1", "claimed": "alice",
             "reason": "bound elsewhere: token minted for container 'app' is used in "
                       "container 'sidecar'", "root_start_ns": ROOT_TS},
        ),
        # containerd names a container by its short id: no mismatch, and still verified
        (
            {"container__name": "0123456789ab", "whoexec__reason": "a note"},
            {"status": "verified", **ROOT, "token": "S1", "identity": "alice",
             "reason": "a note", "root_start_ns": ROOT_TS},
        ),
        (
            {},
            {"status": "verified", **ROOT, "token": "S1", "identity": "alice",
             "root_start_ns": ROOT_TS},
        ),
        # fields of the wrong type are absent, never trusted
        (
            {"whoexec__root__pid": True, "whoexec__root__ts": "1796314360496562221",
             "whoexec__reason": ""},
            {"status": "verified", "via": "plugin", "token": "S1", "identity": "alice"},
        ),
    ],
    ids=["none", "no-token", "no-token-unverified", "replayed", "other-session",
         "no-pod", "other-container", "short-container-id", "verified", "wrong-types"],
)  # fmt: skip
def test_each_plugin_verdict_is_taken_exactly_as_far_as_it_checks_out(plugin, expected):
    from webhook.attribution.lineage import Attribution

    named = {"alice": alice(), "S1": s1_token()}
    values = {k: named.get(v, v) if isinstance(v, str) else v for k, v in expected.items()}
    assert attribute(enriched(**plugin)) == Attribution(**values)


@pytest.mark.parametrize("token", [7, ["v1.x"], ""])
def test_a_plugin_token_that_is_not_a_string_or_empty_is_no_token(token: Any):
    attribution = attribute(enriched(whoexec__token=token))
    assert attribution is not None and attribution.status == "unverified"
    assert attribution.reason == (
        "the Falco plugin named a user but passed no whoexec.token to check"
    )


def test_a_token_is_from_the_future_only_past_the_allowed_skew_in_whole_seconds():
    from dataclasses import replace

    from webhook.identity import DEFAULT_CLOCK_SKEW_SECONDS as SKEW

    alert = enriched()
    facts = process_facts(alert, "WHOEXEC_IDENTITY", token_pattern("WHOEXEC_IDENTITY"))
    issued = payload(s1_token())["iat"]

    def at(seconds: float):  # type: ignore[no-untyped-def]
        ns = int(seconds * 1_000_000_000)
        return plugin_attribution(alert, replace(facts, time_ns=ns), verifier())

    assert at(issued - SKEW).status == "verified", "the skew allowed, to the second"
    early = at(issued - SKEW - 0.5)  # the event's second is one before the skew allows
    assert early.status == "unverified"
    assert early.reason == (
        f"TokenFromFuture: token iat {issued} is {SKEW + 1}s after the event (allowed skew {SKEW}s)"
    )
