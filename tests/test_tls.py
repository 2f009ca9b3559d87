from __future__ import annotations

import ssl

import pytest
from click.testing import CliRunner

from webhook.cli import main
from webhook.errors import ConfigError
from webhook.tls import ReloadingContext, server_context


@pytest.fixture
def certs(tmp_path):
    out = tmp_path / "certs"
    assert CliRunner().invoke(main, ["certs", "--out", str(out)]).exit_code == 0
    return out


def test_context_requires_tls_1_2_or_newer(certs):
    context = server_context(certs / "tls.crt", certs / "tls.key")
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_unchanged_files_reuse_the_same_context(certs):
    reloading = ReloadingContext(certs / "tls.crt", certs / "tls.key")
    assert reloading.current() is reloading.current()
    assert reloading.reloads == 0


def test_replaced_files_build_a_new_context(certs, tmp_path):
    reloading = ReloadingContext(certs / "tls.crt", certs / "tls.key")
    first = reloading.current()
    CliRunner().invoke(main, ["certs", "--out", str(certs), "--force"])
    assert reloading.current() is not first
    assert reloading.reloads == 1


def test_half_written_rotation_keeps_the_last_good_context(certs, caplog):
    reloading = ReloadingContext(certs / "tls.crt", certs / "tls.key")
    good = reloading.current()
    key = (certs / "tls.key").read_bytes()
    (certs / "tls.key").write_bytes(key[: len(key) // 2])  # the writer is half-way through
    assert reloading.current() is good
    assert "keeping the previous TLS certificate" in caplog.text
    body = key.splitlines()[1].decode()
    assert body not in caplog.text, "key contents are never logged"


def test_missing_file_mid_rotation_keeps_the_last_good_context(certs):
    reloading = ReloadingContext(certs / "tls.crt", certs / "tls.key")
    good = reloading.current()
    (certs / "tls.crt").unlink()
    assert reloading.current() is good


def test_unloadable_certificate_is_a_config_error_naming_the_files(tmp_path):
    (tmp_path / "tls.crt").write_text("not a certificate")
    (tmp_path / "tls.key").write_text("not a key")
    with pytest.raises(ConfigError, match=r"tls\.crt"):
        server_context(tmp_path / "tls.crt", tmp_path / "tls.key")
