from __future__ import annotations

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
