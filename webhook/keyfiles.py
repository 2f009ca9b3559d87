"""Reading identity keys from PEM files (adapter). Errors never include key material."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from webhook.errors import ConfigError
from webhook.identity import Signer, key_ring

#: File names inside the ``--certs`` directory, as written by ``whoexec certs``.
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
IDENTITY_KEY = "identity.key"
IDENTITY_PUB = "identity.pub"
#: the identity public key before the last ``whoexec certs --rotate-identity`` (the same
#: as ``identity.pub`` until the first): tokens minted with it keep verifying
IDENTITY_PREVIOUS_PUB = "identity.previous.pub"
#: the bearer token of the consumer's POST /k8s-audit and /api/* (--api-token-file)
API_TOKEN = "api-token"  # noqa: S105 - a file name, not a token


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None


def load_signer(path: Path) -> Signer:
    """The Ed25519 private identity key (PKCS#8 PEM) at ``path``."""
    try:
        key = serialization.load_pem_private_key(_read(path), password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"{path} is not an unencrypted PKCS#8 PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key")
    return Signer(key)


def load_public_key(path: Path) -> Ed25519PublicKey:
    """An Ed25519 public key (SubjectPublicKeyInfo PEM) at ``path``."""
    try:
        key = serialization.load_pem_public_key(_read(path))
    except ValueError:
        raise ConfigError(f"{path} is not a SubjectPublicKeyInfo PEM public key") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} holds a {type(key).__name__}, expected an Ed25519 key")
    return key


def load_key_ring(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    """Trusted public keys by key id; a directory contributes every ``*.pub`` in it."""
    keys: list[Ed25519PublicKey] = []
    for path in paths:
        files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
        keys.extend(load_public_key(file) for file in files)
    if not keys:
        raise ConfigError("no identity public key given (--identity-pub)")
    return key_ring(keys)


def load_webhook_keys(
    certs: Path, trusted: Iterable[Path] = ()
) -> tuple[Signer, dict[str, Ed25519PublicKey]]:
    """The webhook's signer from ``certs``, and the keys whose tokens it recognises as its
    own earlier rewrites: its own, ``identity.pub`` and ``identity.previous.pub`` when
    there (a rotation), and every ``--trusted-key``."""
    signer = load_signer(certs / IDENTITY_KEY)
    ring = {signer.kid: signer.public_key}
    extra = list(trusted)  # each must be there: a missing --trusted-key is an error
    extra += [
        certs / name for name in (IDENTITY_PUB, IDENTITY_PREVIOUS_PUB) if (certs / name).is_file()
    ]
    if extra:
        ring.update(load_key_ring(extra))
    return signer, ring
