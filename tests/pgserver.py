"""A throwaway PostgreSQL server from Debian's binaries, for the tests and bench/store.py."""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TcpAccess:
    """Also listen on ``address:port`` for the role ``whoexec`` with ``password``
    (scram-sha-256) from ``clients`` (a CIDR): the e2e cluster's pods reach it so."""

    address: str
    port: int
    clients: str
    password: str

    def url(self, database: str) -> str:
        return f"postgresql://whoexec:{self.password}@{self.address}:{self.port}/{database}"


def postgres_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(found[-1]).parent if found else None


@contextmanager
def throwaway_postgres(tcp: TcpAccess | None = None) -> Iterator[str]:
    """Start a server (as the `postgres` user when we are root, since PostgreSQL refuses
    to run as root); yield a superuser URL; stop and delete it.

    It listens on a unix socket in its own directory only, unless ``tcp`` says where
    else: no TCP port, so no two test runs (or a test and anything else on the machine)
    can race for one."""
    import psycopg

    bindir = postgres_bin()
    if bindir is None:
        raise RuntimeError(
            "PostgreSQL server binaries not found: `apt-get install postgresql` (as .ci/run "
            "does), or set WHOEXEC_TEST_POSTGRES_URL to a server that may create databases"
        )
    base = Path(tempfile.mkdtemp(prefix="whoexec-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data = base / "data"

    def run(*argv: str) -> None:
        subprocess.run([*as_user, *argv], check=True, capture_output=True, timeout=120)

    run(str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "whoexec", "--no-sync")
    listen = "-c listen_addresses=''"
    port = ""
    if tcp is not None:
        listen = f"-c listen_addresses='{tcp.address}' -p {tcp.port}"
        port = f"&port={tcp.port}"
        with (data / "pg_hba.conf").open("w") as hba:  # the socket as ever, TCP by password
            hba.write("local all all trust\n")
            hba.write(f"host all whoexec {tcp.clients} scram-sha-256\n")
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
        f"-k {base} {listen} -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
        "start",
    )
    try:
        url = f"postgresql://whoexec@/postgres?host={base}{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                psycopg.connect(url, connect_timeout=2).close()
                break
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        if tcp is not None:
            from psycopg import sql

            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(sql.SQL("ALTER ROLE whoexec PASSWORD {}").format(tcp.password))
        yield url
    finally:
        subprocess.run(
            [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
            capture_output=True,
            timeout=60,
            check=False,
        )
        shutil.rmtree(base, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urllib.parse.urlsplit(server_url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))
