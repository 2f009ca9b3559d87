"""The session explorer's pages through Flask's test client, over a store the real
consumer and audit ingest filled (``uistore``). The browser tests are in test_ui_browser."""

from __future__ import annotations

import csv
import io
import re

import pytest
from click.testing import CliRunner

from webhook.cli import main
from webhook.errors import StoreUnavailable
from webhook.sessions.report import SESSION_COLUMNS
from webhook.sessions.store import open_store
from webhook.sessions.ui.app import CONTENT_SECURITY_POLICY, COOKIE, create_ui_app
from webhook.settings import Settings, ui_exposure_problem
from webhook.times import MAX_NS, MIN_NS

from .uistore import ALICE, XSS_COMMAND, XSS_POD, FilledStore, fill_store

TOKEN = "s3cret-token-for-the-ui-0123456789"


def signed_in_cookie(client, token: str = TOKEN) -> str:
    """The session cookie a sign-in hands the browser (a random id, kept server-side)."""
    response = client.post("/login", data={"token": token, "next": "/users"})
    assert response.status_code == 303
    return response.headers["Set-Cookie"].split(";", 1)[0].split("=", 1)[1]


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> FilledStore:
    where = tmp_path_factory.mktemp("ui")
    return fill_store(where, f"sqlite:///{where}/whoexec.db")


@pytest.fixture
def client(filled):
    store = open_store(filled.url)
    yield create_ui_app(store).test_client()
    store.close()


@pytest.fixture
def guarded(filled):
    store = open_store(filled.url)
    yield create_ui_app(store, auth_token=TOKEN).test_client()
    store.close()


def page_text(response) -> str:
    return response.get_data(as_text=True)


@pytest.mark.parametrize(
    "path",
    [
        "/users",
        "/sessions",
        "/sessions?since=30d&attribution=verified",
        "/findings",
        "/sessions/{alice}",
        "/sessions/{hostile}",
        "/audit/{bob}",
        "/login",
    ],
)
def test_every_page_answers_with_a_strict_policy_and_no_caching(client, filled, path):
    response = client.get(
        path.format(alice=filled.alice, hostile=filled.hostile, bob=filled.bob_audit_id)
    )
    assert response.status_code == 200
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert "script-src" not in CONTENT_SECURITY_POLICY  # default-src 'none' covers it
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "<script" not in page_text(response)  # the pages themselves carry no script


def test_the_root_is_the_session_list(client):
    assert client.get("/").headers["Location"] == "/sessions"


def test_hostile_names_and_commands_are_escaped_on_every_page(client, filled):
    for path in (
        "/sessions",
        "/users",
        "/findings",
        f"/sessions/{filled.hostile}",
        f"/audit/{filled.bob_audit_id}",
    ):
        html = page_text(client.get(path))
        assert "<img src=x" not in html and '"><script>' not in html, path
        assert "<script>alert(2)" not in html, path
    html = page_text(client.get(f"/sessions/{filled.hostile}"))
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "web-&#34;&gt;&lt;script&gt;" in html


def test_sessions_filter_by_user_and_link_to_each_session(client, filled):
    html = page_text(client.get("/sessions", query_string={"user": ALICE}))
    assert ALICE in html and "eve&lt;script&gt;" not in html
    assert f'href="/sessions/{filled.alice}"' in html


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"attribution": "verified"}, {"alice", "hostile"}),
        ({"attribution": "unattributed"}, set()),
        ({"attribution": "replayed"}, set()),
        ({"has_alerts": "yes"}, {"alice", "hostile"}),
        ({"has_alerts": "no"}, set()),
        ({"pod": XSS_POD}, {"hostile"}),
        ({"namespace": "nope"}, set()),
        ({"since": "1m"}, set()),
    ],
)
def test_sessions_filters_as_json(client, filled, query, expected):
    names = {filled.alice: "alice", filled.hostile: "hostile"}
    rows = client.get("/sessions", query_string={**query, "format": "json"}).get_json()
    assert {names[row["session_id"]] for row in rows} == expected


