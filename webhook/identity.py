"""The identity token: an Ed25519-signed assertion of who opened an exec session.

Pure core: no IO, no environment, no clock (``now`` is always passed in). The format is
specified in ``docs/token.md`` so that other verifiers can interoperate::

    token     = "v1." kid "." b64url(payload) "." b64url(signature)
    signature = Ed25519(private_key, ASCII("v1." kid "." b64url(payload)))
    kid       = lowercase hex of SHA-256(raw 32-byte public key)[:16 hex chars]

The token is not a secret: it shows up in ``/proc/<pid>/environ`` and in the apiserver's
audit annotations. It is a signed statement, never a credential.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from webhook.errors import (
    BadSignature,
    TokenFromFuture,
    TokenMalformed,
    TokenTooLarge,
    UnknownKeyId,
)

VERSION = "v1"
#: Every token is strictly shorter than this many bytes.
MAX_TOKEN_BYTES = 1024
#: How far ``iat`` may lie ahead of the verifier's clock before the token is refused.
DEFAULT_CLOCK_SKEW_SECONDS = 300

_SIGNATURE_B64_LEN = 86  # 64 bytes of Ed25519 signature, base64url without padding
_KID_RE = re.compile(r"[0-9a-f]{16}")
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")
_REQUIRED_KEYS = frozenset({"sid", "user", "uid", "groups", "ns", "pod", "container", "iat"})
_OPTIONAL_KEYS = frozenset({"pod_uid", "trunc"})


@dataclass(frozen=True, slots=True)
class Identity:
    """Who opened an exec session, and where. ``groups_truncated`` maps to ``trunc``."""

    session_id: str
    user: str
    uid: str
    groups: tuple[str, ...]
    namespace: str
    pod: str
    container: str
    issued_at: int
    pod_uid: str | None = None
    groups_truncated: bool = False

    def to_payload(self) -> dict[str, Any]:
        """The token payload, keys in their documented order."""
        payload: dict[str, Any] = {
            "sid": self.session_id,
            "user": self.user,
            "uid": self.uid,
            "groups": list(self.groups),
            "ns": self.namespace,
            "pod": self.pod,
            "container": self.container,
            "iat": self.issued_at,
        }
        if self.pod_uid is not None:
            payload["pod_uid"] = self.pod_uid
        if self.groups_truncated:
            payload["trunc"] = True
        return payload

    def is_bound_to(self, namespace: str, pod: str, container: str) -> bool:
        """Whether the token was minted for this namespace, pod and container."""
        return (self.namespace, self.pod, self.container) == (namespace, pod, container)


@dataclass(frozen=True, slots=True)
class Signer:
    """A private identity key with its key id, computed once."""

    private_key: Ed25519PrivateKey
    kid: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kid", key_id(self.private_key.public_key()))

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()


def key_id(public_key: Ed25519PublicKey) -> str:
    """The first 16 lowercase hex characters of SHA-256 over the raw public key."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def key_ring(public_keys: Iterable[Ed25519PublicKey]) -> dict[str, Ed25519PublicKey]:
    """Index trusted public keys by key id, for :func:`verify_token`."""
    return {key_id(key): key for key in public_keys}


