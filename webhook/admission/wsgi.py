"""Running the webhook under gunicorn (adapter behind ``whoexec serve``).

kube-apiserver talks HTTP/1.1 with keep-alive to webhooks. gunicorn's default ``sync``
worker closes every connection, so every admission would pay a full TLS handshake. The
worker is :class:`webhook.admission.gworker.DeadlineWorker` (gevent: a slow client holds a
greenlet, not a thread, and meets a deadline; issue #21). The idle keep-alive outlasts
Go's default ``IdleConnTimeout`` (90 s) so the server never closes a connection the
apiserver is about to reuse.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import shutil
import tempfile
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from webhook.errors import ConfigError
from webhook.keyfiles import IDENTITY_KEY, IDENTITY_PUB, TLS_CERT, TLS_KEY
from webhook.settings import Settings

KEEPALIVE_SECONDS = 120


def prepare_metrics_dir(workers: int, directory: Path | None = None) -> Path | None:
    """Point prometheus-client at a shared directory when several processes serve /metrics.

    Must run before ``prometheus_client`` is first imported: the library picks its value
    class from ``PROMETHEUS_MULTIPROC_DIR`` at import time. With ``directory`` (the
    consumer's state dir), what a killed run left there is wiped first, and nothing is
    left in /tmp; without it, a temporary directory is removed when this process exits.
    """
    if workers < 2:
        return None
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
        directory.mkdir(parents=True, mode=0o700)
    else:
        directory = Path(tempfile.mkdtemp(prefix="whoexec-metrics-"))
        creator = os.getpid()

        def remove() -> None:
            if os.getpid() == creator:  # not in a forked worker that exits first
                shutil.rmtree(directory, ignore_errors=True)

        atexit.register(remove)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def raise_open_files_limit(wanted: int) -> int:
    """Raise this process's soft limit of open files towards ``wanted`` (at most the
    hard limit); the limit now in force. Containers often start with 1024."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
    return soft


def multiprocess_registry() -> Any:
    """A /metrics registry that sums the metrics of every gunicorn worker process."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def configure(cfg: Any, config: dict[str, Any]) -> None:
    """Apply settings to a gunicorn config, with what every whoexec server needs."""
    # gunicorn >= 25.1 opens a control socket under $HOME; a read-only root filesystem
    # has no place for it, and whoexec does not use it
    if "control_socket_disable" in cfg.settings:
        config = {**config, "control_socket_disable": True}
    for key, value in config.items():
        cfg.set(key, value)


class WebhookApplication(BaseApplication):  # type: ignore[misc]
    """gunicorn with the Flask app loaded once in the master (keys are read before fork)."""

    def __init__(self, settings: Settings, metrics_dir: Path | None) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir
        certs = settings.certs
        for name in (TLS_CERT, TLS_KEY, IDENTITY_KEY):
            if not (certs / name).is_file():
                raise ConfigError(
                    f"{certs / name} is missing; run `whoexec certs --out {certs}` first"
                )
        from webhook.tls import ReloadingContext

        def tls_factory() -> ReloadingContext:
            return ReloadingContext(certs / TLS_CERT, certs / TLS_KEY)

        #: the worker makes its own after gevent has patched ``ssl`` (DeadlineWorker.patch)
        self.tls_factory = tls_factory
        self.tls = tls_factory()
        self.application = self._build_app()
        super().__init__()

    def _build_app(self) -> Any:
        from webhook.admission.server import WebhookState, create_app
        from webhook.keyfiles import load_key_ring, load_signer

        settings = self.settings
        signer = load_signer(settings.certs / IDENTITY_KEY)
        trusted = {signer.kid: signer.public_key}
        extra = list(settings.trusted_keys)
        if (settings.certs / IDENTITY_PUB).is_file():
            extra.append(settings.certs / IDENTITY_PUB)
        if extra:
            trusted.update(load_key_ring(extra))
        registry = multiprocess_registry if self.metrics_dir is not None else None
        tls = self.tls

        def readiness() -> str | None:
            try:
                tls.current()
            except OSError as exc:  # pragma: no cover - current() keeps the last context
                return f"TLS certificate unavailable: {exc.strerror}"
            return None

        self.pods = None
        if settings.kube:
            from webhook.admission.podcache import PodCache, api_client

            # built here, started in each worker after fork (threads do not survive fork)
            self.pods = PodCache(
                api_client(settings.kube, settings.pod_lookup_timeout),
                lookup_timeout=settings.pod_lookup_timeout,
            )
        state = WebhookState(
            policy=settings.admission_policy,
            signer=signer,
            trusted_keys=trusted,
            max_body_bytes=settings.max_body_bytes,
            readiness=readiness,
            registry=registry,
            pods=self.pods,
        )
        return create_app(state)

    def load_config(self) -> None:
        metrics_dir = self.metrics_dir

        def child_exit(_server: Any, worker: Any) -> None:
            if metrics_dir is not None:
                from prometheus_client import multiprocess

                multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]

        pods = self.pods

        def post_worker_init(_worker: Any) -> None:
            # in each worker, once gevent has patched sockets (threads do not survive
            # fork, and a socket made before the patch would block the worker)
            if pods is not None:
                pods.start()

        def on_exit(_server: Any) -> None:
            if metrics_dir is not None:
                shutil.rmtree(metrics_dir, ignore_errors=True)

        s = self.settings
        # a connection is a descriptor: the cap of every worker, and some to spare
        raise_open_files_limit(s.workers * s.worker_connections + 256)
        config = {
            "bind": [s.bind],
            "workers": s.workers,
            "worker_class": "webhook.admission.gworker.DeadlineWorker",
            "worker_connections": s.worker_connections,
            "keepalive": KEEPALIVE_SECONDS,
            "certfile": str(s.certs / TLS_CERT),
            "keyfile": str(s.certs / TLS_KEY),
            "child_exit": child_exit,
            "post_worker_init": post_worker_init,
            "on_exit": on_exit,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": s.log_level,
            "timeout": 30,
            "graceful_timeout": 20,
            "proc_name": "whoexec-webhook",
        }
        configure(self.cfg, config)

    def load(self) -> Any:
        return self.application