def test_sessions_pages_are_newest_first_and_never_overlap(client, filled):
    def listed(html: str) -> list[str]:
        return re.findall(r'<td><a href="/sessions/([^"]+)">', html)

    html = page_text(client.get("/sessions", query_string={"limit": "1"}))
    assert listed(html) == [filled.hostile]  # the newer one
    older = re.search(r'id="older" href="([^"]+)"', html)
    assert older is not None
    second = page_text(client.get(older.group(1).replace("&amp;", "&")))
    assert listed(second) == [filled.alice]
    assert 'id="older"' not in second


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"since": "yesterday"}, "since: &#39;yesterday&#39; is neither a duration"),
        ({"attribution": "maybe"}, "attribution: &#39;maybe&#39; is not one of"),
        ({"has_alerts": "perhaps"}, "has_alerts: must be yes or no"),
        ({"limit": "ten"}, "limit: &#39;ten&#39; is not a number"),
        ({"after": "garbage"}, "after: expected"),
        ({"format": "xml"}, "format: &#39;xml&#39; is not html, json or csv"),
    ],
)
def test_bad_arguments_get_400_naming_the_argument(client, query, message):
    response = client.get("/sessions", query_string=query)
    assert response.status_code == 400
    assert message in page_text(response)


def test_bad_arguments_to_an_export_answer_json(client):
    response = client.get("/findings", query_string={"since": "soon", "format": "json"})
    assert response.status_code == 400
    assert response.get_json()["error"].startswith("since: 'soon'")


@pytest.mark.parametrize("page", ["/sessions", "/users", "/findings"])
def test_each_list_page_is_also_json_and_csv_with_the_clis_rows(client, page):
    args = {"since": "30d"}
    rows = client.get(page, query_string={**args, "format": "json"}).get_json()
    assert rows, page
    exported = client.get(page, query_string={**args, "format": "csv"})
    assert exported.mimetype == "text/csv"
    assert "attachment" in exported.headers["Content-Disposition"]
    table = list(csv.reader(io.StringIO(page_text(exported))))
    assert len(table) == len(rows) + 1
    if page == "/sessions":
        assert table[0] == [title for title, _ in SESSION_COLUMNS]
        commands = {row[SESSION_COLUMNS.index(("command", "command"))] for row in table[1:]}
        assert XSS_COMMAND in commands  # a CSV cell is data: quoted, never cut


def test_the_csv_export_matches_the_cli_byte_for_byte(client, filled):
    for page in ("sessions", "users", "findings"):
        ui = page_text(client.get(f"/{page}", query_string={"since": "30d", "format": "csv"}))
        cli = CliRunner().invoke(
            main, [page, "--db", filled.url, "--since", "30d", "--format", "csv"]
        )
        assert cli.exit_code == 0, cli.output
        assert ui == cli.stdout, page


def test_one_session_shows_audit_event_commands_alerts_and_findings(client, filled):
    html = page_text(client.get(f"/sessions/{filled.alice}"))
    assert "create exec by" in html and "10.0.8.14" in html
    assert html.index("/bin/bash") < html.index("cat /etc/shadow") < html.index("miner --pool")
    assert html.count('class="mark p-') == 3  # the alerts on the picture
    assert 'href="#alert-2"' in html and 'id="alert-2"' in html
    found = client.get(f"/sessions/{filled.alice}", query_string={"format": "json"}).get_json()
    assert [a["rule"] for a in found["alerts"]][-1] == "Drop and execute new binary in container"
    assert found["alerts"][-1]["pid"] == 4310


def test_an_unknown_session_or_audit_event_is_404_not_an_error(client):
    assert client.get("/sessions/nope").status_code == 404
    assert "no session &#39;nope&#39;" in page_text(client.get("/sessions/nope"))
    assert client.get("/audit/nope", query_string={"format": "json"}).status_code == 404


def test_findings_link_to_their_audit_event(client, filled):
    html = page_text(client.get("/findings"))
    assert f'href="/audit/{filled.bob_audit_id}"' in html
    audit = page_text(client.get(f"/audit/{filled.bob_audit_id}"))
    assert "bob@corp.example" in audit and "whoexec did not attribute this exec" in audit


EXPECTED_CURSOR = "after: expected <time_ns>:<session id> from the link"
OUT_OF_RANGE = "after: the time is out of range (1677 to 2262)"


