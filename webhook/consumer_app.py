"""``whoexec consume``: wiring, the HTTP intake (Flask under gunicorn), and the run loops.

Falco's ``http_output`` makes one synchronous POST per alert and ignores the status; it
drops the alert after repeated timeouts. So ``POST /falco`` only appends the body to a
durable inbox and answers at once; a single pipeline thread does the attribution. The
process table is state, so the HTTP server runs one gunicorn worker (with threads).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import orjson
from flask import Flask, Response, request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from webhook.consumer import (
    FileFollower,
    FileSink,
    ForwardSink,
    Inbox,
    Pipeline,
    Sink,
    StreamSink,
    read_batch,
)
from webhook.errors import ConfigError
from webhook.keyfiles import load_key_ring
from webhook.lineage import Attributor, ProcessTable, TokenVerifier
from webhook.settings import Settings
from webhook.spool import Spool

log = logging.getLogger("whoexec.consumer")


@dataclass
class Consumer:
    """A pipeline with its sinks, built from settings."""

    pipeline: Pipeline
    sinks: list[Sink]
    closers: list[Callable[[], None]] = field(default_factory=list)

    def close(self) -> None:
        self.pipeline.close()
        for closer in self.closers:
            closer()


def build_consumer(
    settings: Settings,
    *,
    stdout: IO[bytes] | None,
    input_name: str,
    extra_sinks: list[Sink] | None = None,
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
    attributor = Attributor(
        verifier,
        ProcessTable(settings.max_processes),
        variable=settings.identity_variable,
        hold_seconds=settings.hold_seconds,
        lineage_source=lineage_source,
    )
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
    pipeline = Pipeline(
        attributor, sinks, forward_roots=settings.forward_roots, input_name=input_name
    )
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


def create_consumer_app(inbox: Inbox, max_body_bytes: int = 8 * 1024 * 1024) -> Flask:
    """``POST /falco`` (Falco http_output, falcosidekick webhook, NDJSON batches)."""
    app = Flask("whoexec-consumer")
    app.config["MAX_CONTENT_LENGTH"] = max_body_bytes

    @app.post("/falco")
    def falco() -> Response:
        body = request.get_data(cache=False)
        lines = [line for line in body.splitlines() if line.strip()]
        accepted: list[bytes] = []
        errors: list[str] = []
        for number, line in enumerate(lines, 1):
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                errors.append(f"line {number}: not JSON: {exc}")
                continue
            accepted.append(line)
        inbox.accept(accepted)
        if errors:
            inbox.pipeline.stats["skipped_not_json"] += len(errors)
            log.warning("POST /falco: %d of %d lines were not JSON", len(errors), len(lines))
        status = 400 if errors and not accepted else 200
        payload = {"accepted": len(accepted), "rejected": len(errors), "errors": errors[:5]}
        return Response(orjson.dumps(payload), status=status, mimetype="application/json")

    @app.get("/healthz")
    def healthz() -> Response:
        return Response(b'{"status":"ok"}', mimetype="application/json")

    @app.get("/readyz")
    def readyz() -> Response:
        return Response(b'{"status":"ready"}', mimetype="application/json")

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(), mimetype=CONTENT_TYPE_LATEST)

    return app


def serve_consumer(settings: Settings, stdout: IO[bytes] | None) -> None:
    """Run the HTTP intake under gunicorn: one worker (the process table is state)."""
    from gunicorn.app.base import BaseApplication

    state: dict[str, Any] = {}

    class ConsumerApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            config: dict[str, Any] = {
                "bind": [settings.listen],
                "workers": 1,
                "worker_class": "gthread",
                "threads": settings.threads,
                "keepalive": 120,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": settings.log_level,
                "timeout": 30,
                "graceful_timeout": 20,
                "proc_name": "whoexec-consumer",
                "worker_exit": lambda _server, _worker: (
                    state["inbox"].close() if "inbox" in state else None
                ),
            }
            if settings.tls_cert is not None:
                config["certfile"] = str(settings.tls_cert)
                config["keyfile"] = str(settings.tls_key)
                if settings.client_ca is not None:
                    import ssl

                    config["ca_certs"] = str(settings.client_ca)
                    config["cert_reqs"] = ssl.CERT_REQUIRED

                from webhook.tls import ReloadingContext

                assert settings.tls_key is not None
                tls = ReloadingContext(settings.tls_cert, settings.tls_key, settings.client_ca)
                config["ssl_context"] = lambda _conf, _default: tls.current()
            if "control_socket_disable" in self.cfg.settings:
                config["control_socket_disable"] = True
            for key, value in config.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            # runs in the worker, after fork: the pipeline thread lives there
            consumer = build_consumer(settings, stdout=stdout, input_name="http")
            spool = Spool(settings.state_dir / "inbox.db")
            inbox = Inbox(consumer.pipeline, spool)
            inbox.start()
            state["inbox"] = inbox
            return create_consumer_app(inbox)

    ConsumerApplication().run()


def stdout_stream() -> IO[bytes]:
    return sys.stdout.buffer
