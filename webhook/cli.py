"""The ``whoexec`` command line (click). Errors exit 1 with a one-line message."""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from webhook.errors import WhoexecError
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

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """Turn whoexec's own errors into click errors (exit 1, no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WhoexecError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="whoexec")
def main() -> None:
    """whoexec: which Kubernetes user ran that command in the pod?"""


@main.command()
@click.option("--service", default="whoexec", show_default=True, help="Service name.")
@click.option("--namespace", default="whoexec", show_default=True, help="Service namespace.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Directory to write into.",
)
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@_friendly
def certs(service: str, namespace: str, out: Path, days: int, force: bool) -> None:
    """Write a dev CA, the webhook's TLS certificate and the identity key pair.

    Private keys (ca.key, tls.key, identity.key) and api-token (the bearer token of the
    consumer's POST /k8s-audit and /api/*) are written with mode 0600. The base64
    caBundle for the MutatingWebhookConfiguration is printed on stdout.
    """
    from webhook.admission.certs import generate_certs

    now = datetime.datetime.now(datetime.UTC)
    bundle = generate_certs(out, service, namespace, now, days=days, force=force)
    click.echo(
        f"wrote {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} to {out}",
        err=True,
    )
    click.echo(f"serving certificate SANs: {', '.join(bundle.dns_names)}, 127.0.0.1", err=True)
    click.echo("caBundle:", err=True)
    click.echo(bundle.ca_bundle)


@main.command()
@click.option(
    "--certs",
    "certs_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory with tls.crt, tls.key, identity.key [env WHOEXEC_CERTS; default certs].",
)
@click.option("--bind", default=None, help="Address to listen on [WHOEXEC_BIND; 0.0.0.0:8443].")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="[WHOEXEC_WORKERS; 2]")
@click.option(
    "--threads",
    type=click.IntRange(1, 256),
    default=None,
    help="Unused since the gevent worker (kept so that existing flags still work).",
)
@click.option(
    "--worker-connections",
    type=click.IntRange(10, 100_000),
    default=None,
    help="Open connections per worker; near it, idle ones are closed "
    "[WHOEXEC_WORKER_CONNECTIONS; 1000].",
)
@click.option("--exclude-namespace", multiple=True, help="Glob; repeatable.")
@click.option("--exclude-user", multiple=True, help="Glob; repeatable.")
@click.option("--exclude-group", multiple=True, help="Glob; repeatable.")
@click.option(
    "--trusted-key",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra identity public key whose tokens count as our own (rotation); repeatable.",
)
@click.option("--log-level", default=None, help="[WHOEXEC_LOG_LEVEL; info]")
@click.option(
    "--kube",
    default=None,
    help="Pod look-ups: in-cluster, a kubeconfig path, or an apiserver URL [WHOEXEC_KUBE; off].",
)
@click.option(
    "--pod-lookup-timeout",
    type=float,
    default=None,
    help="Seconds a cache miss may wait for the apiserver [0.5].",
)
@click.option(
    "--image-without-env", multiple=True, help="Image glob known to lack /usr/bin/env; repeatable."
)
@click.option(
    "--env-trusted-namespace",
    multiple=True,
    help="Namespace glob whose images you vouch have /usr/bin/env: execs into pods without "
    "the static env are rewritten there, and skipped elsewhere; repeatable.",
)
@click.option(
    "--env-trusted-image",
    multiple=True,
    help="Image glob you vouch has /usr/bin/env (as above); repeatable.",
)
@_friendly
def serve(
    certs_dir: Path | None,
    bind: str | None,
    workers: int | None,
    threads: int | None,
    worker_connections: int | None,
    exclude_namespace: tuple[str, ...],
    exclude_user: tuple[str, ...],
    exclude_group: tuple[str, ...],
    trusted_key: tuple[Path, ...],
    log_level: str | None,
    kube: str | None,
    pod_lookup_timeout: float | None,
    image_without_env: tuple[str, ...],
    env_trusted_namespace: tuple[str, ...],
    env_trusted_image: tuple[str, ...],
) -> None:
    """Run the admission webhook over TLS under gunicorn (gevent, keep-alive).

    Slow or stalled clients meet deadlines (WHOEXEC_HANDSHAKE_TIMEOUT, _HEADER_TIMEOUT,
    _BODY_TIMEOUT) and never hold up another admission.

    An exec is rewritten only where the env binary is known to exist in its container:
    the static env in pods created after install, or /usr/bin/env in namespaces and
    images you vouch for. Elsewhere it runs unchanged (outcome skipped-no-static-env).
    """
    from webhook.settings import Settings

    settings = Settings.from_env(
        os.environ,
        certs=certs_dir,
        bind=bind,
        workers=workers,
        threads=threads,
        worker_connections=worker_connections,
        exclude_namespaces=exclude_namespace,
        exclude_users=exclude_user,
        exclude_groups=exclude_group,
        trusted_keys=trusted_key,
        log_level=log_level,
        kube=kube,
        pod_lookup_timeout=pod_lookup_timeout,
        images_without_env=image_without_env,
        env_trusted_namespaces=env_trusted_namespace,
        env_trusted_images=env_trusted_image,
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stderr)
    # gevent's cooperative sockets and TLS before anything imports them: the pod cache's
    # client (urllib3) binds ssl's names at import, in the master, before gunicorn's
    # worker would patch (after the fork). Threads stay threads (webhook/admission/gworker.py);
    # the master's signals stay gunicorn's own
    from gevent import monkey

    monkey.patch_all(thread=False, signal=False)
    # before anything imports prometheus_client (see prepare_metrics_dir)
    from webhook.admission.wsgi import WebhookApplication
    from webhook.serving import prepare_metrics_dir

    metrics_dir = prepare_metrics_dir(settings.workers)
    WebhookApplication(settings, metrics_dir).run()


@main.command()
@click.option(
    "--input",
    "input_path",
    default=None,
    help="Falco JSON alerts: a file, or - for stdin. Without --follow it is read to the end.",
)
@click.option("--follow", is_flag=True, help="Follow --input like tail -F (rotation, restarts).")
@click.option("--listen", default=None, help="Serve POST /falco on this address [WHOEXEC_LISTEN].")
@click.option(
    "--identity-pub",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Identity public key (or a directory of *.pub); repeatable for rotation.",
)
@click.option(
    "--procfs",
    type=click.Path(path_type=Path),
    default=None,
    help="Walk this procfs for lineage (a DaemonSet with hostPID: /proc).",
)
@click.option("--db", default=None, help="Session store URL [WHOEXEC_DB].")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Also append enriched alerts to this file.",
)
@click.option(
    "--forward",
    "forward_url",
    default=None,
    help="POST each enriched alert here (falcosidekick), with an on-disk spool.",
)
@click.option("--no-stdout", is_flag=True, help="Do not write enriched alerts to stdout.")
@click.option(
    "--forward-roots",
    is_flag=True,
    default=None,
    help="Also pass on the session-root rule's own alerts.",
)
@click.option(
    "--hold",
    "hold_seconds",
    type=click.FloatRange(0),
    default=None,
    help="Seconds to hold an unattributed alert for a late session root [2].",
)
@click.option(
    "--max-processes",
    type=click.IntRange(1),
    default=None,
    help="Bound of the process table [100000].",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where offsets and spools live [whoexec-state].",
)
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(path_type=Path), default=None)
@click.option(
    "--client-ca",
    type=click.Path(path_type=Path),
    default=None,
    help="Require client certificates signed by this CA (mTLS).",
)
@click.option(
    "--api-token-file",
    type=click.Path(path_type=Path),
    default=None,
    help="Bearer token that POST /k8s-audit and /api/* ask for (a mounted Secret) "
    "[WHOEXEC_API_TOKEN_FILE; without it they answer loopback only].",
)
@click.option("--log-level", default=None, help="[WHOEXEC_LOG_LEVEL; info]")
@_friendly
def consume(
    input_path: str | None,
    follow: bool,
    listen: str | None,
    identity_pub: tuple[Path, ...],
    procfs: Path | None,
    db: str | None,
    output: Path | None,
    forward_url: str | None,
    no_stdout: bool,
    forward_roots: bool | None,
    hold_seconds: float | None,
    max_processes: int | None,
    state_dir: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    api_token_file: Path | None,
    log_level: str | None,
) -> None:
    """Attribute Falco alerts to the Kubernetes user of their exec session.

    Batch: `whoexec consume --input events.json --identity-pub identity.pub` reads the
    file to its end, writes enriched alerts as JSON lines to stdout and exits 0.
    """
    from webhook.settings import Settings

    settings = Settings.from_env(
        os.environ,
        identity_pub=identity_pub,
        procfs=procfs,
        db=db,
        output=output,
        forward_url=forward_url,
        forward_roots=forward_roots,
        hold_seconds=hold_seconds,
        max_processes=max_processes,
        state_dir=state_dir,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        api_token_file=api_token_file,
        log_level=log_level,
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stderr)
    if settings.listen and input_path:
        raise click.UsageError("use either --listen or --input, not both")
    if not settings.listen and not input_path:
        raise click.UsageError("give --input FILE (or - for stdin), or --listen ADDRESS")
    if follow and (not input_path or input_path == "-"):
        raise click.UsageError("--follow needs --input FILE")
    stdout = None if no_stdout else sys.stdout.buffer
    if settings.listen:
        # before anything imports prometheus_client (see prepare_metrics_dir)
        from webhook.serving import prepare_metrics_dir

        # the intake and the pipeline process; in the state dir: a kill -9 leaves no trace
        prepare_metrics_dir(2, settings.state_dir / "metrics")
        from webhook.attribution import app as consumer_app

        consumer_app.serve_consumer(settings, stdout)
        return
    from webhook.attribution import app as consumer_app

    assert input_path is not None
    # batch mode gives a lost database 60 s to come back, then fails clearly
    consumer = consumer_app.build_consumer(
        settings, stdout=stdout, input_name="file", store_max_wait=None if follow else 60.0
    )
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            consumer_app.run_follow(consumer, Path(input_path), settings.state_dir)
        return
    if input_path == "-":
        count = consumer_app.run_batch(consumer, sys.stdin.buffer)
    else:
        try:
            stream = Path(input_path).open("rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            consumer.close()
            raise click.ClickException(
                f"cannot read --input {input_path}: {exc.strerror}"
            ) from None
        with stream:
            count = consumer_app.run_batch(consumer, stream)
    stats = consumer.pipeline.stats
    skipped = sum(v for k, v in stats.items() if k.startswith("skipped_"))
    attributed = [
        f"{key.removeprefix('attribution_')} {value}"
        for key, value in sorted(stats.items())
        if key.startswith("attribution_")
    ]
    click.echo(
        f"whoexec: {count} alerts read, {skipped} lines skipped, {stats['findings']} findings; "
        f"attribution: {', '.join(attributed) or 'nothing passed on'}",
        err=True,
    )


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary directory (logs, store).")
@_friendly
def demo(keep: bool) -> None:
    """Run the whole pipeline on this machine, with real components, in about a minute.

    Certificates, the webhook over TLS, the consumer with its SQLite store; this process
    acts as kube-apiserver and, clearly labelled, stands in for Falco.
    """
    if not Path("/proc/self/stat").exists():
        raise click.ClickException("the demo reads /proc: it needs Linux")
    from webhook.demo import Demo

    Demo(say=click.echo, keep=keep).run()


# --- the session store: writers and readers ----------------------------------------------

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


def _db_option(func: F) -> F:
    return click.option(
        "--db",
        envvar="WHOEXEC_DB",
        default=DEFAULT_DB,
        show_default=True,
        help="Session store: sqlite:///path or postgresql://... [WHOEXEC_DB].",
    )(func)


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


def _format_option(func: F) -> F:
    return click.option(
        "--format",
        "fmt",
        type=click.Choice(["table", "json", "csv"]),
        default="table",
        show_default=True,
    )(func)


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


@main.command()
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
@_friendly
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


@main.command()
@click.argument("session_id")
@_db_option
@click.option(
    "--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True
)
@_friendly
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


@main.command()
@_db_option
@click.option("--since", type=TimeParam(), default="7d", show_default=True)
@click.option("--until", type=TimeParam(), default=None)
@_format_option
@_friendly
def users(db: str, since: int, until: int | None, fmt: str) -> None:
    """Per user: exec sessions, pods touched, alerts by priority."""
    with _reader(db) as store:
        rows = store.users(since, until)
    _emit(with_utc(rows, "last_ns"), fmt, USER_COLUMNS)


@main.command()
@_db_option
@click.option("--since", type=TimeParam(), default="7d", show_default=True)
@click.option("--until", type=TimeParam(), default=None)
@_format_option
@_friendly
def findings(db: str, since: int, until: int | None, fmt: str) -> None:
    """Unattributed execs, tampered identities and invalid tokens."""
    with _reader(db) as store:
        rows = store.findings(since, until)
    _emit(with_utc(rows, "time_ns"), fmt, FINDING_COLUMNS)


@main.command()
@_db_option
@click.option(
    "--older-than",
    "older_than",
    type=DurationParam(),
    required=True,
    help="Delete what was last seen longer ago than this, e.g. 90d.",
)
@_friendly
def prune(db: str, older_than: int) -> None:
    """Retention: delete sessions, alerts, audit events and findings older than a duration."""
    with _reader(db) as store:
        deleted = store.prune(time.time_ns() - older_than)
    click.echo(", ".join(f"{table}: {n} deleted" for table, n in deleted.items()))


@main.command()
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
@_friendly
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


def _grace_option(func: F) -> F:
    return click.option(
        "--grace",
        "grace_seconds",
        type=click.IntRange(0),
        envvar="WHOEXEC_AUDIT_GRACE_SECONDS",
        default=300,
        show_default=True,
        help="Seconds the audit log must have moved past a session before its absence "
        "there is a finding.",
    )(func)


@main.group()
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
    help="Where the followed file's offset is kept.",
)
@_grace_option
@_friendly
def audit_ingest(
    path: Path, db: str, follow: bool, webhook_name: str, state_dir: Path, grace_seconds: int
) -> None:
    """Read kube-apiserver's JSON-lines audit log (--audit-log-path) into the store.

    Exec, attach and kubectl debug (pods/ephemeralcontainers) events are linked to
    sessions by the webhook's <webhook-name>/session-id annotation; an exec or debug
    container without it is a finding. Malformed lines are reported by number and
    skipped; the rest is ingested.
    """
    from webhook.follow import FileFollower
    from webhook.sessions.auditlog import AuditIngestor
    from webhook.sessions.store import open_store
    from webhook.sessions.store.writer import StoreWriter

    logging.basicConfig(level="INFO", format="%(message)s", stream=sys.stderr)
    ingestor = AuditIngestor(
        StoreWriter(open_store(db), max_wait=None if follow else 60.0), webhook_name
    )
    try:
        if follow:
            follower = FileFollower(path, state_dir / f"audit-{path.name}.offset")
            with contextlib.suppress(KeyboardInterrupt):
                follower.run(ingestor)
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
@_friendly
def audit_crosscheck(db: str, grace_seconds: int) -> None:
    """Late findings from the audit log against the sessions seen through tokens.

    A session whose audit event names another user than its token is a finding; so is a
    session root whose id is in no exec or debug audit event once the audit log has moved
    GRACE past it (the audit log lags, so these findings come late). Idempotent.
    """
    with _reader(db) as store:
        added = store.crosscheck(time.time_ns(), grace_seconds * 1_000_000_000)
    click.echo(f"whoexec: audit cross-check: {added} new findings", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