@pytest.mark.parametrize(
    ("after", "error"),
    [
        (f"{MIN_NS}:k", None),
        (f"{MAX_NS}:k", None),
        ("-5:k", None),
        ("5:a:b", None),  # the id is everything after the first colon
        (f"{MIN_NS - 1}:k", OUT_OF_RANGE),
        (f"{MAX_NS + 1}:k", OUT_OF_RANGE),
        ("9" * 20 + ":k", EXPECTED_CURSOR),
        ("5:", EXPECTED_CURSOR),
        ("abc:k", EXPECTED_CURSOR),
        ("-:k", EXPECTED_CURSOR),
        ("\u0665:k", EXPECTED_CURSOR),  # a digit, but not an ASCII one
    ],
)
def test_a_page_cursor_is_read_at_every_edge_of_its_range(client, after, error):
    response = client.get("/sessions", query_string={"after": after, "format": "json"})
    if error is None:
        assert response.status_code == 200, response.get_json()
    else:
        assert (response.status_code, response.get_json()) == (400, {"error": error})


def test_an_error_page_says_its_status_and_a_csv_export_gets_its_error_as_json(client):
    html = page_text(client.get("/sessions", query_string={"after": f"{MAX_NS + 1}:k"}))
    assert "<title>Error 400" in html and "<h1>Error 400</h1>" in html
    exported = client.get("/sessions", query_string={"after": "5:", "format": "csv"})
    assert (exported.status_code, exported.get_json()) == (400, {"error": EXPECTED_CURSOR})


def test_links_change_only_the_argument_they_name(client, filled):
    html = page_text(client.get("/sessions", query_string={"since": "30d", "limit": "1"}))
    older = re.search(r'id="older" href="([^"]+)"', html)
    assert older is not None
    assert older.group(1).startswith("/sessions?since=30d&amp;limit=1&amp;after=")
    cursor = older.group(1).rsplit("after=", 1)[1]
    second = page_text(client.get(older.group(1).replace("&amp;", "&")))
    assert '<a href="/sessions?since=30d&amp;limit=1">« Newest</a>' in second
    assert f'href="/sessions?since=30d&amp;limit=1&amp;after={cursor}&amp;format=json"' in second
    paged = page_text(client.get(f"/sessions/{filled.alice}", query_string={"alerts_after": "5:k"}))
    assert f'<a href="/sessions/{filled.alice}">First alerts</a>' in paged, "no argument left"


def test_alert_counts_are_shown_by_priority_with_its_colour(client):
    html = page_text(client.get("/sessions", query_string={"since": "30d"}))
    assert '<span class="badge p-critical">Critical 1</span>' in html
    assert '<span class="badge p-notice">Notice 1</span>' in html
    assert "p-other" not in html, "every priority of the store is a known one"


class DownStore:
    """A store whose database is gone: every read raises what SqlStore raises then."""

    def __getattr__(self, name):
        def read(*_args, **_kwargs):
            raise StoreUnavailable("cannot reach PostgreSQL store postgresql://db/whoexec: gone")

        return read


def test_a_store_that_is_down_is_503_with_the_reason():
    response = create_ui_app(DownStore()).test_client().get("/sessions")  # type: ignore[arg-type]
    assert response.status_code == 503
    assert "cannot reach PostgreSQL store" in page_text(response)


# --- the token ----------------------------------------------------------------------------


def test_with_a_token_every_page_asks_to_sign_in(guarded, filled):
    for path in ("/sessions", f"/sessions/{filled.alice}", "/users?since=7d"):
        response = guarded.get(path)
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/login?next=")
    assert guarded.get("/sessions?format=json").status_code == 401
    assert guarded.get("/healthz").status_code == 200
    css = guarded.get("/static/ui.css")
    assert css.status_code == 200
    css.close()


def test_a_wrong_token_is_refused_and_the_right_one_signs_in_with_a_session_cookie(guarded):
    wrong = guarded.post("/login", data={"token": "guess", "next": "/users"})
    assert wrong.status_code == 401 and "not the one" in page_text(wrong)
    assert COOKIE not in (wrong.headers.get("Set-Cookie") or "")
    right = guarded.post("/login", data={"token": TOKEN, "next": "/users"})
    assert right.status_code == 303 and right.headers["Location"] == "/users"
    cookie = right.headers["Set-Cookie"]
    assert TOKEN not in cookie
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert guarded.get("/users").status_code == 200  # the test client keeps the cookie
    guarded.post("/logout")
    assert guarded.get("/users").status_code == 303


