from __future__ import annotations

import base64
import datetime
import ipaddress
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from webhook.admission.certs import ALL_FILES, PRIVATE_FILES
from webhook.cli import main
from webhook.errors import ConfigError
from webhook.identity import Identity, key_id, sign_identity, verify_token
from webhook.keyfiles import load_key_ring, load_signer, load_webhook_keys

NOW = 1_790_000_000
IDENTITY = Identity(
    session_id="s-1",
    user="alice",
    uid="u-1",
    groups=("devs",),
    namespace="shop",
    pod="web-0",
    container="app",
    issued_at=NOW,
    pod_uid="0f3c",
)


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
    assert "already holds ca.crt, ca.key, tls.crt" in result.output, "names what it would lose"
    assert "--force" in result.output
    assert (tmp_path / "certs" / "identity.key").read_bytes() == before
    assert run_certs(tmp_path, "--force").exit_code == 0
    assert (tmp_path / "certs" / "identity.key").read_bytes() != before


def test_a_new_install_ships_its_one_key_as_the_previous_key_too(tmp_path):
    run_certs(tmp_path)
    out = tmp_path / "certs"
    assert (out / "identity.previous.pub").read_bytes() == (out / "identity.pub").read_bytes()


def test_rotating_the_identity_signs_with_a_new_key_and_keeps_the_old_one_trusted(tmp_path):
    run_certs(tmp_path)
    out = tmp_path / "certs"
    untouched = {name: (out / name).read_bytes() for name in ("ca.crt", "tls.key", "api-token")}
    old = load_signer(out / "identity.key")
    token = sign_identity(IDENTITY, old)

    result = run_certs(tmp_path, "--rotate-identity")

    assert result.exit_code == 0, result.output
    new = load_signer(out / "identity.key")
    assert new.kid != old.kid
    assert new.kid in result.output and old.kid in result.output
    assert list(load_key_ring([out / "identity.pub"])) == [new.kid]
    ring = load_key_ring([out])  # a consumer's --identity-pub directory (the ConfigMap)
    assert set(ring) == {old.kid, new.kid}
    assert verify_token(token, ring, NOW) == IDENTITY, "old sessions still verify"
    assert stat.S_IMODE((out / "identity.key").stat().st_mode) == 0o600
    for public in ("identity.pub", "identity.previous.pub"):  # the consumers read them
        assert stat.S_IMODE((out / public).stat().st_mode) == 0o644, public
    assert {name: (out / name).read_bytes() for name in untouched} == untouched
    assert "no longer trusted" not in result.output, "a new install's one key stays trusted"


def test_a_second_rotation_drops_the_key_before_the_previous_one_and_says_so(tmp_path):
    run_certs(tmp_path)
    out = tmp_path / "certs"
    first = load_signer(out / "identity.key").kid
    run_certs(tmp_path, "--rotate-identity")
    second = load_signer(out / "identity.key").kid

    result = run_certs(tmp_path, "--rotate-identity")

    third = load_signer(out / "identity.key").kid
    assert set(load_key_ring([out])) == {second, third}
    assert f"no longer trusted: {first}" in result.output


def test_rotation_refuses_a_public_key_that_is_not_the_private_key_s_and_changes_nothing(
    tmp_path,
):
    run_certs(tmp_path)
    out = tmp_path / "certs"
    stranger = tmp_path / "stranger"
    run_certs(tmp_path, "--out", str(stranger))  # the last --out wins
    (out / "identity.pub").write_bytes((stranger / "identity.pub").read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    result = run_certs(tmp_path, "--rotate-identity")

    assert result.exit_code == 1
    assert "identity.pub is not the public key of" in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_rotation_without_keys_names_the_missing_file(tmp_path):
    result = run_certs(tmp_path, "--rotate-identity")
    assert result.exit_code == 1
    assert "identity.key" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("given", "named"),
    [
        (["--days", "30"], "--days would change nothing: leave it out"),
        (["--service", "x", "--force"], "--service, --force would change nothing: leave them out"),
        (["--namespace", "whoexec"], "--namespace would"),  # even its default, said aloud
    ],
)
def test_rotation_refuses_options_it_would_ignore_and_changes_nothing(tmp_path, given, named):
    run_certs(tmp_path)
    out = tmp_path / "certs"
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    result = run_certs(tmp_path, "--rotate-identity", *given)

    assert result.exit_code == 2
    assert named in result.output
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_the_webhook_recognises_its_rewrites_under_the_current_and_the_previous_key(tmp_path):
    run_certs(tmp_path)
    out = tmp_path / "certs"
    old = load_signer(out / "identity.key").kid
    run_certs(tmp_path, "--rotate-identity")

    signer, trusted = load_webhook_keys(out)

    assert set(trusted) == {old, signer.kid}


