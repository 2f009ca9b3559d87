from __future__ import annotations

import re

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from webhook.errors import ConfigError
from webhook.keyfiles import load_key_ring, load_public_key, load_signer


def test_missing_key_file_names_the_path(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read .*identity\.key"):
        load_signer(tmp_path / "identity.key")


def test_garbage_is_not_a_key_and_is_not_echoed(tmp_path):
    path = tmp_path / "identity.key"
    path.write_text("Zq9sekretMaterial")
    with pytest.raises(ConfigError) as caught:
        load_signer(path)
    assert "Zq9sekret" not in str(caught.value)


def test_keys_of_the_wrong_algorithm_are_refused(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "ec.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (tmp_path / "ec.pub").write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match="expected an Ed25519 key"):
        load_signer(tmp_path / "ec.key")
    with pytest.raises(ConfigError, match="expected an Ed25519 key"):
        load_public_key(tmp_path / "ec.pub")


def test_a_directory_of_public_keys_is_a_key_ring(tmp_path, signer):
    (tmp_path / "a.pub").write_bytes(
        signer.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    assert list(load_key_ring([tmp_path])) == [signer.kid]


def test_an_empty_key_ring_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no identity public key"):
        load_key_ring([tmp_path])


def test_the_identity_key_written_by_whoexec_certs_signs_as_its_public_key(tmp_path):
    from click.testing import CliRunner

    from webhook.cli import main
    from webhook.identity import key_id

    assert CliRunner().invoke(main, ["certs", "--out", str(tmp_path)]).exit_code == 0
    signer = load_signer(tmp_path / "identity.key")
    public = load_public_key(tmp_path / "identity.pub")
    assert signer.kid == key_id(public)
    public.verify(signer.private_key.sign(b"exec"), b"exec")  # raises if not the pair


@pytest.mark.parametrize("loader", [load_signer, load_public_key])
def test_a_file_that_is_no_pem_key_is_named_in_the_error(tmp_path, loader):
    path = tmp_path / "not-a-key.pem"
    path.write_text("-----BEGIN NOTHING-----\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} is not a"):
        loader(path)


def test_a_key_of_another_algorithm_is_named_by_its_type(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))} holds a ECP"):
        load_signer(path)
    pub = tmp_path / "ec.pub"
    pub.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(pub))} holds a ECP"):
        load_public_key(pub)
