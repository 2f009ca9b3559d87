"""One frozen :class:`Settings`, built once from ``WHOEXEC_*`` variables or from flags.

Flags win over the environment; the environment wins over the defaults. The object is
then passed explicitly to whatever needs it: nothing else reads the environment.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from webhook.errors import ConfigError

PREFIX = "WHOEXEC_"


@dataclass(frozen=True, slots=True)
class Settings:
    """Every knob of the webhook and the consumer. Environment names are ``WHOEXEC_<FIELD>``."""

    # serving
    certs: Path = Path("certs")
    bind: str = "0.0.0.0:8443"
    workers: int = 2
    threads: int = 8
    max_body_bytes: int = 3 * 1024 * 1024  # kube-apiserver's own request limit is 3 MiB
    #: deadlines on what a client controls (issue #21): the TLS handshake, a request's
    #: headers (from its first byte), its body; the webhook's answer is due in 3 s
    handshake_timeout: float = 5.0
    header_timeout: float = 5.0
    body_timeout: float = 10.0
    #: open connections per webhook worker process; near it, idle ones are closed
    worker_connections: int = 1000
    #: the consumer's intake: open connections in all, and from one address
    max_connections: int = 1024
    max_connections_per_peer: int = 64
    log_level: str = "info"
    # injection policy
    identity_variable: str = "WHOEXEC_IDENTITY"
    env_path: str = "/usr/bin/env"
    exclude_namespaces: tuple[str, ...] = ()
    exclude_users: tuple[str, ...] = ()
    exclude_groups: tuple[str, ...] = ()
    clock_skew_seconds: int = 300
    #: extra public keys whose tokens count as our own (identity key rotation)
    trusted_keys: tuple[Path, ...] = ()
    #: the webhook's name in the MutatingWebhookConfiguration (prefix of audit annotations)
    webhook_name: str = "exec.whoexec.io"
    # pod awareness: "" (off), "in-cluster", a kubeconfig path, or an apiserver URL
    kube: str = ""
    pod_lookup_timeout: float = 0.5
    images_without_env: tuple[str, ...] = ()
    #: where the static env is not mounted, /usr/bin/env is used only in these namespaces
    #: or images (globs the operator vouches for); elsewhere the exec is left alone
    env_trusted_namespaces: tuple[str, ...] = ()
    env_trusted_images: tuple[str, ...] = ()
    static_env_cpu: str = "10m"
    static_env_memory: str = "16Mi"
    env_volume_path: str = "/.whoexec/env"
    static_env_image: str = "ghcr.io/whoexec/whoexec:0.1.0"
    # consumer
    identity_pub: tuple[Path, ...] = ()
    procfs: Path | None = None
    #: the node whose /proc ``procfs`` shows (Falco's ``hostname``): alerts from other
    #: nodes are never looked up there. Set it from the downward API (spec.nodeName)
    node_name: str = ""
    state_dir: Path = Path("whoexec-state")
    listen: str = ""
    hold_seconds: float = 2.0
    #: a session root is believed when it started within [iat - skew, iat + fresh]
    fresh_seconds: int = 30
    root_skew_seconds: int = 5
    #: how far the audit log must have moved past a session before its absence there is a
    #: finding (``whoexec audit crosscheck``)
    audit_grace_seconds: int = 300
    max_processes: int = 100_000
    output: Path | None = None
    forward_url: str = ""
    forward_spool_items: int = 1_000_000
    #: bytes of alerts accepted over HTTP and not yet processed; past it, POSTs get 503
    inbox_bytes: int = 1 << 30
    forward_roots: bool = False
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    db: str = ""
    # the session explorer (whoexec ui)
    ui_bind: str = "127.0.0.1:8080"
    #: when set, every page asks for it; never shown in a repr or a log
    ui_token: str = field(default="", repr=False)
    #: how long a browser stays signed in to the UI; signing out ends it sooner
    ui_session_seconds: int = 8 * 3600
    #: the bearer token that ``POST /k8s-audit`` and ``/api/*`` of the consumer ask for, in
    #: a file (a mounted Secret; read again when it changes). Without it, those routes
    #: answer only loopback
    api_token_file: Path | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **overrides: Any) -> Settings:
        """Read ``WHOEXEC_*`` variables, then apply non-None ``overrides`` (the flags)."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = PREFIX + f.name.upper()
            if name in environ:
                values[f.name] = _convert(name, environ[name], f.default)
        values.update({k: v for k, v in overrides.items() if v is not None and v != ()})
        try:
            settings = cls(**values)
        except TypeError as exc:
            raise ConfigError(str(exc)) from exc
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.workers < 1 or self.threads < 1:
            raise ConfigError(
                f"workers and threads must be >= 1, got {self.workers}/{self.threads}"
            )
        if not self.identity_variable.isidentifier():
            raise ConfigError(f"identity_variable {self.identity_variable!r} is not a valid name")
        if not self.env_path.startswith("/"):
            raise ConfigError(f"env_path {self.env_path!r} must be an absolute path")
        # the pod CREATE mutation mounts the directory: "/" or a relative path would make
        # every new pod invalid
        first, *parts = self.env_volume_path.split("/")
        if first or len(parts) < 2 or any(part in ("", ".", "..") for part in parts):
            raise ConfigError(
                f"env_volume_path {self.env_volume_path!r} must be an absolute path of a file "
                "in a directory below /, like /.whoexec/env"
            )
        if self.log_level.lower() not in ("debug", "info", "warning", "error", "critical"):
            raise ConfigError(f"log_level {self.log_level!r} is not debug/info/warning/error")
        if not 0 < self.pod_lookup_timeout <= 5:
            raise ConfigError(
                f"pod_lookup_timeout {self.pod_lookup_timeout} must be in (0, 5] seconds, well "
                "under the webhook's timeoutSeconds"
            )
        if self.fresh_seconds < 1 or self.root_skew_seconds < 0 or self.audit_grace_seconds < 0:
            raise ConfigError(
                f"fresh_seconds ({self.fresh_seconds}) must be >= 1, root_skew_seconds "
                f"({self.root_skew_seconds}) and audit_grace_seconds "
                f"({self.audit_grace_seconds}) >= 0"
            )
        if self.hold_seconds < 0 or self.max_processes < 1:
            raise ConfigError("hold_seconds must be >= 0 and max_processes >= 1")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key go together")
        if self.ui_token and len(self.ui_token) < 16:
            raise ConfigError("ui_token must be at least 16 characters (try: openssl rand -hex 24)")
        for name in ("handshake_timeout", "header_timeout", "body_timeout"):
            if not 0 < getattr(self, name) <= 60:
                raise ConfigError(f"{name} {getattr(self, name)} must be in (0, 60] seconds")
        if self.worker_connections < 10:
            raise ConfigError(f"worker_connections {self.worker_connections} is below 10")
        if not 1 <= self.max_connections_per_peer <= self.max_connections:
            raise ConfigError(
                f"max_connections_per_peer {self.max_connections_per_peer} must be in "
                f"[1, max_connections {self.max_connections}]"
            )
        if self.ui_session_seconds < 60:
            raise ConfigError(f"ui_session_seconds {self.ui_session_seconds} is below 60")
        if self.max_body_bytes < 1024:
            raise ConfigError(f"max_body_bytes {self.max_body_bytes} is below 1024")

    def replace(self, **changes: Any) -> Settings:
        settings = dataclasses.replace(self, **changes)
        settings.validate()
        return settings


