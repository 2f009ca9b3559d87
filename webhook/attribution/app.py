"""``whoexec consume``: wiring, the Flask routes beside the intake, and the run loops.

Falco's ``http_output`` makes one synchronous POST per alert and ignores the status; it
drops the alert after repeated timeouts. So ``POST /falco`` only appends the body to a
durable inbox and answers at once (:mod:`webhook.attribution.intake`); one pipeline process does
the attribution, because the process table is state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
from flask import Flask, Response, abort, request
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from werkzeug.exceptions import HTTPException

from webhook.attribution.apitoken import TokenFile
from webhook.attribution.inbox import InboxLogReader, InboxWriter
from webhook.attribution.lineage import (
    Attributor,
    ProcessTable,
    ReplayPolicy,
    RootClaims,
    TokenVerifier,
)
from webhook.attribution.pipeline import (
    FileSink,
    ForwardSink,
    InboxReader,
    Pipeline,
    Sink,
    StreamSink,
    read_batch,
)
from webhook.attribution.spool import Spool
from webhook.deadletters import DeadLetters
from webhook.errors import ConfigError, MalformedAuditEvent, StoreUnavailable
from webhook.follow import FileFollower, follow_until_signalled
from webhook.keyfiles import load_key_ring
from webhook.sessions.store.sql import SqlStore
from webhook.settings import Settings, is_loopback
from webhook.stopflag import StopFlag
from webhook.times import parse_time_ns
from webhook.tls import ReloadingContext

log = logging.getLogger("whoexec.consumer")


@dataclass
class Consumer:
    """A pipeline with its sinks, built from settings."""

    pipeline: Pipeline

    def close(self) -> None:
        self.pipeline.close()  # closes every sink


def build_consumer(
    settings: Settings,
    *,
    stdout: IO[bytes] | None,
    input_name: str,
    extra_sinks: list[Sink] | None = None,
    store_max_wait: float | None = None,
) -> Consumer:
    """Key ring, process table, optional /proc walking, and the sinks the settings ask for."""
    if not settings.identity_pub:
        raise ConfigError("no identity public key: pass --identity-pub (repeatable)")
    verifier = TokenVerifier(load_key_ring(settings.identity_pub), settings.clock_skew_seconds)
    lineage_source = None
    if settings.procfs is not None:
        from webhook.attribution.procfs import ProcFS

        try:
            lineage_source = ProcFS(
                settings.procfs, settings.identity_variable, settings.node_name
            ).learn
        except OSError as exc:
            raise ConfigError(f"--procfs {settings.procfs} is not a procfs: {exc}") from None
    sinks: list[Sink] = []
    if stdout is not None:
        sinks.append(StreamSink(stdout))
    if settings.output is not None:
        sinks.append(FileSink(settings.output))
    if settings.forward_url:
        sinks.append(
            ForwardSink(
                settings.forward_url,
                settings.state_dir / "forward-spool.db",
                max_items=settings.forward_spool_items,
            )
        )
    sinks.extend(extra_sinks or [])
    writer = None
    claims: RootClaims | None = None
    dead_letters = DeadLetters(settings.state_dir / "dead-letters.jsonl")
    if settings.db:
        from webhook.sessions.store import open_store
        from webhook.sessions.store.claims import StoreRootClaims
        from webhook.sessions.store.writer import StoreWriter

        # an unreachable database is a clear error at start-up (StoreUnavailable)
        def rejected(fact: str, why: str) -> None:
            dead_letters.add("store_rejected", "StoreWriter", fact, why)

        writer = StoreWriter(
            open_store(settings.db),
            max_wait=store_max_wait,
            variable=settings.identity_variable,
            on_rejected=rejected,
        )
        sinks.append(writer)
        # single use of session ids holds across every consumer sharing this store
        claims = StoreRootClaims(writer.store)
    attributor = Attributor(
        verifier,
        ProcessTable(settings.max_processes),
        variable=settings.identity_variable,
        hold_seconds=settings.hold_seconds,
        lineage_source=lineage_source,
        replay=ReplayPolicy(settings.fresh_seconds, settings.root_skew_seconds),
        claims=claims,
    )
    pipeline = Pipeline(
        attributor,
        sinks,
        forward_roots=settings.forward_roots,
        input_name=input_name,
        dead_letters=dead_letters,
    )
    if writer is not None:
        pipeline.observe(writer.record)
    return Consumer(pipeline)


def run_batch(consumer: Consumer, stream: IO[bytes]) -> int:
    """Read to the end, pass everything on, exit."""
    try:
        return read_batch(consumer.pipeline, stream)
    finally:
        consumer.close()


def run_follow(consumer: Consumer, path: Path, state_dir: Path) -> None:
    """Follow a file until SIGINT or SIGTERM, then close the consumer."""
    name = path.name.replace("/", "_")
    follower = FileFollower(path, state_dir / f"{name}.offset")
    try:
        follow_until_signalled(follower, consumer.pipeline)
    finally:
        consumer.close()


def create_consumer_app(
    heartbeat: Path | None = None,
    registry: Callable[[], Any] | None = None,
    max_body_bytes: int = 8 * 1024 * 1024,
    store: SqlStore | None = None,
    webhook_name: str = "exec.whoexec.io",
    audit_dead_letters: DeadLetters | None = None,
    api_token: TokenFile | None = None,
) -> Flask:
    """Every route but ``POST /falco`` (answered by :mod:`webhook.attribution.intake`): health,
    metrics, and with a store, ``POST /k8s-audit`` (audit webhook backend) and the
    ``/api/*`` readers.

    ``/k8s-audit`` writes sessions and ``/api/*`` reads who did what: with ``api_token``
    both ask for ``Authorization: Bearer <token>``; without it they answer loopback only
    (a forged EventList would otherwise create sessions in anyone's name)."""
    app = Flask("whoexec-consumer")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    def _json(payload: object, status: int = 200) -> Response:
        return Response(orjson.dumps(payload), status=status, mimetype="application/json")

    @app.before_request
    def authenticate() -> Response | None:
        if request.endpoint not in GUARDED_ENDPOINTS:
            return None
        if api_token is None:
            if is_loopback(request.remote_addr or ""):
                return None
            message = (
                f"{request.path} answers only loopback: start the consumer with "
                "--api-token-file (WHOEXEC_API_TOKEN_FILE) to serve it to others"
            )
            return _json({"error": message}, 403)
        if not api_token.current():
            message = f"the API token file {api_token.path} is missing or empty"
            return _json({"error": message}, 503)
        header = request.headers.get("Authorization", "")
        if header.startswith("Bearer ") and api_token.matches(header.removeprefix("Bearer ")):
            return None
        refused = _json({"error": "send Authorization: Bearer <the API token>"}, 401)
        refused.headers["WWW-Authenticate"] = 'Bearer realm="whoexec"'
        return refused

    def _store() -> SqlStore:
        if store is None:
            abort(_json({"error": "no session store: start the consumer with --db"}, 404))
        return store

    def _time_arg(name: str, default: str | None) -> int | None:
        text = request.args.get(name, default)
        if text is None:
            return None
        try:
            return parse_time_ns(text, time.time_ns())
        except ValueError as exc:
            abort(_json({"error": f"{name}: {exc}"}, 400))

    @app.errorhandler(StoreUnavailable)
    def store_down(exc: StoreUnavailable) -> Response:
        return _json({"error": str(exc)}, 503)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        if isinstance(exc.response, Response):  # abort() with our own JSON answer
            return exc.response
        return _json({"error": exc.description or exc.name}, exc.code or 500)

    @app.post("/k8s-audit")
    def k8s_audit() -> Response:
        from webhook.sessions.auditlog import AuditIngestor
        from webhook.sessions.store.writer import StoreWriter

        rejected = None
        if audit_dead_letters is not None:
            letters = audit_dead_letters

            def rejected(fact: str, why: str) -> None:
                letters.add("store_rejected", "POST /k8s-audit", fact, why)

        writer = StoreWriter(_store(), max_wait=5.0, on_rejected=rejected)
        ingestor = AuditIngestor(writer, webhook_name, audit_dead_letters)
        try:
            count = ingestor.feed_event_list(request.get_data(cache=False))
        except MalformedAuditEvent as exc:
            return _json({"error": str(exc)}, 400)
        stats = ingestor.stats
        return _json(
            {
                "items": count,
                "exec": stats["exec"],
                "attach": stats["attach"],
                "unattributed": stats["unattributed"],
                "skipped": stats["malformed"],
                "errors": ingestor.errors[:20],
            }
        )

    @app.get("/api/sessions")
    def api_sessions() -> Response:
        from webhook.sessions.store import SessionQuery

        try:
            limit = int(request.args.get("limit", "1000"))
        except ValueError:
            return _json({"error": "limit must be an integer"}, 400)
        query = SessionQuery(
            user=request.args.get("user"),
            namespace=request.args.get("namespace"),
            pod=request.args.get("pod"),
            since_ns=_time_arg("since", "24h"),
            until_ns=_time_arg("until", None),
            limit=max(1, min(limit, 10_000)),
        )
        return _json(_store().sessions(query))

    @app.get("/api/sessions/<session_id>")
    def api_session(session_id: str) -> Response:
        found = _store().session(session_id)
        if found is None:
            return _json({"error": f"no session {session_id!r}"}, 404)
        return _json(found)

    @app.get("/api/users")
    def api_users() -> Response:
        return _json(_store().users(_time_arg("since", "7d"), _time_arg("until", None)))

    @app.get("/api/findings")
    def api_findings() -> Response:
        return _json(_store().findings(_time_arg("since", "7d"), _time_arg("until", None)))

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    @app.get("/readyz")
    def readyz() -> Response:
        if heartbeat is not None:
            try:
                age = time.time() - heartbeat.stat().st_mtime
            except FileNotFoundError:
                age = float("inf")
            if age > 10:
                body = {"status": "not ready", "reason": "the pipeline process is not running"}
                return Response(orjson.dumps(body), status=503, mimetype="application/json")
        return Response(b'{"status":"ready"}', mimetype="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        data = generate_latest(registry()) if registry else generate_latest()
        return Response(data, mimetype=CONTENT_TYPE_LATEST)

    return app


def _run_pipeline_process(
    settings: Settings, use_stdout: bool, heartbeat: Path, stop: StopFlag
) -> None:
    """The one process that owns the process table: inbox -> pipeline -> sinks.

    ``stop`` is the supervisor's, inherited through fork with its SIGTERM handler: a
    SIGTERM that arrives before this process installs its own is not lost."""
    reader: list[InboxReader] = []

    def on_term(_signum: int, _frame: object) -> None:
        stop.set()
        if reader:
            reader[0].stop()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the intake process decides when to stop
    # Falco waits for the intake's answer to every alert; the pipeline only has to keep
    # up on average (the inbox holds a burst), so under contention the CPU goes to the
    # intake first (bench/README.md: the niceness is worth 6% of Falco's rate)
    os.nice(PIPELINE_NICENESS)
    consumer = build_consumer(
        settings, stdout=sys.stdout.buffer if use_stdout else None, input_name="http"
    )
    reader.append(
        InboxReader(consumer.pipeline, InboxLogReader(settings.state_dir / "inbox"), heartbeat)
    )
    parent = os.getppid()

    def watch_parent() -> None:
        # if the supervisor dies without passing SIGTERM on (SIGKILL, OOM), stop too:
        # drain what was accepted and exit instead of lingering as an orphan
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.error("the pipeline's supervisor is gone; stopping the pipeline")
                stop.set()
                reader[0].stop()

    threading.Thread(target=watch_parent, name="whoexec-parent-watch", daemon=True).start()
    if stop.is_set():
        reader[0].stop()
    reader[0].run()  # drains the inbox, then closes the pipeline and its sinks


def serve_consumer(settings: Settings, stdout: IO[bytes] | None) -> None:
    """The HTTP intake (this process) appends to a durable inbox; one pipeline process,
    forked and supervised, reads it. The process table is state, so attribution runs in
    exactly one process; the intake is an event loop (:mod:`webhook.attribution.intake`)."""
    from webhook.attribution.intake import FalcoEndpoint, IntakeServer, bind, run_intake
    from webhook.serving import multiprocess_registry, raise_open_files_limit

    load_key_ring(settings.identity_pub)  # fail before forking if the keys are unusable
    if settings.db:
        from webhook.sessions.store import open_store

        open_store(settings.db).close()  # unreachable or unusable: a clear error, now
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    heartbeat = settings.state_dir / "pipeline.alive"
    heartbeat.unlink(missing_ok=True)
    tls = None
    if settings.tls_cert is not None:
        assert settings.tls_key is not None
        tls = ReloadingContext(settings.tls_cert, settings.tls_key, settings.client_ca)
    try:
        sock = bind(settings.listen)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot listen on {settings.listen!r}: {exc}") from None
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    # a plain fork (not multiprocessing), before the event loop and the inbox writer
    pipeline_pid = os.fork()
    if pipeline_pid == 0:
        sock.close()
        os._exit(_supervise_pipeline(settings, stdout is not None, heartbeat, metrics_dir))

    def stop_pipeline() -> None:
        _stop_pipeline_process(pipeline_pid)
        if metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pipeline_pid)  # type: ignore[no-untyped-call]

    api_token = None
    if settings.api_token_file is not None:
        api_token = TokenFile(settings.api_token_file)
        if not api_token.current():  # a Secret not created yet: /falco must work all the same
            log.warning(
                "the API token file %s is missing or empty: POST /k8s-audit and /api/* "
                "answer 503 until it is there",
                settings.api_token_file,
            )
    else:
        log.info("no --api-token-file: POST /k8s-audit and /api/* answer loopback only")
    try:
        inbox = InboxWriter(settings.state_dir / "inbox", max_bytes=settings.inbox_bytes)
        moved = move_sqlite_inbox(settings.state_dir / "inbox.db", inbox)
        if moved:
            log.warning("moved %d alerts from the SQLite inbox of an older version", moved)
        store = None
        if settings.db:
            from webhook.sessions.store import open_store

            store = open_store(settings.db)
        app = create_consumer_app(
            heartbeat,
            multiprocess_registry if metrics_dir else None,
            store=store,
            webhook_name=settings.webhook_name,
            audit_dead_letters=DeadLetters(settings.state_dir / "audit-dead-letters.jsonl"),
            api_token=api_token,
        )
    except BaseException:
        stop_pipeline()
        raise
    server = IntakeServer(
        FalcoEndpoint(inbox, CONSUMER_MAX_BODY_BYTES, heartbeat=heartbeat),
        app,
        threads=settings.threads,
        max_body_bytes=CONSUMER_MAX_BODY_BYTES,
        max_connections=settings.max_connections,
        max_connections_per_peer=settings.max_connections_per_peer,
        handshake_timeout=settings.handshake_timeout,
        header_timeout=settings.header_timeout,
        body_timeout=settings.body_timeout,
        tls=tls.current if tls is not None else None,
    )
    # a connection is a descriptor: the cap, the inbox, the store and some to spare
    raise_open_files_limit(settings.max_connections + 256)
    try:
        run_intake(server, sock)
    finally:
        inbox.close()
        stop_pipeline()


PIPELINE_NICENESS = 10
#: the routes that ask for the API token (or loopback): what writes or reads the store
GUARDED_ENDPOINTS = frozenset(
    {"k8s_audit", "api_sessions", "api_session", "api_users", "api_findings"}
)


def move_sqlite_inbox(old: Path, inbox: InboxWriter) -> int:
    """Alerts an older whoexec accepted into its SQLite inbox, into the log; how many.

    Moved before the intake serves, then the database is removed. A crash in between
    moves them again on the next start: at-least-once, like everything in the inbox."""
    if not old.exists():
        return 0
    spool = Spool(old)
    moved, after = 0, 0
    try:
        while batch := spool.peek(10_000, after=after):
            inbox.put_many([body for _, body in batch])
            moved += len(batch)
            after = batch[-1][0]
    finally:
        spool.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{old}{suffix}").unlink(missing_ok=True)
    return moved


#: the largest body ``/falco`` and ``/k8s-audit`` take (an audit batch can be large)
CONSUMER_MAX_BODY_BYTES = 8 * 1024 * 1024


PIPELINE_RESTARTS = Counter(
    "whoexec_consumer_pipeline_restarts", "Times the pipeline process died and was restarted."
)


def _supervise_pipeline(
    settings: Settings, use_stdout: bool, heartbeat: Path, metrics_dir: str | None
) -> int:
    """Keep one pipeline process running; its exit status once told to stop.

    A pipeline process that dies (a defect, the OOM killer) is restarted, after 1 s, then
    2, 4... up to 30 s while it keeps dying; what it had not finished is still in the
    inbox. SIGTERM (from the intake process as it stops) is passed on, and the drained
    pipeline's status returned. If the master itself is gone, the pipeline is stopped too.
    """
    master = os.getppid()
    stop = StopFlag()

    def on_term(_signum: int, _frame: object) -> None:
        # only the flag: the loop below tells the child (a SIGTERM that came while
        # os.fork() ran would find no child id yet)
        stop.set()

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    delay = 1.0
    while True:
        child = os.fork()
        if child == 0:
            code = 0
            try:
                _run_pipeline_process(settings, use_stdout, heartbeat, stop)
            except BaseException:
                log.exception("the pipeline process failed")
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        started = time.monotonic()
        told_at = -math.inf
        while True:
            done, status = os.waitpid(child, os.WNOHANG)
            if done == child:
                break
            if not stop.is_set() and os.getppid() != master:
                log.error("the consumer's master process is gone; stopping the pipeline")
                stop.set()
            if stop.is_set() and time.monotonic() - told_at >= 1.0:
                # told again each second until it exits: a signal that reaches a child
                # before Python's after-fork reset is dropped there (_PySignal_AfterFork)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGTERM)
                told_at = time.monotonic()
            stop.wait(0.2)
        code = os.waitstatus_to_exitcode(status)
        if metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(child)  # type: ignore[no-untyped-call]
        if stop.is_set():
            return code if code >= 0 else 1
        PIPELINE_RESTARTS.inc()
        if time.monotonic() - started > 60:
            delay = 1.0  # it ran a while: this is a new failure, not the same loop
        log.error("the pipeline process exited (status %d); restarting it in %.0fs", code, delay)
        if stop.wait(delay):
            return code if code >= 0 else 1
        delay = min(delay * 2, 30.0)


def _stop_pipeline_process(pid: int, timeout: float = 60.0) -> None:
    """SIGTERM (drain the inbox, close the sinks), then wait for it to exit."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            done = pid
        if done == pid:
            # reaped by someone else: make sure it is really gone
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    log.error("the pipeline process %d did not stop in %.0fs; killing it", pid, timeout)
    os.kill(pid, signal.SIGKILL)
