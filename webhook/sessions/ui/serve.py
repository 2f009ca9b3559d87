"""``whoexec ui`` under gunicorn (adapter): read-only workers over the session store."""

from __future__ import annotations

from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication

from webhook.serving import configure
from webhook.settings import Settings
from webhook.tls import ReloadingContext


def serve_ui(settings: Settings, workers: int = 2, threads: int = 4) -> None:
    from webhook.sessions.store import open_store

    open_store(settings.db).close()  # unreachable or unusable: a clear error, now

    class UiApplication(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            config: dict[str, Any] = {
                "bind": [settings.ui_bind],
                "workers": workers,
                "worker_class": "gthread",
                "threads": threads,
                "accesslog": None,
                "errorlog": "-",
                "loglevel": settings.log_level,
                "timeout": 30,
                "graceful_timeout": 10,
                "proc_name": "whoexec-ui",
            }
            if settings.tls_cert is not None:
                assert settings.tls_key is not None
                config["certfile"] = str(settings.tls_cert)
                config["keyfile"] = str(settings.tls_key)
                tls = ReloadingContext(settings.tls_cert, settings.tls_key, None)
                config["ssl_context"] = lambda _conf, _default: tls.current()
            configure(self.cfg, config)

        def load(self) -> Flask:
            from webhook.sessions.store import open_store
            from webhook.sessions.ui.app import create_ui_app
            from webhook.sessions.ui.sessions import UiSessions

            sessions = None
            if settings.ui_token:  # shared by the workers: signing out in one is for all
                sessions = UiSessions(
                    settings.state_dir / "ui-sessions.db",
                    settings.ui_token,
                    settings.ui_session_seconds,
                )
            # in each worker, after fork: its own connection to the store
            return create_ui_app(open_store(settings.db), settings.ui_token, sessions)

    UiApplication().run()
