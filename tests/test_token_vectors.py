"""The shared token vectors (tests/data/token-vectors.json), as every verifier must read them.

The Go verifier in e2e/tokenverifier passes the same file (``go test ./tokenverifier``).
"""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from webhook.attribution.lineage import (
    MemoryRootClaims,
    ReplayPolicy,
    SessionRoot,
    freshness_problem,
)
from webhook.errors import BadSignature, TokenFromFuture, TokenMalformed, UnknownKeyId
from webhook.identity import verify_token

from .conftest import DATA

VECTORS = json.loads((DATA / "token-vectors.json").read_text())
KEYS = {
    kid: Ed25519PublicKey.from_public_bytes(base64.b64decode(raw))
    for kid, raw in VECTORS["keys"].items()
}
ERRORS = {
    "malformed": TokenMalformed,
    "unknown_kid": UnknownKeyId,
    "bad_signature": BadSignature,
    "from_future": TokenFromFuture,
}
POLICY = ReplayPolicy(VECTORS["fresh_seconds"], VECTORS["root_skew_seconds"])


@pytest.mark.parametrize("vector", VECTORS["valid"], ids=lambda v: v["name"])
def test_valid_vectors_verify_to_their_payload(vector):
    identity = verify_token(vector["token"], KEYS, VECTORS["now"], VECTORS["skew_seconds"])
    assert identity.to_payload() == vector["payload"]


@pytest.mark.parametrize("vector", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vectors_are_refused_with_their_error(vector):
    with pytest.raises(ERRORS[vector["error"]]):
        verify_token(vector["token"], KEYS, VECTORS["now"], VECTORS["skew_seconds"])


def test_every_kind_of_refusal_has_a_vector():
    assert {v["error"] for v in VECTORS["invalid"]} == set(ERRORS)


@pytest.mark.parametrize("vector", VECTORS["roots"], ids=lambda v: v["name"])
def test_root_freshness_vectors(vector):
    problem = freshness_problem(vector["iat"], vector["root_start_ns"], POLICY)
    assert ("stale" if problem else "fresh") == vector["decision"]


def test_single_use_vectors():
    claims = MemoryRootClaims()
    for claim in VECTORS["single_use"]["claims"]:
        root = SessionRoot(claim["host"], claim["pid"], claim["start_ns"])
        holder = claims.claim(claim["sid"], claim["container"], root)
        assert (holder == root) is claim["first"], claim
