from __future__ import annotations

import json
import socket
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
