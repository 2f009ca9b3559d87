"""Regenerate ``token-vectors.json``: `python tests/data/make_token_vectors.py`.

Shared test vectors for every verifier of the v1 token (``docs/token.md``): the Python
one (tests/test_token_vectors.py) and the Go one (e2e/tokenverifier). The key is new on
each run and only its public half is written.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webhook.identity import Identity, Signer, b64url_encode, sign_identity

HERE = Path(__file__).parent
NOW = 1795341600  # 2026-11-22T10:00:00Z
SKEW = 300


def raw_public(signer: Signer) -> str:
    raw = signer.public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def main() -> None:
    signer = Signer(Ed25519PrivateKey.generate())
    stranger = Signer(Ed25519PrivateKey.generate())
    alice = Identity(
        "0d3c4a8e-7f21-4b6a-9c55-1e2f3a4b5c6d",
        "alice@corp.example",
        "u-1",
        ("devs", "system:authenticated"),
        "shop",
        "web-0",
        "app",
        NOW - 10,
        pod_uid="c0ffee00-1111-4222-8333-444455556666",
    )

    def signed(payload: bytes, by: Signer = signer, kid: str | None = None) -> str:
        head = f"v1.{kid or by.kid}.{b64url_encode(payload)}"
        return f"{head}.{b64url_encode(by.private_key.sign(head.encode()))}"

    def payload_with(**changes: object) -> bytes:
        body = {**alice.to_payload(), **changes}
        body = {k: v for k, v in body.items() if v is not ...}
        return json.dumps(body, separators=(",", ":")).encode()

    good = sign_identity(alice, signer)
    head, sig = good.rsplit(".", 1)
    version, kid, body = head.split(".")
    valid = [
        {"name": "alice with groups and pod uid", "token": good, "payload": alice.to_payload()},
        {
            "name": "no pod uid, empty container, truncated groups",
            "token": signed(payload_with(pod_uid=..., container="", trunc=True, groups=[])),
            "payload": json.loads(payload_with(pod_uid=..., container="", trunc=True, groups=[])),
        },
        {
            "name": "issued within the allowed skew ahead of now",
            "token": signed(payload_with(iat=NOW + SKEW)),
            "payload": json.loads(payload_with(iat=NOW + SKEW)),
        },
    ]
    flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
    invalid = [
        ("bad signature", f"{head}.{flipped}", "bad_signature"),
        ("signed by an unknown key", signed(payload_with(), by=stranger), "unknown_kid"),
        (
            "kid of a trusted key, signed by another",
            signed(payload_with(), by=stranger, kid=kid),
            "bad_signature",
        ),
        ("padding in the payload", f"{version}.{kid}.{body}==.{sig}", "malformed"),
        ("non-canonical trailing bits in the signature", f"{head}.{sig[:-1]}B", "malformed"),
        (
            "standard base64 alphabet",
            f"{head}.{sig.replace('-', '+').replace('_', '/')}+",
            "malformed",
        ),
        ("three parts", f"{version}.{kid}.{body}", "malformed"),
        ("version v2", f"v2.{kid}.{body}.{sig}", "malformed"),
        ("uppercase kid", f"{version}.{kid.upper()}.{body}.{sig}", "malformed"),
        ("short signature", f"{head}.{sig[:40]}", "malformed"),
        ("oversize", signed(payload_with(user="x" * 900)), "malformed"),
        ("issued in the future", signed(payload_with(iat=NOW + SKEW + 1)), "from_future"),
        ("missing sid", signed(payload_with(sid=...)), "malformed"),
        ("empty user", signed(payload_with(user="")), "malformed"),
        ("iat as a string", signed(payload_with(iat=str(NOW))), "malformed"),
        ("iat as a boolean", signed(payload_with(iat=True)), "malformed"),
        ("iat as a float", signed(payload_with(iat=NOW + 0.5)), "malformed"),
        ("groups not a list", signed(payload_with(groups="devs")), "malformed"),
        ("a group not a string", signed(payload_with(groups=["devs", 7])), "malformed"),
        ("trunc false", signed(payload_with(trunc=False)), "malformed"),
        ("unknown key", signed(payload_with(admin=True)), "malformed"),
        ("payload not an object", signed(b'["sid"]'), "malformed"),
        ("payload not UTF-8", signed(b'{"sid":"\xff"}'), "malformed"),
    ]
    s = 1_000_000_000
    roots = [
        ("started at iat", NOW, NOW * s, "fresh"),
        ("started 30 s after iat (the edge)", NOW, (NOW + 30) * s, "fresh"),
        ("started 31 s after iat", NOW, (NOW + 31) * s, "stale"),
        ("started three hours after iat", NOW, (NOW + 3 * 3600) * s, "stale"),
        ("started 5 s before iat (clock skew)", NOW, (NOW - 5) * s, "fresh"),
        ("started 6 s before iat", NOW, (NOW - 6) * s, "stale"),
    ]
    # (sid, container, host, pid, first?): a root is (host, pid, start); same start for all
    claims = [
        ("s1", "app", "node-a", 100, True),
        ("s1", "app", "node-a", 100, True),  # the same root again: still the first
        ("s1", "app", "node-b", 100, False),
        ("s1", "app", "node-a", 101, False),
        ("s1", "debugger", "node-a", 102, True),  # kubectl debug: one root per container
        ("s2", "app", "node-a", 101, True),
    ]
    single_use = {
        "name": "one session id roots one process per container",
        "claims": [
            {"sid": sid, "container": c, "host": h, "pid": pid, "start_ns": NOW * s, "first": f}
            for sid, c, h, pid, f in claims
        ],
    }
    vectors = {
        "comment": "whoexec v1 identity token test vectors; see docs/token.md. Regenerate with "
        "tests/data/make_token_vectors.py.",
        "keys": {signer.kid: raw_public(signer)},
        "now": NOW,
        "skew_seconds": SKEW,
        "fresh_seconds": 30,
        "root_skew_seconds": 5,
        "valid": valid,
        "invalid": [{"name": n, "token": t, "error": e} for n, t, e in invalid],
        "roots": [
            {"name": n, "iat": iat, "root_start_ns": start, "decision": d}
            for n, iat, start, d in roots
        ],
        "single_use": single_use,
    }
    (HERE / "token-vectors.json").write_text(json.dumps(vectors, indent=1) + "\n")
    print(f"wrote {len(valid)} valid and {len(invalid)} invalid tokens (kid {signer.kid})")


if __name__ == "__main__":
    main()
