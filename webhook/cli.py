"""The ``whoexec`` command line (click). Errors exit 1 with a one-line message."""

from __future__ import annotations

import datetime
import logging
import os
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from webhook.errors import WhoexecError

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(func: F) -> F:
    """Turn whoexec's own errors into click errors (exit 1, no traceback)."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except WhoexecError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="whoexec")
def main() -> None:
    """whoexec: which Kubernetes user ran that command in the pod?"""


@main.command()
@click.option("--service", default="whoexec", show_default=True, help="Service name.")
@click.option("--namespace", default="whoexec", show_default=True, help="Service namespace.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("certs"),
    show_default=True,
    help="Directory to write into.",
)
@click.option("--days", type=click.IntRange(1, 3650), default=365, show_default=True)
@click.option("--force", is_flag=True, help="Overwrite existing files.")
@_friendly
def certs(service: str, namespace: str, out: Path, days: int, force: bool) -> None:
    """Write a dev CA, the webhook's TLS certificate and the identity key pair.

    Private keys (ca.key, tls.key, identity.key) are written with mode 0600. The base64
    caBundle for the MutatingWebhookConfiguration is printed on stdout.
    """
    from webhook.certs import generate_certs

    now = datetime.datetime.now(datetime.UTC)
    bundle = generate_certs(out, service, namespace, now, days=days, force=force)
    click.echo(
        f"wrote {', '.join(sorted(p.name for p in out.iterdir() if p.is_file()))} to {out}",
        err=True,
    )
    click.echo(f"serving certificate SANs: {', '.join(bundle.dns_names)}, 127.0.0.1", err=True)
    click.echo("caBundle:", err=True)
    click.echo(bundle.ca_bundle)


@main.command()
@click.option(
    "--certs",
    "certs_dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Directory with tls.crt, tls.key, identity.key [env WHOEXEC_CERTS; default certs].",
)
@click.option("--bind", default=None, help="Address to listen on [WHOEXEC_BIND; 0.0.0.0:8443].")
@click.option("--workers", type=click.IntRange(1, 64), default=None, help="[WHOEXEC_WORKERS; 2]")
@click.option("--threads", type=click.IntRange(1, 256), default=None, help="[WHOEXEC_THREADS; 8]")
@click.option("--exclude-namespace", multiple=True, help="Glob; repeatable.")
@click.option("--exclude-user", multiple=True, help="Glob; repeatable.")
@click.option("--exclude-group", multiple=True, help="Glob; repeatable.")
@click.option(
    "--trusted-key",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra identity public key whose tokens count as our own (rotation); repeatable.",
)
@click.option("--log-level", default=None, help="[WHOEXEC_LOG_LEVEL; info]")
@_friendly
def serve(
    certs_dir: Path | None,
    bind: str | None,
    workers: int | None,
    threads: int | None,
    exclude_namespace: tuple[str, ...],
    exclude_user: tuple[str, ...],
    exclude_group: tuple[str, ...],
    trusted_key: tuple[Path, ...],
    log_level: str | None,
) -> None:
    """Run the admission webhook over TLS under gunicorn (gthread, keep-alive)."""
    from webhook.settings import Settings

    settings = Settings.from_env(
        os.environ,
        certs=certs_dir,
        bind=bind,
        workers=workers,
        threads=threads,
        exclude_namespaces=exclude_namespace,
        exclude_users=exclude_user,
        exclude_groups=exclude_group,
        trusted_keys=trusted_key,
        log_level=log_level,
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stderr)
    # before anything imports prometheus_client (see prepare_metrics_dir)
    from webhook.wsgi import WebhookApplication, prepare_metrics_dir

    metrics_dir = prepare_metrics_dir(settings.workers)
    WebhookApplication(settings, metrics_dir).run()


if __name__ == "__main__":  # pragma: no cover
    main()
