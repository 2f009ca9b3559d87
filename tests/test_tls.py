from __future__ import annotations

import logging
import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import issue_client_certificate
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


def handshake(server_context: ssl.SSLContext, client_context: ssl.SSLContext) -> None:
    """A whole TLS handshake in memory; raises the SSLError of the side that refuses."""
    bios = {side: (ssl.MemoryBIO(), ssl.MemoryBIO()) for side in ("server", "client")}
    ends = {
        "server": server_context.wrap_bio(*bios["server"], server_side=True),
        "client": client_context.wrap_bio(*bios["client"], server_hostname="localhost"),
    }
    done: set[str] = set()
    for _ in range(10):
        for side in ("client", "server"):
            if side not in done:
                try:
                    ends[side].do_handshake()
                    done.add(side)
                except ssl.SSLWantReadError:
                    pass
        bios["server"][0].write(bios["client"][1].read())
        bios["client"][0].write(bios["server"][1].read())
        if done == {"server", "client"}:
            return
    raise AssertionError(f"the handshake did not finish ({done} done)")


def client(certs: Path, with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    if with_certificate:
        context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    return context


def test_with_a_client_ca_only_a_client_with_its_certificate_gets_in(certs):
    issue_client_certificate(certs)
    context = server_context(certs / "tls.crt", certs / "tls.key", certs / "ca.crt")
    handshake(context, client(certs, with_certificate=True))
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(context, client(certs, with_certificate=False))


def test_without_a_client_ca_any_client_gets_in(certs):
    handshake(server_context(certs / "tls.crt", certs / "tls.key"), client(certs, False))


def test_a_reloaded_context_still_asks_for_the_client_certificate(certs):
    issue_client_certificate(certs)
    reloading = ReloadingContext(certs / "tls.crt", certs / "tls.key", certs / "ca.crt")
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(reloading.current(), client(certs, with_certificate=False))
    CliRunner().invoke(main, ["certs", "--out", str(certs), "--force"])
    issue_client_certificate(certs)  # signed by the new CA
    reloaded = reloading.current()
    assert reloading.reloads == 1
    handshake(reloaded, client(certs, with_certificate=True))
    with pytest.raises(ssl.SSLError, match="PEER_DID_NOT_RETURN_A_CERTIFICATE"):
        handshake(reloaded, client(certs, with_certificate=False))


def test_each_rotation_is_one_reload_and_the_new_context_is_kept(certs, caplog):
    caplog.set_level(logging.INFO, "whoexec.tls")
    reloading = ReloadingContext(certs / "tls.crt", certs / "tls.key")
    for rotation in (1, 2):
        CliRunner().invoke(main, ["certs", "--out", str(certs), "--force"])
        new = reloading.current()
        assert reloading.current() is new, "unchanged since: the same context"
        assert reloading.reloads == rotation
    assert caplog.messages.count(f"reloaded TLS certificate {certs / 'tls.crt'}") == 2


def test_a_rotation_that_cannot_load_says_why_it_keeps_the_old_certificate(certs, caplog):
    reloading = ReloadingContext(certs / "tls.crt", certs / "tls.key")
    (certs / "tls.crt").write_text("not a certificate")
    reloading.current()
    expected = (
        f"keeping the previous TLS certificate: cannot load TLS certificate {certs / 'tls.crt'}"
        f" / key {certs / 'tls.key'}: [SSL] PEM lib"
    )
    assert [m.startswith(expected) for m in caplog.messages] == [True], caplog.messages
