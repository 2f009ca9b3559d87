"""Fixtures of the e2e suite: the real cluster and the real webhook, once per session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import (
    BIN,
    WHOEXEC,
    Cluster,
    Webhook,
    install_webhook,
    start_cluster,
    stop_cluster,
    token_from_environ,
)

__all__ = ["BIN", "WHOEXEC", "Cluster", "Webhook", "token_from_environ"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """whoexec installed into the cluster (test_installed.py) replaces the host webhook's
    configuration: those tests run last, the others keep their order."""
    items.sort(key=lambda item: item.get_closest_marker("installed") is not None)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    where = Path(f"/tmp/wx-{os.getpid()}")  # short: containerd's unix sockets live in it
    try:
        try:
            started = start_cluster(where)
        except RuntimeError as exc:
            pytest.fail(str(exc))
        yield started
    finally:
        stop_cluster(where)


@pytest.fixture(scope="session")
def webhook(cluster: Cluster) -> Iterator[Webhook]:
    try:
        hook = install_webhook(cluster)
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield hook
    finally:
        hook.close()
