"""Server TLS contexts that follow certificate rotation on disk (adapter).

cert-manager and kubelet's Secret projection replace ``tls.crt``/``tls.key`` in place.
gunicorn asks for an SSL context for every new connection (its ``ssl_context`` hook), so
:class:`ReloadingContext` hands back a cached context and rebuilds it when the files'
identity (inode, size, mtime) changes. Connections already open keep their context, so
nothing is dropped. A half-written pair keeps the last good context.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from pathlib import Path

from webhook.errors import ConfigError

log = logging.getLogger("whoexec.tls")

_Stamp = tuple[tuple[int, int, int], ...]


def server_context(cert: Path, key: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    """TLS 1.2+ server context; with ``client_ca``, clients must present a certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
        if client_ca is not None:
            context.load_verify_locations(cafile=str(client_ca))
            context.verify_mode = ssl.CERT_REQUIRED
    except (OSError, ssl.SSLError) as exc:
        # the message names the files, never their contents
        raise ConfigError(f"cannot load TLS certificate {cert} / key {key}: {exc}") from None
    return context


class ReloadingContext:
    """An SSL context rebuilt whenever the certificate or key file changes on disk."""

    def __init__(self, cert: Path, key: Path, client_ca: Path | None = None) -> None:
        self._paths = tuple(p for p in (cert, key, client_ca) if p is not None)
        self._cert, self._key, self._client_ca = cert, key, client_ca
        self._lock = threading.Lock()
        self._stamp = self._read_stamp()
        self._context = server_context(cert, key, client_ca)
        self.reloads = 0

    def _read_stamp(self) -> _Stamp:
        stamps = []
        for path in self._paths:
            st = os.stat(path)
            stamps.append((st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(stamps)

    def current(self) -> ssl.SSLContext:
        try:
            stamp = self._read_stamp()
        except OSError:
            return self._context  # mid-rotation: a file is briefly missing
        if stamp == self._stamp:
            return self._context
        with self._lock:
            if stamp != self._stamp:
                try:
                    self._context = server_context(self._cert, self._key, self._client_ca)
                except ConfigError as exc:
                    log.warning("keeping the previous TLS certificate: %s", exc)
                    return self._context
                self._stamp = stamp
                self.reloads += 1
                log.info("reloaded TLS certificate %s", self._cert)
        return self._context
