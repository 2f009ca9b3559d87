"""``whoexec ui``: the session explorer's Flask app (adapter over the read side of the store).

Every page is rendered on the server (Jinja, autoescaped) and works without script: the
people being audited choose their command lines, pod names and even user names, so the
pages send a Content-Security-Policy that allows no script at all, and no inline style.
Each list page is also JSON and CSV (``?format=json``/``csv``), the same rows as the CLI.
"""

from __future__ import annotations

import hmac
import time
from typing import Any, NoReturn
from urllib.parse import urlencode, urlsplit

import orjson
from flask import Flask, Response, abort, redirect, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers import Response as BaseResponse

from webhook.errors import StoreError, StoreUnavailable
from webhook.sessions.report import (
    FINDING_COLUMNS,
    PRIORITIES,
    SESSION_COLUMNS,
    USER_COLUMNS,
    Columns,
    cell,
    csv_text,
    with_utc,
)
from webhook.sessions.store.model import ATTRIBUTION_RANK, SessionQuery, Store
from webhook.sessions.ui.sessions import UiSessions
from webhook.sessions.ui.timeline import build_timeline, priority_class
from webhook.times import MAX_NS, MIN_NS, format_utc, parse_time_ns

#: no script, no inline style, nothing from elsewhere, never framed
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
COOKIE = "whoexec_ui"
PAGE_SIZE = 50
#: alerts shown on one page of a session
ALERT_PAGE = 500
#: processes shown in a session's tree and table (the first by start; the CLI has all)
PROCESS_ROWS = 1000
ATTRIBUTION_FILTERS = (*ATTRIBUTION_RANK, "unattributed")


#: how long a browser stays signed in (``WHOEXEC_UI_SESSION_SECONDS``)
SESSION_SECONDS = 8 * 3600


