"""Hostile clients of the real webhook (``whoexec serve``) and the real session explorer
(``whoexec ui``, two workers, with a token), on loopback: bad input gets a 4xx and never a
5xx, an admission costs what a caller's first 1,000 groups cost, sign-in sends a browser
only to a page of this app, a session cookie expires and signing out revokes every copy of
it, and a session made huge on purpose still opens.

Issue 21's attacks #6 (a value nested ~990 deep answered 500), #7 (``next=/<TAB>/evil.com``
redirected to ``//evil.com``), #8 on the UI (times and cursors out of range answered 500),
#9 (a 1,000-deep chain answered 500; 100,000 alerts took 9.4 s and 41 MB), and the
webhook's and UI's share of "also seen" (500,000 groups, a cookie that never expired)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import sqlite3
import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

from webhook.sessions.store import AlertFact, Batch, ProcessFact, SessionFact, open_store
from webhook.sessions.ui.app import ALERT_PAGE

from .conftest import load_json
from .hostile_servers import Served, ServedTLS, start_ui, start_webhook, tls_1_1_client

pytestmark = pytest.mark.slow
UI_TOKEN = "ui-token-for-the-hostile-tests-0123456789"
REVIEW = load_json("admission/exec_interactive_shell.json")


# --- the webhook --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hostile-certs") / "certs"
    done = subprocess.run(
        [sys.executable, "-m", "webhook.cli", "certs", "--out", str(out)],
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return out


@pytest.fixture(scope="module")
def webhook(certs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedTLS]:
    served = start_webhook(tmp_path_factory.mktemp("hostile-serve"), certs)
    yield served
    served.server.stop()


def review(**request: Any) -> dict[str, Any]:
    body = json.loads(json.dumps(REVIEW))
    body["request"].update(request)
    return body


def nested(body: dict[str, Any], depth: int) -> bytes:
    """The JSON of ``body`` with the value ``"@deep"`` nested ``depth`` arrays deep."""
    return json.dumps(body).replace('"@deep"', "[" * depth + "]" * depth).encode()


def mutate(webhook: Served, body: bytes) -> tuple[int, dict[str, Any]]:
    status, _, data = webhook.request("POST", "/mutate", body, {"Content-Type": "application/json"})
    return status, json.loads(data)


def injected_token(answer: dict[str, Any]) -> dict[str, Any]:
    patch = json.loads(base64.b64decode(answer["response"]["patch"]))
    token = patch[0]["value"][1].split("=", 1)[1]
    payload = token.split(".")[2]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.mark.parametrize(
    "where",
    [
        {"uid": "@deep"},
        {"namespace": "@deep"},
        {"userInfo": {"username": "alice", "groups": ["devs", "@deep"]}},
        {"object": {**REVIEW["request"]["object"], "command": ["sh", "@deep"]}},
        {"object": {**REVIEW["request"]["object"], "kind": "@deep"}},
    ],
    ids=["uid", "namespace", "a group", "a command word", "the object's kind"],
)
def test_a_value_nested_990_deep_in_a_checked_field_is_a_400(webhook, where):
    status, answer = mutate(webhook, nested(review(**where), 990))
    assert status == 400
    assert "nested more than 254 levels" in answer["error"] or "must be" in answer["error"]
    status, answer = mutate(webhook, json.dumps(REVIEW).encode())
    assert (status, answer["response"]["allowed"]) == (200, True), "and it goes on serving"


HOSTILE_VALUES: list[Any] = [
    2**70,
    -(2**63) - 1,
    1e308,
    "9999-12-31T23:59:59Z",
    "x" * 100_000,
    "\u0000\u202e",
    None,
    True,
    {},
    [],
    [[["deep"]]],
]
FIELDS = ["uid", "operation", "name", "namespace", "subResource", "dryRun", "object", "userInfo"]


def test_every_checked_field_given_every_wrong_value_is_answered_never_500(webhook):
    answered = set()
    for field in FIELDS:
        for value in HOSTILE_VALUES:
            status, answer = mutate(webhook, json.dumps(review(**{field: value})).encode())
            assert status in (200, 400), (field, repr(value)[:40], status, answer)
            answered.add(status)
    for value in HOSTILE_VALUES:  # and inside the caller and the exec options
        user = {"username": "alice", "uid": value, "groups": value}
        status, _ = mutate(webhook, json.dumps(review(userInfo=user)).encode())
        assert status in (200, 400)
        options = {**REVIEW["request"]["object"], "container": value, "command": value}
        status, _ = mutate(webhook, json.dumps(review(object=options)).encode())
        assert status in (200, 400)
    assert answered == {200, 400}


def test_500000_groups_are_read_up_to_1000_and_the_token_says_it_was_cut(webhook, certs, tmp_path):
    many = {"username": "alice", "uid": "u-1", "groups": ["g"] * 500_000}
    body = json.dumps(review(userInfo=many)).encode()
    assert len(body) < 3 * 1024 * 1024, "under the body limit: the groups are the cost"
    status, answer = mutate(webhook, body)
    assert status == 200 and answer["response"]["auditAnnotations"]["outcome"] == "injected"
    payload = injected_token(answer)
    assert payload["trunc"] is True and 0 < len(payload["groups"]) < 1000
    # with groups excluded, one of those never read could be excluded: left alone
    excluding = start_webhook(tmp_path, certs, "--exclude-group", "admins")
    try:
        status, answer = mutate(excluding, body)
        assert status == 200 and "patch" not in answer["response"]
        outcome = answer["response"]["auditAnnotations"]["outcome"]
        assert outcome == "skipped-too-many-groups"
    finally:
        excluding.server.stop()


# --- the session explorer -----------------------------------------------------------------

S = 1_000_000_000
T0 = 1795341600 * S
CHAIN, MANY = "chain-session", "many-alerts-session"


def fill(url: str) -> None:
    """A chain of 1,000 processes, each the parent of the next, and 1,200 alerts."""
    batch = Batch(
        sessions=[
            SessionFact(CHAIN, T0, "token", user="mallory", root_pid=1000),
            SessionFact(MANY, T0, "token", user="mallory", root_pid=1000),
        ]
    )
    batch.processes += [
        ProcessFact(CHAIN, "n", 1000 + n, T0 + n, 999 + n, f"sh -c {n}", T0 + n)
        for n in range(1000)
    ]
    batch.alerts += [
        AlertFact(
            f"k{sid}{n:05d}",
            T0 + S + n,
            f"rule {n}",
            "Warning",
            "syscall",
            "x",
            json.dumps({"proc.pid": 1000 + n % 1000}),
            "verified",
            "n",
            session_id=sid,
        )
        for sid, count in ((CHAIN, 1000), (MANY, 1200))
        for n in range(count)
    ]
    store = open_store(url)
    store.ingest(batch)
    store.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    folder = tmp_path_factory.mktemp("hostile-ui")
    url = f"sqlite:///{folder}/whoexec.db"
    fill(url)
    served = start_ui(url, folder, UI_TOKEN, "--workers", "2")
    yield served
    served.server.stop()


def test_the_ui_given_a_certificate_answers_only_tls_1_2_or_newer(certs, tmp_path):
    url = f"sqlite:///{tmp_path}/whoexec.db"
    open_store(url).close()
    served = start_ui(url, tmp_path, UI_TOKEN, "--workers", "1", certs=certs)
    try:
        status, headers, _ = served.request("GET", "/sessions")
        assert (status, headers["Location"]) == (303, "/login?next=%2Fsessions")
        with (
            socket.create_connection(("127.0.0.1", served.port), 15) as raw,
            served.context.wrap_socket(raw, server_hostname="whoexec.whoexec.svc") as tls,
        ):
            assert tls.version() in ("TLSv1.2", "TLSv1.3")
            served_cert = tls.getpeercert(binary_form=True)
        expected = ssl.PEM_cert_to_DER_cert((certs / "tls.crt").read_text())
        assert served_cert == expected
        old = tls_1_1_client(certs / "ca.crt")
        with (
            socket.create_connection(("127.0.0.1", served.port), 15) as raw,
            pytest.raises(ssl.SSLError),
        ):
            old.wrap_socket(raw, server_hostname="whoexec.whoexec.svc")
        with socket.create_connection(("127.0.0.1", served.port), 15) as raw:
            raw.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"200 OK" not in raw.recv(4096), "no plain HTTP beside TLS"
    finally:
        served.server.stop()


def login(ui: Served, target: str) -> tuple[int, dict[str, str]]:
    status, headers, _ = ui.request(
        "POST",
        "/login",
        urlencode({"token": UI_TOKEN, "next": target}).encode(),
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    return status, headers


@pytest.mark.parametrize(
    "target",
    ["/\t/evil.example", "/\r\n/evil.example", "/\\evil.example", "//evil.example", "/x/../"],
)
def test_sign_in_never_sends_a_browser_to_another_site(ui, target):
    status, headers = login(ui, target)
    assert (status, headers["Location"]) == (303, "/")


def test_a_session_cookie_expires_and_signing_out_revokes_every_copy(ui):
    status, headers = login(ui, "/users")
    assert (status, headers["Location"]) == (303, "/users")
    cookie = headers["Set-Cookie"].split(";")[0]
    assert UI_TOKEN not in headers["Set-Cookie"]
    assert "Max-Age=28800" in headers["Set-Cookie"], "8 hours, then sign in again"
    jar = {"Cookie": cookie}
    # several requests: the two workers share who is signed in
    assert {ui.request("GET", "/users", headers=jar)[0] for _ in range(6)} == {200}
    # in the file they share, as the README says: the id's digest, never the id
    digest = hashlib.sha256(cookie.split("=", 1)[1].encode()).hexdigest()
    shared = ui.server.log.parent / "ui-state" / "ui-sessions.db"
    assert digest in signed_in(shared)
    assert cookie.split("=", 1)[1].encode() not in shared.read_bytes()
    assert ui.request("POST", "/logout", headers=jar)[0] == 303
    assert {ui.request("GET", "/users", headers=jar)[0] for _ in range(6)} == {303}
    assert digest not in signed_in(shared), "revoked in the shared file: in every worker"


def signed_in(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return [digest for (digest,) in db.execute("SELECT digest FROM ui_sessions")]


BEARER = {"Authorization": f"Bearer {UI_TOKEN}"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/sessions?since=99999999999999999w", 200),
        ("/sessions?since=0001-01-01T00:00:00Z", 200),
        ("/users?since=0001-01-01T00:00:00Z&until=99999999999999999w", 200),
        ("/findings?since=99999999999999999w&format=json", 200),
        ("/sessions?after=99999999999999999999999999:x", 400),
        ("/sessions?after=" + "1" * 3000 + ":x", 400),
        ("/sessions?limit=" + "9" * 3000, 200),  # capped at 1,000
        (f"/sessions/{MANY}?alerts_after=9223372036854775808:k", 400),
        ("/sessions/%00", 404),
        ("/audit/%00", 404),
        ("/sessions?user=%00&format=json", 200),
    ],
)
def test_times_ids_and_cursors_out_of_range_are_answered_never_500(ui, path, status):
    assert ui.request("GET", path, headers=BEARER)[0] == status


def test_a_1000_deep_chain_and_a_session_of_1200_alerts_open_a_page_at_a_time(ui):
    status, _, page = ui.request("GET", f"/sessions/{CHAIN}", headers=BEARER)
    assert status == 200
    assert page.count(b'<g class="row row-process">') == 999  # and the root's row
    seen: list[str] = []
    path = f"/sessions/{MANY}?format=json"
    while path:
        status, _, data = ui.request("GET", path, headers=BEARER)
        assert status == 200
        answer = json.loads(data)
        assert len(answer["alerts"]) <= ALERT_PAGE and answer["alert_count"] == 1200
        seen += [a["rule"] for a in answer["alerts"]]
        later = answer["later_alerts"]
        path = f"/sessions/{MANY}?format=json&alerts_after={later}" if later else ""
    assert seen == [f"rule {n}" for n in range(1200)]
