from __future__ import annotations

import base64
import datetime
import ipaddress
import stat

from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webhook.admission.certs import ALL_FILES, PRIVATE_FILES
from webhook.cli import main
from webhook.identity import key_id
from webhook.keyfiles import load_key_ring, load_signer


def run_certs(tmp_path, *extra):
    return CliRunner().invoke(main, ["certs", "--out", str(tmp_path / "certs"), *extra])


def test_certs_writes_every_file_with_private_keys_0600(tmp_path):
    result = run_certs(tmp_path)
    assert result.exit_code == 0, result.output
    out = tmp_path / "certs"
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL_FILES)
    for name in ALL_FILES:
        mode = stat.S_IMODE((out / name).stat().st_mode)
        assert mode == (0o600 if name in PRIVATE_FILES else 0o644), name


def test_serving_certificate_names_every_service_form_and_chains_to_the_ca(tmp_path):
    run_certs(tmp_path, "--service", "whoexec", "--namespace", "sec")
    out = tmp_path / "certs"
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    cert = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())
    sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert sans.get_values_for_type(x509.DNSName) == [
        "whoexec",
        "whoexec.sec",
        "whoexec.sec.svc",
        "whoexec.sec.svc.cluster.local",
        "localhost",
    ]
    assert sans.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    cert.verify_directly_issued_by(ca)
    assert cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC)


def test_ca_bundle_printed_on_stdout_is_the_ca_certificate(tmp_path):
    result = run_certs(tmp_path)
    ca_pem = (tmp_path / "certs" / "ca.crt").read_bytes()
    assert base64.b64decode(result.stdout.strip()) == ca_pem


def test_identity_key_pair_matches_and_loads(tmp_path):
    run_certs(tmp_path)
    out = tmp_path / "certs"
    signer = load_signer(out / "identity.key")
    ring = load_key_ring([out / "identity.pub"])
    assert list(ring) == [signer.kid] == [key_id(signer.public_key)]
    assert isinstance(signer.private_key, Ed25519PrivateKey)
    pkcs8 = signer.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    assert (out / "identity.key").read_bytes() == pkcs8, "PKCS#8 PEM, unencrypted"


def test_certs_refuses_to_overwrite_without_force(tmp_path):
    run_certs(tmp_path)
    before = (tmp_path / "certs" / "identity.key").read_bytes()
    result = run_certs(tmp_path)
    assert result.exit_code == 1
    assert "--force" in result.output
    assert (tmp_path / "certs" / "identity.key").read_bytes() == before
    assert run_certs(tmp_path, "--force").exit_code == 0
    assert (tmp_path / "certs" / "identity.key").read_bytes() != before
