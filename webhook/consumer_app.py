"""``whoexec consume``: wiring, the HTTP intake (Flask under gunicorn), and the run loops.

Falco's ``http_output`` makes one synchronous POST per alert and ignores the status; it
drops the alert after repeated timeouts. So ``POST /falco`` only appends the body to a
durable inbox and answers at once; a single pipeline thread does the attribution. The
process table is state, so the HTTP server runs one gunicorn worker (with threads).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sqlite3
import ssl
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

from webhook.consumer import (
    SKIPPED,
    DeadLetters,
    FileFollower,
    FileSink,
    ForwardSink,
    InboxReader,
    Pipeline,
    RateLimitedLog,
    Sink,
    StreamSink,
    read_batch,
)
from webhook.errors import ConfigError, MalformedAuditEvent, SpoolFull, StoreUnavailable
from webhook.keyfiles import load_key_ring
from webhook.lineage import Attributor, ProcessTable, ReplayPolicy, RootClaims, TokenVerifier
from webhook.settings import Settings
from webhook.spool import Spool
from webhook.store.sql import SqlStore
from webhook.times import parse_time_ns
from webhook.tls import ReloadingContext

log = logging.getLogger("whoexec.consumer")


@dataclass
class Consumer:
    """A pipeline with its sinks, built from settings."""

    pipeline: Pipeline
    sinks: list[Sink]

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
        from webhook.procfs import ProcFS

        try:
            lineage_source = ProcFS(settings.procfs, settings.identity_variable).learn
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
    if settings.db:
        from webhook.store import open_store
        from webhook.store.claims import StoreRootClaims
        from webhook.store.writer import StoreWriter

        # an unreachable database is a clear error at start-up (StoreUnavailable)
        writer = StoreWriter(
            open_store(settings.db),
            max_wait=store_max_wait,
            variable=settings.identity_variable,
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
        dead_letters=DeadLetters(settings.state_dir / "dead-letters.jsonl"),
    )
    if writer is not None:
        pipeline.observe(writer.record)
    return Consumer(pipeline, sinks)


def run_batch(consumer: Consumer, stream: IO[bytes]) -> int:
    """Read to the end, pass everything on, exit."""
    try:
        return read_batch(consumer.pipeline, stream)
    finally:
        consumer.close()


def run_follow(consumer: Consumer, path: Path, state_dir: Path) -> None:
    """Follow a file until interrupted."""
    name = path.name.replace("/", "_")
    follower = FileFollower(path, state_dir / f"{name}.offset")
    try:
        follower.run(consumer.pipeline)
    finally:
        consumer.close()


def create_consumer_app(
    inbox: Spool,
    heartbeat: Path | None = None,
    registry: Callable[[], Any] | None = None,
    max_body_bytes: int = 8 * 1024 * 1024,
    store: SqlStore | None = None,
    webhook_name: str = "exec.whoexec.io",
) -> Flask:
    """``POST /falco`` (Falco http_output, falcosidekick webhook, NDJSON batches), and with a
    store, ``POST /k8s-audit`` (audit webhook backend) and the ``/api/*`` readers."""
    app = Flask("whoexec-consumer")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    def _json(payload: object, status: int = 200) -> Response:
        return Response(orjson.dumps(payload), status=status, mimetype="application/json")

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
        from webhook.auditlog import AuditIngestor
        from webhook.store.writer import StoreWriter

        ingestor = AuditIngestor(StoreWriter(_store(), max_wait=5.0), webhook_name)
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
        from webhook.store import SessionQuery

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

    @app.post("/falco")
    def falco() -> Response:  # reached only past FalcoIntake (e.g. a mounted sub-app)
        status, reply = accept_lines(inbox, request.get_data(cache=False))
        return Response(reply, status=status, mimetype="application/json")

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

    app.wsgi_app = FalcoIntake(  # type: ignore[method-assign]
        inbox, app.wsgi_app, max_body_bytes, heartbeat=heartbeat
    )
    return app


INTAKE_REFUSED = Counter(
    "whoexec_consumer_intake_refused",
    "POST /falco bodies refused, by reason: nothing of them was accepted.",
    ["reason"],
)
#: rejected bodies are logged at most once per reason per 10 s, with the count skipped
_intake_log = RateLimitedLog(topic="intake")


class Refused(Exception):
    """A body the intake does not accept: its status, reason and message."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def accept_lines(
    inbox: Spool, body: bytes, max_lines: int = 10_000, locked_for: float = 10.0
) -> tuple[int, bytes]:
    """Append every JSON line of a body to the inbox; the HTTP status and a JSON reply.

    All or nothing: a body is durable in the inbox before the 200, or refused whole with
    503 (inbox full; the database stayed locked ``locked_for`` seconds) or 413 (more
    than ``max_lines`` lines), so a sender that retries never loses a line.
    """
    lines = [line for line in body.splitlines() if line.strip()]
    try:
        if len(lines) > max_lines:
            raise Refused(
                413, "too_many_lines", f"{len(lines)} lines in one body, over {max_lines}"
            )
        accepted: list[bytes] = []
        errors: list[str] = []
        for number, line in enumerate(lines, 1):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                errors.append(f"line {number}: not JSON: {exc}")
                continue
            accepted.append(line)
        _put_durably(inbox, accepted, locked_for)
    except Refused as refused:
        INTAKE_REFUSED.labels(refused.reason).inc()
        _intake_log.warn(refused.reason, f"POST /falco refused ({refused.status}): {refused}")
        return refused.status, orjson.dumps({"error": str(refused), "accepted": 0})
    if errors:
        SKIPPED.labels("not_json").inc(len(errors))
        _intake_log.warn("not_json", f"POST /falco: {len(errors)} of {len(lines)} lines not JSON")
    status = 400 if errors and not accepted else 200
    reply = {"accepted": len(accepted), "rejected": len(errors), "errors": errors[:5]}
    return status, orjson.dumps(reply)


def _put_durably(inbox: Spool, lines: list[bytes], locked_for: float) -> None:
    """Retry a locked inbox (other intake workers writing big bodies) instead of a 500."""
    deadline = time.monotonic() + locked_for
    delay = 0.01
    while True:
        try:
            inbox.put_many(lines)
            return
        except SpoolFull as exc:
            raise Refused(503, "inbox_full", f"{exc}; retry later") from None
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise Refused(503, "inbox_locked", "the inbox stayed locked; retry") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.5)


class FalcoIntake:
    """``POST /falco`` as a bare WSGI handler in front of Flask, which serves the rest.

    Falco posts every alert separately and waits for the answer; the intake is the
    consumer's hot path and Flask's request dispatch was most of its in-app cost
    (``bench/README.md``). Everything else (errors, other routes) stays in Flask.

    The body is read in chunks up to ``max_body_bytes``: a declared length over it is
    refused before anything is read, a chunked one as soon as it passes it. While the
    pipeline process has not run for ``stale_after`` seconds (its heartbeat), bodies are
    refused with 503: a 200 would promise what nothing behind the inbox is doing.
    """

    def __init__(
        self,
        inbox: Spool,
        fallback: Any,
        max_body_bytes: int,
        *,
        heartbeat: Path | None = None,
        stale_after: float = 30.0,
        max_lines: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.inbox = inbox
        self.fallback = fallback
        self.max_body_bytes = max_body_bytes
        self.heartbeat = heartbeat
        self.stale_after = stale_after
        self.max_lines = max_lines
        self.clock = clock
        self._started = clock()
        self._checked = (-1e18, "")

    def pipeline_problem(self) -> str:
        """Why nothing processes the inbox now, or "" (the heartbeat, looked at once a second)."""
        if self.heartbeat is None:
            return ""
        now = self.clock()
        if now - self._checked[0] < 1.0:
            return self._checked[1]
        try:
            age = now - self.heartbeat.stat().st_mtime
        except FileNotFoundError:
            age = now - self._started  # not started yet: give it the same grace
        problem = ""
        if age > self.stale_after:
            problem = f"the pipeline process has not run for {age:.0f}s"
        self._checked = (now, problem)
        return problem

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        if environ.get("PATH_INFO") != "/falco" or environ.get("REQUEST_METHOD") != "POST":
            return self.fallback(environ, start_response)
        declared = environ.get("CONTENT_LENGTH")
        if declared and not declared.isdigit():
            return self._refuse(start_response, Refused(400, "bad_length", "bad Content-Length"))
        if declared and int(declared) > self.max_body_bytes:
            return self._too_large(start_response)
        if problem := self.pipeline_problem():
            return self._refuse(start_response, Refused(503, "pipeline_down", problem))
        body = self._read(environ["wsgi.input"], int(declared) if declared else None)
        if body is None:
            return self._too_large(start_response)
        status, reply = accept_lines(self.inbox, body, self.max_lines)
        return self._send(start_response, status, reply)

    def _read(self, stream: Any, declared: int | None) -> bytes | None:
        """The body, read 64 KiB at a time; None once it passes the limit."""
        chunks: list[bytes] = []
        size = 0
        left = declared if declared is not None else self.max_body_bytes + 1
        while left > 0:
            chunk = stream.read(min(65536, left))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            left -= len(chunk)
            if size > self.max_body_bytes:
                return None
        return b"".join(chunks)

    def _too_large(self, start_response: Any) -> list[bytes]:
        limit = self.max_body_bytes
        return self._refuse(start_response, Refused(413, "too_large", f"body over {limit} bytes"))

    def _refuse(self, start_response: Any, refused: Refused) -> list[bytes]:
        INTAKE_REFUSED.labels(refused.reason).inc()
        _intake_log.warn(refused.reason, f"POST /falco refused ({refused.status}): {refused}")
        return self._send(start_response, refused.status, orjson.dumps({"error": str(refused)}))

    @staticmethod
    def _send(start_response: Any, status: int, reply: bytes) -> list[bytes]:
        reason = {
            200: "OK",
            400: "BAD REQUEST",
            413: "REQUEST ENTITY TOO LARGE",
            503: "SERVICE UNAVAILABLE",
        }[status]
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(reply)))]
        if status == 503:
            headers.append(("Retry-After", "5"))
        start_response(f"{status} {reason}", headers)
        return [reply]


def _run_pipeline_process(
    settings: Settings, use_stdout: bool, heartbeat: Path, stop: threading.Event
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
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gunicorn master decides when to stop
    consumer = build_consumer(
        settings, stdout=sys.stdout.buffer if use_stdout else None, input_name="http"
    )
    reader.append(
        InboxReader(
            consumer.pipeline, Spool(settings.state_dir / "inbox.db", wake_at=256), heartbeat
        )
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
    """HTTP intake workers (gunicorn) append to a durable inbox; one pipeline process reads it.

    The intake scales with ``--workers``; the process table is state, so attribution runs
    in exactly one process, started beside gunicorn and stopped after its workers.
    """
    from gunicorn.app.base import BaseApplication

    from webhook.wsgi import configure, multiprocess_registry

    load_key_ring(settings.identity_pub)  # fail before forking if the keys are unusable
    if settings.db:
        from webhook.store import open_store

        open_store(settings.db).close()  # unreachable or unusable: a clear error, now
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    heartbeat = settings.state_dir / "pipeline.alive"
    heartbeat.unlink(missing_ok=True)
    Spool(settings.state_dir / "inbox.db").close()  # create the schema once, up front
    metrics_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")

    class ConsumerApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            def child_exit(_server: Any, worker: Any) -> None:
                if metrics_dir:
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

            def on_exit(_server: Any) -> None:
                _stop_pipeline_process(pipeline_pid)
                if metrics_dir:
                    from prometheus_client import multiprocess

                    multiprocess.mark_process_dead(pipeline_pid)  # type: ignore[no-untyped-call]

            config: dict[str, Any] = {
                "bind": [settings.listen],
                "workers": settings.workers,
                "worker_class": "gthread",
                "threads": settings.threads,
                "keepalive": 120,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": settings.log_level,
                "timeout": 30,
                "graceful_timeout": 20,
                "proc_name": "whoexec-consumer",
                "child_exit": child_exit,
                "on_exit": on_exit,
            }
            if settings.tls_cert is not None:
                assert settings.tls_key is not None
                config["certfile"] = str(settings.tls_cert)
                config["keyfile"] = str(settings.tls_key)
                if settings.client_ca is not None:
                    config["ca_certs"] = str(settings.client_ca)
                    config["cert_reqs"] = ssl.CERT_REQUIRED
                tls = ReloadingContext(settings.tls_cert, settings.tls_key, settings.client_ca)
                config["ssl_context"] = lambda _conf, _default: tls.current()
            configure(self.cfg, config)

        def load(self) -> Flask:
            # in each worker, after fork: its own connections to the inbox and the store
            inbox = Spool(
                settings.state_dir / "inbox.db",
                max_items=settings.inbox_items,
                wake_at=256,
                refuse_when_full=True,
                busy_timeout=5.0,  # then accept_lines retries, and answers 503, never 500
            )
            store = None
            if settings.db:
                from webhook.store import open_store

                store = open_store(settings.db)
            return create_consumer_app(
                inbox,
                heartbeat,
                multiprocess_registry if metrics_dir else None,
                store=store,
                webhook_name=settings.webhook_name,
            )

    # A plain fork (not multiprocessing, whose bookkeeping gunicorn's workers would
    # inherit), before gunicorn binds its socket. gunicorn's workers leave through
    # SystemExit in this same frame, so cleanup is in the master's on_exit hook.
    pipeline_pid = os.fork()
    if pipeline_pid == 0:
        os._exit(_supervise_pipeline(settings, stdout is not None, heartbeat, metrics_dir))
    ConsumerApplication().run()


PIPELINE_RESTARTS = Counter(
    "whoexec_consumer_pipeline_restarts", "Times the pipeline process died and was restarted."
)


def _supervise_pipeline(
    settings: Settings, use_stdout: bool, heartbeat: Path, metrics_dir: str | None
) -> int:
    """Keep one pipeline process running; its exit status once told to stop.

    A pipeline process that dies (a defect, the OOM killer) is restarted, after 1 s, then
    2, 4... up to 30 s while it keeps dying; what it had not finished is still in the
    inbox. SIGTERM (from the gunicorn master's on_exit) is passed on, and the drained
    pipeline's status returned. If the master itself is gone, the pipeline is stopped too.
    """
    master = os.getppid()
    stop = threading.Event()
    child = 0

    def on_term(_signum: int, _frame: object) -> None:
        stop.set()
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

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
        while True:
            done, status = os.waitpid(child, os.WNOHANG)
            if done == child:
                break
            if not stop.is_set() and os.getppid() != master:
                log.error("the consumer's master process is gone; stopping the pipeline")
                on_term(signal.SIGTERM, None)
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
        except ChildProcessError:  # already reaped by gunicorn's SIGCHLD handler
            done = pid
        if done == pid:
            # gunicorn may have reaped it for us: make sure it is really gone
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
        time.sleep(0.05)
    log.error("the pipeline process %d did not stop in %.0fs; killing it", pid, timeout)
    os.kill(pid, signal.SIGKILL)