def b64url_encode(data: bytes) -> str:
    """RFC 4648 base64url without padding."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str, what: str) -> bytes:
    """Strict inverse of :func:`b64url_encode`; rejects padding and stray characters."""
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise TokenMalformed(f"token {what} is not unpadded base64url")
    try:
        data = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:  # pragma: no cover - regex guards this
        raise TokenMalformed(f"token {what} is not unpadded base64url") from exc
    if b64url_encode(data) != text:
        raise TokenMalformed(f"token {what} is not canonical base64url")
    return data


def _compact(payload: Mapping[str, Any] | list[str]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _b64_len(n_bytes: int) -> int:
    return (4 * n_bytes + 2) // 3


def _token_len(kid: str, payload_bytes: int) -> int:
    return len(VERSION) + 1 + len(kid) + 1 + _b64_len(payload_bytes) + 1 + _SIGNATURE_B64_LEN


def fit_identity(identity: Identity, kid: str) -> Identity:
    """Cut ``groups`` to the longest prefix that keeps the token under the byte budget.

    The caller's groups are kept in the order the apiserver sent them; when some must go,
    the tail is dropped and ``groups_truncated`` is set. Raises :class:`TokenTooLarge` when
    even an empty group list does not fit (for example a multi-kilobyte user name).
    """
    if _token_len(kid, len(_compact(identity.to_payload()))) < MAX_TOKEN_BYTES:
        return identity
    bare = replace(identity, groups=(), groups_truncated=True)
    size = len(_compact(bare.to_payload()))
    if _token_len(kid, size) >= MAX_TOKEN_BYTES:
        raise TokenTooLarge(
            f"identity of user {identity.user[:64]!r} does not fit in {MAX_TOKEN_BYTES} bytes "
            "even without groups"
        )
    kept: list[str] = []
    for group in identity.groups:
        # each kept group costs its JSON string plus a separating comma (none for the first)
        cost = len(_compact([group])) - 2 + (1 if kept else 0)
        if _token_len(kid, size + cost) >= MAX_TOKEN_BYTES:
            break
        kept.append(group)
        size += cost
    return replace(identity, groups=tuple(kept), groups_truncated=True)


def sign_identity(identity: Identity, signer: Signer) -> str:
    """Mint a token for ``identity``; groups are cut to fit (see :func:`fit_identity`)."""
    fitted = fit_identity(identity, signer.kid)
    signed_part = f"{VERSION}.{signer.kid}.{b64url_encode(_compact(fitted.to_payload()))}"
    signature = signer.private_key.sign(signed_part.encode("ascii"))
    return f"{signed_part}.{b64url_encode(signature)}"


def token_key_id(token: str) -> str | None:
    """The ``kid`` a token claims, without verifying anything; None if it has none."""
    parts = token.split(".")
    if len(parts) == 4 and parts[0] == VERSION and _KID_RE.fullmatch(parts[1]):
        return parts[1]
    return None


def verify_token(
    token: str,
    keys: Mapping[str, Ed25519PublicKey],
    now: int,
    max_skew: int = DEFAULT_CLOCK_SKEW_SECONDS,
) -> Identity:
    """Check a token's format and signature and return the identity it asserts.

    ``keys`` maps key ids to trusted public keys (several during a rotation). Tokens do
    not expire, since exec sessions last hours; ``iat`` is only checked against the
    future. Raises a :class:`~webhook.errors.TokenError` subclass naming the problem.
    """
    if len(token) >= MAX_TOKEN_BYTES:
        raise TokenMalformed(f"token is {len(token)} bytes, the limit is {MAX_TOKEN_BYTES - 1}")
    parts = token.split(".")
    if len(parts) != 4:
        raise TokenMalformed(f"token has {len(parts)} dot-separated parts, expected 4")
    version, kid, payload_b64, signature_b64 = parts
    if version != VERSION:
        raise TokenMalformed(f"token version {version[:8]!r} is not {VERSION!r}")
    if not _KID_RE.fullmatch(kid):
        raise TokenMalformed(f"token kid {kid[:32]!r} is not 16 lowercase hex characters")
    payload_bytes = b64url_decode(payload_b64, "payload")
    signature = b64url_decode(signature_b64, "signature")
    if len(signature) != 64:
        raise TokenMalformed(f"token signature is {len(signature)} bytes, expected 64")
    public_key = keys.get(kid)
    if public_key is None:
        raise UnknownKeyId(f"token kid {kid!r} is not among the {len(keys)} trusted keys")
    try:
        public_key.verify(signature, f"{version}.{kid}.{payload_b64}".encode("ascii"))
    except InvalidSignature as exc:
        raise BadSignature(f"token signature does not verify with key {kid!r}") from exc
    identity = parse_payload(payload_bytes)
    if identity.issued_at > now + max_skew:
        raise TokenFromFuture(
            f"token iat {identity.issued_at} is {identity.issued_at - now}s in the future "
            f"(allowed skew {max_skew}s)"
        )
    return identity


def _expect(payload: Mapping[str, Any], key: str, kind: type, *, empty_ok: bool = True) -> Any:
    value = payload[key]
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise TokenMalformed(f"token payload field {key!r} must be {kind.__name__}")
    if not empty_ok and not value:
        raise TokenMalformed(f"token payload field {key!r} must not be empty")
    return value


def parse_payload(payload_bytes: bytes) -> Identity:
    """Decode and type-check a token payload (after the signature was verified)."""
    try:
        payload = json.loads(payload_bytes.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise TokenMalformed("token payload is not UTF-8 JSON") from exc
    if not isinstance(payload, dict):
        raise TokenMalformed("token payload is not a JSON object")
    keys = set(payload)
    if missing := _REQUIRED_KEYS - keys:
        raise TokenMalformed(f"token payload lacks {sorted(missing)}")
    if unknown := keys - _REQUIRED_KEYS - _OPTIONAL_KEYS:
        raise TokenMalformed(f"token payload has unknown keys {sorted(unknown)[:5]}")
    groups = _expect(payload, "groups", list)
    if not all(isinstance(group, str) for group in groups):
        raise TokenMalformed("token payload field 'groups' must be a list of strings")
    pod_uid = _expect(payload, "pod_uid", str, empty_ok=False) if "pod_uid" in payload else None
    if "trunc" in payload and payload["trunc"] is not True:
        raise TokenMalformed("token payload field 'trunc' must be true when present")
    return Identity(
        session_id=_expect(payload, "sid", str, empty_ok=False),
        user=_expect(payload, "user", str, empty_ok=False),
        uid=_expect(payload, "uid", str),
        groups=tuple(groups),
        namespace=_expect(payload, "ns", str),
        pod=_expect(payload, "pod", str),
        container=_expect(payload, "container", str),
        issued_at=_expect(payload, "iat", int),
        pod_uid=pod_uid,
        groups_truncated="trunc" in payload,
    )
