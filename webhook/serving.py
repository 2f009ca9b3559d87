"""What every whoexec server under gunicorn shares (adapter): the metrics of several
worker processes, the open-files limit, and the gunicorn settings they all need.

Used by the webhook (``whoexec serve``), the consumer (``whoexec consume --listen``) and
the session explorer (``whoexec ui``). It imports ``prometheus_client`` only when called:
see :func:`prepare_metrics_dir`.
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
