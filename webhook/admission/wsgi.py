"""Running the webhook under gunicorn (adapter behind ``whoexec serve``).

kube-apiserver talks HTTP/1.1 with keep-alive to webhooks. gunicorn's default ``sync``
worker closes every connection, so every admission would pay a full TLS handshake. The
worker is :class:`webhook.admission.gworker.DeadlineWorker` (gevent: a slow client holds a
greenlet, not a thread, and meets a deadline; issue #21). The idle keep-alive outlasts
Go's default ``IdleConnTimeout`` (90 s) so the server never closes a connection the
apiserver is about to reuse.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

from webhook.admission.decide import AdmissionPolicy
from webhook.errors import ConfigError
from webhook.keyfiles import IDENTITY_KEY, TLS_CERT, TLS_KEY
from webhook.serving import configure, multiprocess_registry, raise_open_files_limit
from webhook.settings import Settings

KEEPALIVE_SECONDS = 120


def admission_policy(settings: Settings) -> AdmissionPolicy:
    """The admission core's policy, from the settings."""
    return AdmissionPolicy(
        identity_variable=settings.identity_variable,
        env_path=settings.env_path,
        exclude_namespaces=settings.exclude_namespaces,
        exclude_users=settings.exclude_users,
        exclude_groups=settings.exclude_groups,
        clock_skew_seconds=settings.clock_skew_seconds,
        env_volume_path=settings.env_volume_path,
        images_without_env=settings.images_without_env,
        env_trusted_namespaces=settings.env_trusted_namespaces,
        env_trusted_images=settings.env_trusted_images,
        static_env_cpu=settings.static_env_cpu,
        static_env_memory=settings.static_env_memory,
        static_env_image=settings.static_env_image,
    )


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
        from webhook.keyfiles import load_webhook_keys

        settings = self.settings
        signer, trusted = load_webhook_keys(settings.certs, settings.trusted_keys)
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
                api_client(settings.kube),
                lookup_timeout=settings.pod_lookup_timeout,
            )
        state = WebhookState(
            policy=admission_policy(settings),
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