def test_a_missing_trusted_key_is_an_error_not_skipped(tmp_path):
    run_certs(tmp_path)
    with pytest.raises(ConfigError, match=r"gone\.pub"):
        load_webhook_keys(tmp_path / "certs", [tmp_path / "gone.pub"])


# --- the certificates' profile: what each may be used for, and for how long ----------------


def key_usage(cert: x509.Certificate) -> tuple[bool, set[str]]:
    """Whether the key usage is critical, and the usages it allows."""
    extension = cert.extensions.get_extension_for_class(x509.KeyUsage)
    usage = extension.value
    names = ("digital_signature", "key_encipherment", "content_commitment", "data_encipherment",
             "key_agreement", "key_cert_sign", "crl_sign")  # fmt: skip
    allowed = {name for name in names if getattr(usage, name)}
    if usage.key_agreement:
        allowed |= {n for n in ("encipher_only", "decipher_only") if getattr(usage, n)}
    return extension.critical, allowed


def test_the_ca_signs_only_leaves_and_a_leaf_can_sign_nothing(tmp_path):
    from webhook.admission.certs import generate_certs, issue_serving_certificate

    now = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
    generate_certs(tmp_path / "certs", "whoexec", "sec", now, days=30)
    out = tmp_path / "certs"
    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    leaf = x509.load_pem_x509_certificate((out / "tls.crt").read_bytes())

    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.critical, constraints.value.ca, constraints.value.path_length) == (
        True, True, 0,
    ), "a CA of leaves only: no intermediate it signs can sign"  # fmt: skip
    assert key_usage(ca) == (True, {"digital_signature", "key_cert_sign", "crl_sign"})

    constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.critical, constraints.value.ca) == (True, False)
    assert key_usage(leaf) == (True, {"digital_signature"})
    usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert (usage.critical, list(usage.value)) == (False, [x509.ExtendedKeyUsageOID.SERVER_AUTH])
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert sans.critical is False
    assert leaf.subject.rfc4514_string() == "CN=whoexec.sec.svc"
    assert ca.subject.rfc4514_string() == "CN=whoexec CA (sec)"
    for cert in (ca, leaf):
        # five minutes back, for a node whose clock is a little behind
        assert cert.not_valid_before_utc == now - datetime.timedelta(minutes=5)
        assert cert.not_valid_after_utc == now + datetime.timedelta(days=30)

    ca_key = serialization.load_pem_private_key((out / "ca.key").read_bytes(), None)
    client, _ = issue_serving_certificate(ca, ca_key, ("falco",), now, 1, client=True)  # type: ignore[arg-type]
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert list(usage.value) == [x509.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert client.subject.rfc4514_string() == "CN=falco", "a single name is its own CN"
    client.verify_directly_issued_by(ca)


def test_the_api_token_is_256_random_bits_in_hex_and_each_install_gets_its_own(tmp_path):
    from webhook.admission.certs import generate_certs

    now = datetime.datetime.now(datetime.UTC)
    tokens = []
    for name in ("a", "b"):
        generate_certs(tmp_path / name, "whoexec", "sec", now)
        tokens.append((tmp_path / name / "api-token").read_text())
    assert all(len(t) == 65 and t.endswith("\n") for t in tokens)
    assert all(int(t, 16) >= 0 for t in tokens) and tokens[0] != tokens[1]


def test_certs_makes_the_directories_it_is_given(tmp_path):
    result = CliRunner().invoke(main, ["certs", "--out", str(tmp_path / "a" / "b" / "certs")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "b" / "certs" / "ca.crt").is_file()


def test_generating_into_a_filled_directory_without_being_told_to_overwrite_is_refused(tmp_path):
    from webhook.admission.certs import generate_certs

    now = datetime.datetime.now(datetime.UTC)
    generate_certs(tmp_path, "whoexec", "sec", now)
    before = (tmp_path / "identity.key").read_bytes()

    with pytest.raises(ConfigError, match="pass --force to overwrite"):
        generate_certs(tmp_path, "whoexec", "sec", now)
    assert (tmp_path / "identity.key").read_bytes() == before


def test_certificates_are_valid_for_a_year_unless_told_otherwise(tmp_path):
    from webhook.admission.certs import generate_certs

    now = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)
    generate_certs(tmp_path, "whoexec", "sec", now)

    for name in ("ca.crt", "tls.crt"):
        cert = x509.load_pem_x509_certificate((tmp_path / name).read_bytes())
        assert cert.not_valid_after_utc == now + datetime.timedelta(days=365), name


@pytest.mark.parametrize(
    ("names", "common_name"),
    [
        (("falco",), "falco"),
        (("a", "b"), "b"),
        (("a", "b", "c"), "c"),
        (("a", "b", "c", "d"), "c"),  # the Service's "<name>.<namespace>.svc" form
    ],
)
def test_a_leaf_s_common_name_is_its_third_name_or_its_last_of_fewer(names, common_name):
    from webhook.admission.certs import issue_serving_certificate

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "test CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )

    leaf, _ = issue_serving_certificate(ca, ca_key, names, now, 1)

    assert leaf.subject.rfc4514_string() == f"CN={common_name}"


def test_a_rotation_of_a_new_install_drops_no_key(tmp_path):
    from webhook.admission.certs import generate_certs, rotate_identity

    generate_certs(tmp_path, "whoexec", "sec", datetime.datetime.now(datetime.UTC))
    first = load_signer(tmp_path / "identity.key").kid

    rotation = rotate_identity(tmp_path)

    assert (rotation.previous, rotation.dropped) == (first, None)


def test_a_rotation_of_an_install_older_than_the_previous_key_file_drops_no_key(tmp_path):
    from webhook.admission.certs import generate_certs, rotate_identity

    generate_certs(tmp_path, "whoexec", "sec", datetime.datetime.now(datetime.UTC))
    (tmp_path / "identity.previous.pub").unlink()  # made before the file was shipped

    rotation = rotate_identity(tmp_path)

    assert rotation.dropped is None
    assert (tmp_path / "identity.previous.pub").is_file()


def test_each_file_is_written_beside_its_place_under_a_hidden_name_and_then_renamed(
    tmp_path, monkeypatch
):
    """os.replace is atomic only within one filesystem, and a reader listing the
    directory (a consumer reads every .pub in it) must not meet a half-written file."""
    import os

    from webhook.admission import certs

    renames = []
    real_replace = os.replace

    def replace(source, target):
        renames.append((Path(source), Path(target)))
        real_replace(source, target)

    monkeypatch.setattr(certs.os, "replace", replace)
    certs.generate_certs(tmp_path, "whoexec", "sec", datetime.datetime.now(datetime.UTC))

    assert {target.name for _, target in renames} == set(ALL_FILES)
    for source, target in renames:
        assert source.parent == target.parent == tmp_path
        assert source.name.startswith(f".{target.name}."), source.name


def test_a_write_that_fails_leaves_the_old_file_and_no_temporary_one(tmp_path, monkeypatch):
    from webhook.admission import certs

    (tmp_path / "ca.crt").write_bytes(b"old")

    def refuse(source, target):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(certs.os, "replace", refuse)
    with pytest.raises(OSError, match="No space"):
        certs._write(tmp_path / "ca.crt", b"new", private=False)

    assert [p.name for p in tmp_path.iterdir()] == ["ca.crt"]
    assert (tmp_path / "ca.crt").read_bytes() == b"old"
