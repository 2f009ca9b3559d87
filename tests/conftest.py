from __future__ import annotations

import http.client
import json
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import settings

from webhook.identity import Signer, key_ring

# Tests never time things: Hypothesis's default deadline (200 ms an example) can fail a
# fuzz test on a loaded machine for no defect. A mutation run (tools/mutation.py) also
# derandomizes, so that a mutant is killed or not the same way in every run (#14)
settings.register_profile("whoexec", deadline=None)
settings.register_profile("mutation", deadline=None, derandomize=True, database=None)
settings.load_profile(os.environ.get("WHOEXEC_HYPOTHESIS_PROFILE", "whoexec"))

DATA = Path(__file__).parent / "data"
#: a fixed "now" for the pure core: 2026-11-22T10:00:00Z
NOW = 1795341600


def load_json(relative: str) -> Any:
    return json.loads((DATA / relative).read_text())


def issue_client_certificate(certs: Path) -> None:
    """``client.crt``/``client.key`` in ``certs`` (made by ``whoexec certs``), signed by its
    CA for client authentication, as Falco's http_output presents one to an mTLS intake."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from webhook.admission.certs import issue_serving_certificate

    ca_key = serialization.load_pem_private_key((certs / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((certs / "ca.crt").read_bytes())
    cert, key = issue_serving_certificate(
        ca,
        ca_key,  # type: ignore[arg-type]
        ("falco",),
        datetime.datetime.now(datetime.UTC),
        1,
        client=True,
    )
    (certs / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (certs / "client.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def http_ok(connect: Callable[[], http.client.HTTPConnection], path: str) -> bool:
    """GET ``path`` answers 200 (False while the server is not up yet)."""
    conn = connect()
    try:
        conn.request("GET", path)
        return conn.getresponse().status == 200
    except OSError:  # refused, reset, or TLS not ready (ssl.SSLError is an OSError)
        return False
    finally:
        conn.close()


#: every process the tests start inherits this, even one that detaches from its parent
RUN_MARKER = f"TEST_RUN_OF_WHOEXEC={uuid.uuid4().hex}"


@pytest.fixture(autouse=True)
def state_dir_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command run without --state-dir keeps its offsets and dead letters in the test's
    own folder, not in ./whoexec-state of whoever runs the tests."""
    monkeypatch.setenv("WHOEXEC_STATE_DIR", str(tmp_path / "whoexec-state"))


@pytest.fixture(scope="session", autouse=True)
def no_process_outlives_the_tests() -> Iterator[None]:
    """Fails the run if anything a test started is still running at the end: a server,
    a forked pipeline, a cluster component. Set up first, so it is checked last."""
    from .servers import descendants_and_marked, kill_all

    name, value = RUN_MARKER.split("=")
    os.environ[name] = value
    yield
    if "mutmut" in sys.modules:  # its forked workers are this process's children
        return
    deadline = time.monotonic() + 10  # what was just told to stop may still be exiting
    while (left := descendants_and_marked(RUN_MARKER, os.getpid())) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.1)
    kill_all(left)
    assert not left, "processes the tests started are still running:\n" + "\n".join(
        f"  {pid} {cmd}" for pid, cmd in left
    )


@pytest.fixture(scope="session")
def signer() -> Signer:
    return Signer(Ed25519PrivateKey.generate())


@pytest.fixture(scope="session")
def trusted(signer: Signer) -> dict[str, Ed25519PublicKey]:
    return key_ring([signer.public_key])


# --- a real PostgreSQL for the store tests ------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's binaries), or WHOEXEC_TEST_POSTGRES_URL.

    The PostgreSQL tests are never skipped: without a server they fail and say how to get
    one (`.ci/run` installs Debian's `postgresql` package).
    """
    import os

    from .pgserver import postgres_bin, throwaway_postgres

    if url := os.environ.get("WHOEXEC_TEST_POSTGRES_URL"):
        yield url
        return
    if postgres_bin() is None:
        pytest.fail(
            "PostgreSQL server binaries not found: `apt-get install postgresql` (as .ci/run "
            "does), or set WHOEXEC_TEST_POSTGRES_URL to a server that may create databases"
        )
    with throwaway_postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_server: str) -> str:
    """A fresh, empty database on the test server."""
    import uuid

    from .pgserver import create_database

    return create_database(postgres_server, f"whoexec_{uuid.uuid4().hex[:12]}")


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/whoexec.db"
    return str(request.getfixturevalue("postgres_url"))
