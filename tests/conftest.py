from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from webhook.identity import Signer, key_ring

DATA = Path(__file__).parent / "data"
#: a fixed "now" for the pure core: 2026-11-22T10:00:00Z
NOW = 1795341600


def load_json(relative: str) -> Any:
    return json.loads((DATA / relative).read_text())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def trusted(signer: Signer) -> dict[str, Ed25519PublicKey]:
    return key_ring([signer.public_key])


# --- a real PostgreSQL for the store tests ------------------------------------------------


def _postgres_bin() -> Path | None:
    import glob

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's binaries), or WHOEXEC_TEST_POSTGRES_URL.

    The PostgreSQL tests are never skipped: without a server they fail and say how to get
    one (`.ci/run` installs Debian's `postgresql` package).
    """
    import os
    import shutil
    import subprocess
    import tempfile
    import time

    if url := os.environ.get("WHOEXEC_TEST_POSTGRES_URL"):
        yield url
        return
    bindir = _postgres_bin()
    if bindir is None:
        pytest.fail(
            "PostgreSQL server binaries not found: `apt-get install postgresql` (as .ci/run "
            "does), or set WHOEXEC_TEST_POSTGRES_URL to a server the tests may create "
            "databases on"
        )
    base = Path(tempfile.mkdtemp(prefix="whoexec-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # PostgreSQL refuses to run as root
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = base / "data"

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "whoexec", "--no-sync")
    run(
        str(bindir / "pg_ctl"),
        "-D",
        str(data),
        "-l",
        str(base / "log"),
        "-w",
        "-t",
        "60",
        "-o",
        f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c full_page_writes=off -c synchronous_commit=off",
        "start",
    )
    try:
        deadline = time.monotonic() + 30
        url = f"postgresql://whoexec@127.0.0.1:{port}/postgres"
        import psycopg

        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the test server."""
    import uuid

    import psycopg

    name = f"whoexec_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return postgres_server.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/whoexec.db"
    return str(request.getfixturevalue("postgres_url"))
