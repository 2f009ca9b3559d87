"""``whoexec certs``: a development CA, the webhook's serving certificate, identity keys.

Go's TLS (kube-apiserver) ignores the certificate's CN and checks only the SANs, so the
serving certificate lists every DNS form of the Service plus ``localhost``/``127.0.0.1``.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import os
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from webhook.errors import ConfigError
from webhook.identity import key_id
from webhook.keyfiles import (
    API_TOKEN,
    CA_CERT,
    CA_KEY,
    IDENTITY_KEY,
    IDENTITY_PREVIOUS_PUB,
    IDENTITY_PUB,
    TLS_CERT,
    TLS_KEY,
    load_public_key,
    load_signer,
)

ALL_FILES = (
    CA_CERT,
    CA_KEY,
    TLS_CERT,
    TLS_KEY,
    IDENTITY_KEY,
    IDENTITY_PUB,
    IDENTITY_PREVIOUS_PUB,
    API_TOKEN,
)
PRIVATE_FILES = frozenset({CA_KEY, TLS_KEY, IDENTITY_KEY, API_TOKEN})


@dataclass(frozen=True, slots=True)
class CertBundle:
    """What ``whoexec certs`` wrote, for what it prints."""

    ca_bundle: str  # base64 of ca.crt, for the MutatingWebhookConfiguration's caBundle
    dns_names: tuple[str, ...]


def service_dns_names(service: str, namespace: str) -> tuple[str, ...]:
    return (
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
        "localhost",
    )


def _pem_key(key: ec.EllipticCurvePrivateKey | Ed25519PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _write(path: Path, data: bytes, private: bool) -> None:
    """Write atomically; private keys are created 0600 and never exist with wider modes."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600 if private else 0o644)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def issue_serving_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: tuple[str, ...],
    now: datetime.datetime,
    days: int,
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate for ``dns_names``; ``client=True`` makes it a client certificate
    (for the consumer's optional mTLS) instead of a serving one."""
    key = ec.generate_private_key(ec.SECP256R1())
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [x509.NameAttribute(NameOID.COMMON_NAME, dns_names[min(2, len(dns_names) - 1)])]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName(name) for name in dns_names]
                + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def generate_certs(
    out: Path,
    service: str,
    namespace: str,
    now: datetime.datetime,
    days: int = 365,
    force: bool = False,
) -> CertBundle:
    """Write the CA, serving certificate, identity key pair and the consumer's API token
    into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    existing = [name for name in ALL_FILES if (out / name).exists()]
    if existing and not force:
        raise ConfigError(f"{out} already holds {', '.join(existing)}; pass --force to overwrite")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"whoexec CA ({namespace})")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_encipherment=False,
                content_commitment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    dns_names = service_dns_names(service, namespace)
    tls_cert, tls_key = issue_serving_certificate(ca_cert, ca_key, dns_names, now, days)
    identity_key = Ed25519PrivateKey.generate()
    ca_pem = ca_cert.public_bytes(serialization.Encoding.PEM)
    files = {
        CA_CERT: ca_pem,
        CA_KEY: _pem_key(ca_key),
        TLS_CERT: tls_cert.public_bytes(serialization.Encoding.PEM),
        TLS_KEY: _pem_key(tls_key),
        IDENTITY_KEY: _pem_key(identity_key),
        IDENTITY_PUB: _public_pem(identity_key),
        # no earlier key yet: the overlays and the chart always ship this file
        IDENTITY_PREVIOUS_PUB: _public_pem(identity_key),
        # what the audit webhook backend and API readers send to the consumer
        API_TOKEN: (secrets.token_hex(32) + "\n").encode(),
    }
    for name, data in files.items():
        _write(out / name, data, private=name in PRIVATE_FILES)
    return CertBundle(base64.b64encode(ca_pem).decode("ascii"), dns_names)


@dataclass(frozen=True, slots=True)
class Rotation:
    """What ``whoexec certs --rotate-identity`` did, by key id."""

    previous: str
    current: str
    dropped: str | None  # the key before ``previous``, trusted no longer


def rotate_identity(out: Path) -> Rotation:
    """A new identity key pair in ``out``; the current public key becomes
    ``identity.previous.pub``, so tokens minted before keep verifying. The one before it
    is dropped: sessions older than the last-but-one rotation no longer verify."""

    current_pub = out / IDENTITY_PUB
    signer = load_signer(out / IDENTITY_KEY)
    public = load_public_key(current_pub)
    if key_id(public) != signer.kid:
        raise ConfigError(
            f"{current_pub} is not the public key of {out / IDENTITY_KEY} "
            f"(key id {key_id(public)!r}, the private key's is {signer.kid!r}); "
            "nothing was changed"
        )
    dropped = None
    previous_pub = out / IDENTITY_PREVIOUS_PUB
    if previous_pub.is_file():
        before = key_id(load_public_key(previous_pub))
        dropped = before if before != signer.kid else None
    new_key = Ed25519PrivateKey.generate()
    # the old public key first: if this stops half way, nothing that verifies is lost
    _write(previous_pub, current_pub.read_bytes(), private=False)
    _write(out / IDENTITY_KEY, _pem_key(new_key), private=True)
    _write(current_pub, _public_pem(new_key), private=False)
    return Rotation(signer.kid, key_id(new_key.public_key()), dropped)
