"""The session records' commands: the readers (``sessions``, ``session``, ``users``,
``findings``), ``prune``, ``ui`` and ``audit``."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from webhook.commandline import friendly
from webhook.sessions.report import (
    FINDING_COLUMNS,
    SESSION_COLUMNS,
    USER_COLUMNS,
    Columns,
    cells,
    csv_text,
    with_utc,
)
from webhook.text import visible
from webhook.times import format_utc, parse_duration_ns, parse_time_ns

DEFAULT_DB = "sqlite:///whoexec-state/whoexec.db"


class TimeParam(click.ParamType[int]):
    """``24h``/``7d``/``90m`` ago, or an RFC 3339 time; converted to ns since the epoch."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        try:
            return parse_time_ns(str(value), time.time_ns())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class DurationParam(click.ParamType[int]):
    """``90d``, ``12h``...: a length of time, in ns."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            return parse_duration_ns(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


_db_option = click.option(
    "--db",
    envvar="WHOEXEC_DB",
    default=DEFAULT_DB,
    show_default=True,
    help="Session store: sqlite:///path or postgresql://... [WHOEXEC_DB].",
)


@contextlib.contextmanager
def _reader(db: str) -> Iterator[Any]:
    """An existing store, opened for one command and closed after it."""
    from webhook.sessions.store import open_store

    if db.startswith("sqlite:///") and not Path(db.removeprefix("sqlite:///")).exists():
        raise click.ClickException(
            f"no session store at {db}; pass --db or set WHOEXEC_DB (consume and "
            "audit ingest create it)"
        )
    store = open_store(db)
    try:
        yield store
    finally:
        store.close()


_format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)


def _emit(rows: list[dict[str, Any]], fmt: str, columns: Columns) -> None:
    """Tables for people, JSON and CSV for machines. Times are UTC with an explicit Z."""
    import orjson
    from tabulate import tabulate

    if fmt == "json":
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if fmt == "csv":
        click.echo(csv_text(rows, columns), nl=False)
        return
    if not rows:
        click.echo("(none)")
        return
    click.echo(tabulate(cells(rows, columns), headers=[t for t, _ in columns], tablefmt="simple"))


@click.command()
@_db_option
@click.option("--user", default=None)
@click.option("--namespace", default=None)
@click.option("--pod", default=None)
@click.option(
    "--attribution",
    type=click.Choice(["pending", "verified", "unverified", "tampered", "replayed"]),
    default=None,
    help="Only sessions with this attribution status.",
)
@click.option("--since", type=TimeParam(), default="24h", show_default=True)
@click.option("--until", type=TimeParam(), default=None)
@click.option("--limit", type=click.IntRange(1), default=1000, show_default=True)
@_format_option
@friendly
def sessions(
    db: str,
    user: str | None,
    namespace: str | None,
    pod: str | None,
    attribution: str | None,
    since: int,
    until: int | None,
    limit: int,
    fmt: str,
) -> None:
    """Exec sessions, newest first: who, where, when, commands run, alerts by priority.

    A replayed session names nobody as its user: the user its token claims is shown apart.
    """
    from webhook.sessions.store import SessionQuery

    query = SessionQuery(
        user=user,
        namespace=namespace,
        pod=pod,
        since_ns=since,
        until_ns=until,
        attribution=attribution,
        limit=limit,
    )
    with _reader(db) as store:
        rows = store.sessions(query)
    _emit(with_utc(rows, "started_ns", "last_seen_ns"), fmt, SESSION_COLUMNS)


@click.command()
@click.argument("session_id")
@_db_option
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@friendly
def session(session_id: str, db: str, fmt: str) -> None:
    """One session as a timeline: audit event, session root, commands, alerts."""
    import orjson

    with _reader(db) as store:
        found = store.session(session_id)
    if found is None:
        raise click.ClickException(f"no session {session_id!r} in {db}")
    if fmt == "json":
        click.echo(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    # every value below comes from the people being audited: shown through visible()
    v = visible
    groups = ", ".join(found.get("user_groups") or [])
    click.echo(f"session    {v(found['session_id'])}")
    if found["attribution"] == "replayed":
        click.echo(
            f"user       nobody: a replayed token (it claims {v(found.get('claimed_user') or '-')}"
            f", session {v(found.get('claimed_session_id') or '-')})"
        )
        click.echo(f"reason     {v(found.get('reason') or '-')}")
    else:
        click.echo(
            f"user       {v(found['user_name'] or '-')} (uid {v(found.get('user_uid') or '-')}; "
            f"groups {v(groups) or '-'})"
        )
    click.echo(
        f"pod        {v(found['namespace'] or '-')}/{v(found['pod'] or '-')} container "
        f"{v(found.get('container') or '-')} (pod uid {v(found.get('pod_uid') or '-')})"
    )
    click.echo(f"command    {v(' '.join(found.get('command') or [])) or '-'}")
    click.echo(f"attribution {found['attribution']}; learnt from {', '.join(found['learnt_from'])}")
    events: list[tuple[int, str]] = []
    for audit in found["audit_events"]:
        who = v(audit["user_name"]) + (
            f" (impersonating {v(audit['impersonated_user'])})"
            if audit["impersonated_user"]
            else ""
        )
        events.append(
            (
                audit["time_ns"],
                f"audit     {v(audit['verb'])} {v(audit['subresource'])} by "
                f"{who}: {v(' '.join(audit['command']))} [{v(audit['outcome'] or '-')}]",
            )
        )
    root = found.get("root_pid")
    for proc in found["processes"]:
        label = "root   " if proc["pid"] == root else "command"
        events.append(
            (
                proc["first_seen_ns"],
                f"{label}   pid {proc['pid']} (parent "
                f"{proc['ppid']}) on {v(proc['host'])}: {v(proc['args'] or '')}",
            )
        )
    for alert in found["alerts"]:
        events.append((alert["time_ns"], f"alert     {v(alert['priority'])}: {v(alert['rule'])}"))
    for finding in found["findings"]:
        events.append(
            (
                finding["time_ns"],
                f"finding   {v(finding['priority'])}: {v(finding['kind'])}: {v(finding['detail'])}",
            )
        )
    click.echo("")
    for stamp, text in sorted(events, key=lambda e: e[0]):
        click.echo(f"{format_utc(stamp)}  {text}")


@click.command()
@_db_option
@click.option("--since", type=TimeParam(), default="7d", show_default=True)
@click.option("--until", type=TimeParam(), default=None)
@_format_option
@friendly
def users(db: str, since: int, until: int | None, fmt: str) -> None:
    """Per user: exec sessions, pods touched, alerts by priority."""
    with _reader(db) as store:
        rows = store.users(since, until)
    _emit(with_utc(rows, "last_ns"), fmt, USER_COLUMNS)


@click.command()
@_db_option
@click.option("--since", type=TimeParam(), default="7d", show_default=True)
@click.option("--until", type=TimeParam(), default=None)
@_format_option
@friendly
def findings(db: str, since: int, until: int | None, fmt: str) -> None:
    """Unattributed execs, tampered identities and invalid tokens."""
    with _reader(db) as store:
        rows = store.findings(since, until)
    _emit(with_utc(rows, "time_ns"), fmt, FINDING_COLUMNS)


@click.command()
@_db_option
@click.option(
    "--older-than",
    "older_than",
    type=DurationParam(),
    required=True,
    help="Delete what was last seen longer ago than this, e.g. 90d.",
)
@friendly
def prune(db: str, older_than: int) -> None:
    """Retention: delete sessions, alerts, audit events and findings older than a duration."""
    with _reader(db) as store:
        deleted = store.prune(time.time_ns() - older_than)
    click.echo(", ".join(f"{table}: {n} deleted" for table, n in deleted.items()))


@click.command()
@_db_option
@click.option(
    "--bind", default=None, help="Address to listen on [WHOEXEC_UI_BIND; 127.0.0.1:8080]."
)
@click.option(
    "--auth-token",
    default=None,
    help="Ask every visitor for this token [WHOEXEC_UI_TOKEN]; required off loopback. "
    "Prefer the variable: a flag shows in the process list.",
)
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(path_type=Path), default=None)
@click.option("--workers", type=click.IntRange(1, 32), default=2, show_default=True)
@click.option("--log-level", default=None, help="[WHOEXEC_LOG_LEVEL; info]")
@friendly
def ui(
    db: str,
    bind: str | None,
    auth_token: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    workers: int,
    log_level: str | None,
) -> None:
    """The session explorer: users, sessions, one session as a timeline, findings.

    Read-only, over the same store as the CLI. It listens on loopback unless told
    otherwise; anywhere else it asks for a token (WHOEXEC_UI_TOKEN).
    """
    from webhook.settings import Settings, ui_exposure_problem

    settings = Settings.from_env(
        os.environ,
        db=db,
        ui_bind=bind,
        ui_token=auth_token,
        tls_cert=tls_cert,
        tls_key=tls_key,
        log_level=log_level,
    )
    problem = ui_exposure_problem(settings.ui_bind, settings.ui_token)
    if problem:
        raise click.UsageError(problem)
    with _reader(settings.db):
        pass  # the same clear error as the other readers when there is no store
    from webhook.sessions.ui.serve import serve_ui

    serve_ui(settings, workers=workers)


_grace_option = click.option(
    "--grace",
    "grace_seconds",
    type=click.IntRange(0),
    envvar="WHOEXEC_AUDIT_GRACE_SECONDS",
    default=300,
    show_default=True,
    help="Seconds the audit log must have moved past a session before its absence "
    "there is a finding.",
)


@click.group()
def audit() -> None:
    """Kubernetes audit events (exec, attach, kubectl debug) into the session store."""


@audit.command("ingest")
@click.argument("path", type=click.Path(dir_okay=False, path_type=Path, allow_dash=True))
@_db_option
@click.option("--follow", is_flag=True, help="Keep following the file (tail -F).")
@click.option(
    "--webhook-name",
    envvar="WHOEXEC_WEBHOOK_NAME",
    default="exec.whoexec.io",
    show_default=True,
    help="Prefix of the webhook's audit annotations.",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=Path("whoexec-state"),
    show_default=True,
    help="Where the followed file's offset, and the lines skipped, are kept.",
)
@_grace_option
@friendly
def audit_ingest(
    path: Path, db: str, follow: bool, webhook_name: str, state_dir: Path, grace_seconds: int
) -> None:
    """Read kube-apiserver's JSON-lines audit log (--audit-log-path) into the store.

    Exec, attach and kubectl debug (pods/ephemeralcontainers) events are linked to
    sessions by the webhook's <webhook-name>/session-id annotation; an exec or debug
    container without it is a finding. Malformed lines are reported by number, skipped
    and kept whole in STATE_DIR/audit-dead-letters.jsonl; the rest is ingested.
    """
    from webhook.deadletters import DeadLetters
    from webhook.follow import FileFollower, follow_until_signalled
    from webhook.sessions.auditlog import AuditIngestor
    from webhook.sessions.store import open_store
    from webhook.sessions.store.writer import StoreWriter

    logging.basicConfig(level="INFO", format="%(message)s", stream=sys.stderr)
    ingestor = AuditIngestor(
        StoreWriter(open_store(db), max_wait=None if follow else 60.0),
        webhook_name,
        DeadLetters(state_dir / "audit-dead-letters.jsonl"),
    )
    try:
        if follow:
            follower = FileFollower(path, state_dir / f"audit-{path.name}.offset")
            with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C before the handlers
                follow_until_signalled(follower, ingestor)
        elif str(path) == "-":
            ingestor.feed(sys.stdin.buffer, where="stdin")
        else:
            try:
                handle = path.open("rb")
            except OSError as exc:
                raise click.ClickException(f"cannot read {path}: {exc.strerror}") from None
            with handle:
                ingestor.feed(handle, where=str(path))
    finally:
        ingestor.close()
    stats = ingestor.stats
    click.echo(
        f"whoexec: {stats['exec']} exec, {stats['attach']} attach and "
        f"{stats['ephemeralcontainers']} debug events ingested, "
        f"{stats['unattributed']} exec or debug not attributed by the webhook, "
        f"{stats['other']} other events ignored, {stats['malformed']} malformed lines skipped",
        err=True,
    )
    with _reader(db) as store:
        added = store.crosscheck(time.time_ns(), grace_seconds * 1_000_000_000)
    click.echo(f"whoexec: audit cross-check: {added} new findings", err=True)


@audit.command("crosscheck")
@_db_option
@_grace_option
@friendly
def audit_crosscheck(db: str, grace_seconds: int) -> None:
    """Late findings from the audit log against the sessions seen through tokens.

    A session whose audit event names another user than its token is a finding; so is a
    session root whose id is in no exec or debug audit event once the audit log has moved
    GRACE past it (the audit log lags, so these findings come late). Idempotent.
    """
    with _reader(db) as store:
        added = store.crosscheck(time.time_ns(), grace_seconds * 1_000_000_000)
    click.echo(f"whoexec: audit cross-check: {added} new findings", err=True)