def _convert(name: str, raw: str, default: Any) -> Any:
    if isinstance(default, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean")
    if isinstance(default, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if isinstance(default, Path):
        return Path(raw)
    if default is None:  # the optional paths
        return Path(raw) if raw else None
    if isinstance(default, tuple):
        items = [item.strip() for item in raw.split(",") if item.strip()]
        paths = name.endswith(("_KEYS", "_PUB"))
        return tuple(Path(i) for i in items) if paths else tuple(items)
    return raw


def ui_exposure_problem(bind: str, token: str) -> str | None:
    """Why ``whoexec ui`` may not listen on ``bind``, or None.

    Outside loopback the UI must ask for a token: the session store names every user and
    holds what they typed. Inside a pod, ``kubectl port-forward`` reaches loopback.
    """
    host = bind.rsplit(":", 1)[0].strip("[]") if ":" in bind else bind
    if token or is_loopback(host):
        return None
    return (
        f"ui_bind {bind!r} is reachable from other machines: set WHOEXEC_UI_TOKEN (or "
        "--auth-token), or bind 127.0.0.1 and use kubectl port-forward"
    )


def is_loopback(host: str) -> bool:
    """An address of this machine only: ``127.0.0.0/8``, ``::1`` (also IPv4-mapped) or
    ``localhost``. Parsed, not compared as text: ``127.0.0.1.example.com`` is a name that
    anyone's DNS can point anywhere."""
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)  # with an IPv6 zone too: ::1%lo
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