def create_ui_app(store: Store, auth_token: str = "", signed_in: UiSessions | None = None) -> Flask:
    """The app; with ``auth_token``, every page but sign-in asks for it. ``signed_in``
    holds the browsers that signed in (kept in this process when not given)."""
    app = Flask("whoexec-ui", root_path=__file__.rsplit("/", 1)[0])
    browsers = signed_in
    if auth_token and browsers is None:
        browsers = UiSessions(None, auth_token, SESSION_SECONDS)
    app.jinja_env.globals.update(
        utc=format_utc,
        priority_class=priority_class,
        cell=cell,
        PRIORITIES=PRIORITIES,
    )

    def _signed_in() -> bool:
        if not auth_token:
            return True
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and hmac.compare_digest(
            header.removeprefix("Bearer ").encode(), auth_token.encode()
        ):
            return True
        return browsers is not None and browsers.valid(request.cookies.get(COOKIE, ""))

    def _page_of_this_app(target: str) -> str:
        """``target`` when it is a page this app serves, else ``/``: never an open redirect.

        Browsers drop tabs and newlines from a URL and read ``\\`` as ``/``, so
        ``/<TAB>/evil.example`` would go to another site as ``//evil.example``."""
        if not target.startswith("/") or any(
            char.isspace() or not char.isprintable() or char == "\\" for char in target
        ):
            return "/"
        if target.startswith("//"):  # another host, in the scheme of this page
            return "/"
        try:  # as GET, bind's default method
            app.url_map.bind("localhost").match(urlsplit(target).path)
        except HTTPException:  # no such page (or a redirect to another)
            return "/"
        return target

    @app.before_request
    def require_token() -> BaseResponse | None:
        if request.endpoint in ("login", "healthz", "static") or _signed_in():
            return None
        if request.args.get("format") in ("json", "csv"):
            return _json({"error": "sign in: Authorization: Bearer <WHOEXEC_UI_TOKEN>"}, 401)
        return redirect("/login?" + urlencode({"next": request.full_path.rstrip("?")}), 303)

    @app.after_request
    def security_headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
        return response

    def _json(payload: object, status: int = 200) -> Response:
        return Response(orjson.dumps(payload), status=status, mimetype="application/json")

    def _fail(status: int, message: str) -> NoReturn:
        if request.args.get("format") in ("json", "csv"):
            abort(_json({"error": message}, status))
        abort(Response(render_template("error.html", status=status, message=message), status))

    def _time(name: str, default: str | None) -> int | None:
        text = request.args.get(name) or default
        if text is None:
            return None
        try:
            return parse_time_ns(text, time.time_ns())
        except ValueError as exc:
            _fail(400, f"{name}: {exc}")

    def _export(rows: list[dict[str, Any]], columns: Columns, name: str) -> Response | None:
        fmt = request.args.get("format", "html")
        if fmt == "json":
            return _json(rows)
        if fmt == "csv":
            return Response(
                csv_text(rows, columns),
                mimetype="text/csv",
                headers={"Content-Disposition": f'attachment; filename="whoexec-{name}.csv"'},
            )
        if fmt != "html":
            _fail(400, f"format: {fmt!r} is not html, json or csv")
        return None

    def _link(**changes: str | None) -> str:
        """This page's URL with some arguments changed (None removes one)."""
        args = {k: v for k, v in request.args.items() if v}
        for key, value in changes.items():
            if value is None:
                args.pop(key, None)
            else:
                args[key] = value
        return request.path + ("?" + urlencode(args) if args else "")

    app.jinja_env.globals["link"] = _link

    @app.errorhandler(StoreUnavailable)
    def store_down(exc: StoreUnavailable) -> Response:
        return Response(render_template("error.html", status=503, message=str(exc)), 503)

    @app.errorhandler(StoreError)
    def store_error(exc: StoreError) -> Response:
        return Response(render_template("error.html", status=500, message=str(exc)), 500)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc.response, Response):
            return exc.response
        message = exc.description or exc.name
        return Response(
            render_template("error.html", status=exc.code, message=message), exc.code or 500
        )

    @app.get("/healthz")
    def healthz() -> Response:
        return _json({"status": "ok"})

    @app.route("/login", methods=["GET", "POST"])
    def login() -> BaseResponse | str:
        target = _page_of_this_app(request.values.get("next", "/"))
        if request.method == "GET":
            return render_template("login.html", next=target, wrong=False)
        given = request.form.get("token", "")
        if (
            not auth_token
            or browsers is None
            or not hmac.compare_digest(given.encode(), auth_token.encode())
        ):
            return Response(render_template("login.html", next=target, wrong=True), 401)
        response = redirect(target, 303)
        response.set_cookie(
            COOKIE,
            browsers.create(),
            max_age=int(browsers.lifetime),
            httponly=True,
            samesite="Strict",
            secure=request.is_secure,
        )
        return response

    @app.post("/logout")
    def logout() -> BaseResponse:
        if browsers is not None and (cookie := request.cookies.get(COOKIE)):
            browsers.revoke(cookie)  # a copy of the cookie is no good either
        response = redirect("/login", 303)
        response.delete_cookie(COOKIE)
        return response

    @app.get("/")
    def index() -> BaseResponse:
        return redirect("/sessions", 302)

    @app.get("/users")
    def users() -> Response | str:
        since = request.args.get("since") or "7d"
        rows = store.users(_time("since", "7d"), _time("until", None))
        exported = _export(with_utc(rows, "last_ns"), USER_COLUMNS, "users")
        return exported or render_template("users.html", rows=rows, since=since)

    @app.get("/sessions")
    def sessions() -> Response | str:
        attribution = request.args.get("attribution") or None
        if attribution is not None and attribution not in ATTRIBUTION_FILTERS:
            _fail(
                400, f"attribution: {attribution!r} is not one of {', '.join(ATTRIBUTION_FILTERS)}"
            )
        has_alerts = {"yes": True, "no": False, "": None}.get(request.args.get("has_alerts", ""))
        if has_alerts is None and request.args.get("has_alerts"):
            _fail(400, "has_alerts: must be yes or no")
        try:
            limit = min(max(int(request.args.get("limit") or PAGE_SIZE), 1), 1000)
        except ValueError:
            _fail(400, f"limit: {request.args.get('limit', '')[:40]!r} is not a number")
        after = _cursor("after", "session id")
        query = SessionQuery(
            user=request.args.get("user") or None,
            namespace=request.args.get("namespace") or None,
            pod=request.args.get("pod") or None,
            since_ns=_time("since", "24h"),
            until_ns=_time("until", None),
            attribution=attribution,
            has_alerts=has_alerts,
            after=after,
            limit=limit + 1,  # one more tells whether there is an older page
        )
        rows = store.sessions(query)
        older = None
        if len(rows) > limit:
            rows = rows[:limit]
            older = f"{rows[-1]['started_ns']}:{rows[-1]['session_id']}"
        exported = _export(
            with_utc(rows, "started_ns", "last_seen_ns"), SESSION_COLUMNS, "sessions"
        )
        return exported or render_template(
            "sessions.html",
            rows=rows,
            older=older,
            args=request.args,
            attributions=ATTRIBUTION_FILTERS,
        )

    def _cursor(name: str, what: str) -> tuple[int, str] | None:
        """A keyset cursor ``<time_ns>:<id>`` (from a Later/Older link), or None."""
        text = request.args.get(name)
        if not text:
            return None
        stamp, _, key = text.partition(":")
        digits = stamp.removeprefix("-")
        if not (digits.isascii() and digits.isdigit() and len(digits) <= 19 and key):
            _fail(400, f"{name}: expected <time_ns>:<{what}> from the link")
        if not MIN_NS <= int(stamp) <= MAX_NS:
            _fail(400, f"{name}: the time is out of range (1677 to 2262)")
        return int(stamp), key

    @app.get("/sessions/<session_id>")
    def session(session_id: str) -> Response | str:
        # a session can hold 100,000 alerts (9 s and 41 MB of page once): a page at a time
        after = _cursor("alerts_after", "alert key")
        found = store.session(
            session_id,
            alerts_limit=ALERT_PAGE + 1,
            alerts_after=after,
            processes_limit=PROCESS_ROWS,
        )
        if found is None:
            _fail(404, f"no session {session_id!r}")
        later = None
        if len(found["alerts"]) > ALERT_PAGE:
            found["alerts"] = found["alerts"][:ALERT_PAGE]
            last = found["alerts"][-1]
            later = f"{last['time_ns']}:{last['key']}"
        if request.args.get("format") == "json":
            return _json({**found, "later_alerts": later})
        return render_template(
            "session.html",
            s=found,
            timeline=build_timeline(found),
            later=later,
            paged=after is not None,
        )

    @app.get("/findings")
    def findings() -> Response | str:
        rows = store.findings(_time("since", "7d"), _time("until", None))
        exported = _export(with_utc(rows, "time_ns"), FINDING_COLUMNS, "findings")
        return exported or render_template(
            "findings.html", rows=rows, since=request.args.get("since") or "7d"
        )

    @app.get("/audit/<audit_id>")
    def audit_event(audit_id: str) -> Response | str:
        found = store.audit_event(audit_id)
        if found is None:
            _fail(404, f"no audit event {audit_id!r}")
        if request.args.get("format") == "json":
            return _json(found)
        pretty = orjson.dumps(found["event"], option=orjson.OPT_INDENT_2).decode()
        return render_template("audit.html", a=found, pretty=pretty)

    return app
