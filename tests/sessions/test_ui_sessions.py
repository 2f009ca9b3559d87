"""Signing in to the UI: a session that expires, that signing out ends for every copy of
its cookie and in every worker, that a new token ends; and sign-in sends a browser only
to a page of this app."""

from __future__ import annotations

import pytest

from webhook.sessions.ui.app import COOKIE, create_ui_app
from webhook.sessions.ui.sessions import UiSessions
from webhook.settings import is_loopback

TOKEN = "s3cret-token-for-the-ui-0123456789"


class EmptyStore:
    """Enough of a store for the pages these tests open."""

    def users(self, *_args):
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def signed_in_cookie(client) -> str:
    response = client.post("/login", data={"token": TOKEN, "next": "/users"})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert TOKEN not in cookie
    return cookie.split(";")[0].split("=", 1)[1]


def test_a_signed_in_browser_keeps_a_random_id_that_expires(tmp_path):
    clock = Clock()
    sessions = UiSessions(tmp_path / "ui-sessions.db", TOKEN, 3600, clock)
    client = create_ui_app(EmptyStore(), TOKEN, sessions).test_client()  # type: ignore[arg-type]
    response = client.post("/login", data={"token": TOKEN, "next": "/users"})
    assert "Max-Age=3600" in response.headers["Set-Cookie"]
    assert client.get("/users").status_code == 200
    clock.now += 3599
    assert client.get("/users").status_code == 200
    clock.now += 2
    assert client.get("/users").status_code == 303, "expired: sign in again"
    other = create_ui_app(EmptyStore(), TOKEN, sessions).test_client()  # type: ignore[arg-type]
    assert signed_in_cookie(other) != signed_in_cookie(other), "a new id each time"


def test_signing_out_ends_every_copy_of_the_cookie_in_every_worker(tmp_path):
    path = tmp_path / "ui-sessions.db"
    worker_a = create_ui_app(EmptyStore(), TOKEN, UiSessions(path, TOKEN, 3600)).test_client()  # type: ignore[arg-type]
    worker_b = create_ui_app(EmptyStore(), TOKEN, UiSessions(path, TOKEN, 3600)).test_client()  # type: ignore[arg-type]
    cookie = signed_in_cookie(worker_a)
    worker_b.set_cookie(COOKIE, cookie)  # a copy of the cookie, served by the other worker
    assert worker_b.get("/users").status_code == 200
    assert worker_a.post("/logout").status_code == 303
    assert worker_b.get("/users").status_code == 303, "revoked, not only deleted in one browser"


def test_a_new_token_ends_the_sessions_signed_in_with_the_old_one(tmp_path):
    path = tmp_path / "ui-sessions.db"
    before = create_ui_app(EmptyStore(), TOKEN, UiSessions(path, TOKEN, 3600)).test_client()  # type: ignore[arg-type]
    cookie = signed_in_cookie(before)
    new_token = "another-token-for-the-ui-9876543210"
    after = create_ui_app(EmptyStore(), new_token, UiSessions(path, new_token, 3600))  # type: ignore[arg-type]
    client = after.test_client()
    client.set_cookie(COOKIE, cookie)
    assert client.get("/users").status_code == 303


@pytest.mark.parametrize(
    "target",
    [
        "/\t/evil.example",  # a browser drops the tab: //evil.example
        "/\n/evil.example",
        "/\\evil.example",
        "//evil.example/",
        "/%09/evil.example",
        "https://evil.example/",
        "javascript:alert(1)",
        "/no-such-page",
        "/users\x00",
        "/sessions/a b",  # each of these is a page of this app but for one character
        "/sessions/a\\b",
        "/sessions/a\x7fb",
        "/sessions/a\u200eb",
        "//sessions",
    ],
)
def test_sign_in_sends_a_browser_only_to_a_page_of_this_app(target):
    client = create_ui_app(EmptyStore(), TOKEN).test_client()  # type: ignore[arg-type]
    response = client.post("/login", data={"token": TOKEN, "next": target})
    assert response.headers["Location"] == "/"


def test_sign_in_keeps_a_page_of_this_app_with_its_query():
    client = create_ui_app(EmptyStore(), TOKEN).test_client()  # type: ignore[arg-type]
    response = client.post("/login", data={"token": TOKEN, "next": "/users?since=30d"})
    assert response.headers["Location"] == "/users?since=30d"


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("::1%lo", True),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", True),
        ("localhost", True),
        ("127.0.0.1.example.com", False),
        ("127.evil.example", False),
        ("10.0.0.5", False),
        ("0.0.0.0", False),  # noqa: S104 - an address checked, not bound
        ("::", False),
        ("", False),
    ],
)
def test_loopback_is_an_address_parsed_not_a_prefix(host, loopback):
    assert is_loopback(host) == loopback


def test_a_session_ends_at_the_second_it_expires_and_its_id_carries_256_random_bits(tmp_path):
    import hashlib
    import hmac

    from webhook.sessions.ui.sessions import token_fingerprint

    clock = Clock()
    sessions = UiSessions(tmp_path / "ui-sessions.db", TOKEN, 3600, clock)
    session_id = sessions.create()
    assert len(session_id) == 43, "32 random bytes, base64url without padding"
    clock.now += 3600 - 0.001
    assert sessions.valid(session_id)
    clock.now += 0.001
    assert not sessions.valid(session_id), "not at the second it expires"
    expected = hmac.new(TOKEN.encode(), b"whoexec-ui-session", hashlib.sha256).hexdigest()
    assert token_fingerprint(TOKEN) == expected


def test_sessions_kept_in_process_are_shared_by_the_server_s_threads():
    import threading

    sessions = UiSessions(None, TOKEN, 3600)
    made: list[str] = []
    thread = threading.Thread(target=lambda: made.append(sessions.create()))
    thread.start()
    thread.join()
    assert sessions.valid(made[0]), "signed in on one request thread, seen on another"