def test_a_bearer_token_reads_the_exports(guarded):
    ok = guarded.get("/sessions?format=json", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200
    bad = guarded.get("/sessions?format=json", headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401


OTHER_TOKEN = "another-ui-token-of-another-install"


@pytest.mark.parametrize(
    "kind", ["forged", "empty", "the-token", "other-install", "cut", "longer", "upper-case"]
)
def test_a_session_cookie_with_any_other_value_is_refused(guarded, filled, kind):
    store = open_store(filled.url)
    try:
        other = create_ui_app(store, auth_token=OTHER_TOKEN).test_client()
        genuine = signed_in_cookie(create_ui_app(store, auth_token=TOKEN).test_client())
        value = {
            "forged": "forged",
            "empty": "",
            "the-token": TOKEN,  # the browser keeps a random id, never the token
            "other-install": signed_in_cookie(other, OTHER_TOKEN),
            "cut": genuine[:-1],
            "longer": genuine + "0",
            "upper-case": genuine.upper(),
        }[kind]
    finally:
        store.close()
    # a Cookie header written by hand is dropped by Werkzeug's test client: set_cookie
    guarded.set_cookie(COOKIE, value)
    response = guarded.get("/users")
    assert response.status_code == 303
    assert response.headers["Location"].startswith("/login?next=")
    assert guarded.get("/sessions?format=json").status_code == 401
    assert guarded.get("/sessions?format=csv").status_code == 401


def test_the_session_cookie_the_login_sets_is_the_one_every_page_accepts(guarded):
    cookie = signed_in_cookie(guarded)
    guarded.delete_cookie(COOKIE)
    guarded.set_cookie(COOKIE, cookie)
    assert guarded.get("/users").status_code == 200
    assert guarded.get("/sessions?format=json").status_code == 200


@pytest.mark.parametrize(
    "header",
    [
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Bearer  {TOKEN}",
        TOKEN,
        f"Basic {TOKEN}",
        "Bearer <the session cookie>",
        "Bearer ",
    ],
    ids=[
        "longer",
        "cut",
        "two-spaces",
        "no-scheme",
        "basic",
        "cookie-value",
        "empty",
    ],
)
def test_an_authorization_header_is_accepted_only_as_bearer_and_the_exact_token(guarded, header):
    if header == "Bearer <the session cookie>":
        header = f"Bearer {signed_in_cookie(guarded)}"
        guarded.delete_cookie(COOKIE)
    assert (
        guarded.get("/sessions?format=json", headers={"Authorization": header}).status_code == 401
    )
    assert guarded.get("/users", headers={"Authorization": header}).status_code == 303


def test_the_bearer_token_reads_the_pages_too_without_a_cookie(guarded):
    response = guarded.get("/users", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert "Set-Cookie" not in response.headers


def test_logging_out_tells_the_browser_to_drop_the_cookie(guarded):
    signed_in_cookie(guarded)
    response = guarded.post("/logout")
    assert (response.status_code, response.headers["Location"]) == (303, "/login")
    dropped = response.headers["Set-Cookie"]
    assert dropped.startswith(f"{COOKIE}=;") and "Expires=Thu, 01 Jan 1970" in dropped
    assert guarded.get("/users").status_code == 303


def test_without_a_token_configured_no_sign_in_is_ever_accepted(client):
    # an open UI (loopback only) has nothing to sign in to: no cookie is ever handed out
    for given in ("", "anything"):
        response = client.post("/login", data={"token": given})
        assert response.status_code == 401
        assert "Set-Cookie" not in response.headers


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil"])
def test_sign_in_never_redirects_to_another_site(guarded, target):
    response = guarded.post("/login", data={"token": TOKEN, "next": target})
    assert response.headers["Location"] == "/"


# --- settings and the command ---------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "token", "refused"),
    [
        ("127.0.0.1:8080", "", False),
        ("127.0.0.2:8080", "", False),  # all of 127/8 is loopback
        ("localhost:8080", "", False),
        ("[::1]:8080", "", False),
        ("0.0.0.0:8080", "", True),
        ("10.0.0.5:8080", "", True),
        ("[::]:8080", "", True),
        ("0.0.0.0:8080", TOKEN, False),
    ],
)
def test_off_loopback_the_ui_needs_a_token(bind, token, refused):
    assert (ui_exposure_problem(bind, token) is not None) == refused


def test_the_token_is_never_in_the_settings_repr_and_must_be_long():
    settings = Settings.from_env({"WHOEXEC_UI_TOKEN": TOKEN})
    assert TOKEN not in repr(settings)
    with pytest.raises(Exception, match="at least 16 characters"):
        Settings.from_env({"WHOEXEC_UI_TOKEN": "short"})


def test_the_command_refuses_to_listen_everywhere_without_a_token(filled):
    result = CliRunner().invoke(main, ["ui", "--db", filled.url, "--bind", "0.0.0.0:8080"])
    assert result.exit_code == 2
    assert "reachable from other machines: set WHOEXEC_UI_TOKEN" in result.output


def test_by_default_the_ui_listens_on_loopback_only_and_needs_no_token(filled, monkeypatch):
    served = []
    monkeypatch.setattr(
        "webhook.sessions.ui.serve.serve_ui", lambda settings, workers: served.append(settings)
    )
    result = CliRunner().invoke(
        main, ["ui", "--db", filled.url], env={"WHOEXEC_UI_BIND": None, "WHOEXEC_UI_TOKEN": None}
    )
    assert result.exit_code == 0, result.output
    (settings,) = served
    assert settings.ui_token == ""
    assert settings.ui_bind.rsplit(":", 1)[0] in ("127.0.0.1", "localhost", "[::1]")


def test_the_command_says_when_there_is_no_store(tmp_path):
    result = CliRunner().invoke(main, ["ui", "--db", f"sqlite:///{tmp_path}/none.db"])
    assert result.exit_code == 1
    assert "no session store at" in result.output
    assert not (tmp_path / "none.db").exists()


class OneSessionStore:
    """A store that holds one session, as ``SqlStore.session()`` returns it."""

    def __init__(self, session: dict) -> None:
        self.one = session

    def session(self, session_id: str, **_page) -> dict | None:
        return self.one if session_id == self.one["session_id"] else None


def test_the_audit_event_says_who_impersonated_whom_and_from_where():
    session = {
        "session_id": "s-1",
        "user_name": "bob@corp.example",
        "user_uid": None,
        "user_groups": [],
        "namespace": "shop",
        "pod": "web-0",
        "pod_uid": None,
        "container": "app",
        "command": ["sh"],
        "started_ns": 10**18,
        "root_pid": None,
        "attribution": "pending",
        "learnt_from": ["audit"],
        "processes": [],
        "alerts": [],
        "findings": [],
        "audit_events": [
            {
                "audit_id": "a-1",
                "stage": "ResponseStarted",
                "time_ns": 10**18,
                "verb": "create",
                "subresource": "exec",
                "user_name": "alice@corp.example",
                "impersonated_user": "bob@corp.example",
                "command": ["sh"],
                "request_uri": "/x",
                "response_code": 101,
                "outcome": None,
                "source_ips": ["192.0.2.7", "10.0.0.1"],
                "user_agent": "kubectl/v1.37.2",
            },
        ],
    }
    client = create_ui_app(OneSessionStore(session)).test_client()  # type: ignore[arg-type]
    html = page_text(client.get("/sessions/s-1"))
    assert 'by <span class="user">alice@corp.example</span>' in html
    assert "impersonating bob@corp.example" in html
    assert "from 192.0.2.7, 10.0.0.1" in html
    assert "create exec by alice@corp.example as bob@corp.example: sh" in html  # the picture


def test_the_pages_read_postgresql_as_they_read_sqlite(tmp_path, postgres_url):
    filled = fill_store(tmp_path, postgres_url)
    store = open_store(postgres_url)
    try:
        client = create_ui_app(store).test_client()
        sessions = client.get("/sessions", query_string={"format": "json"}).get_json()
        assert {row["session_id"] for row in sessions} == {filled.alice, filled.hostile}
        html = page_text(client.get(f"/sessions/{filled.alice}"))
        assert html.count('class="mark p-') == 3 and "create exec by" in html
        older = client.get("/sessions", query_string={"limit": "1"})
        assert 'id="older"' in page_text(older)
        assert client.get("/users").status_code == 200
        assert f"/audit/{filled.bob_audit_id}" in page_text(client.get("/findings"))
        assert "bob@corp.example" in page_text(client.get(f"/audit/{filled.bob_audit_id}"))
    finally:
        store.close()
