"""The ``whoexec`` command line (click). Errors exit 1 with a one-line message."""

from __future__ import annotations

import contextlib
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


@main.command()
@click.option(
    "--input",
    "input_path",
    default=None,
    help="Falco JSON alerts: a file, or - for stdin. Without --follow it is read to the end.",
)
@click.option("--follow", is_flag=True, help="Follow --input like tail -F (rotation, restarts).")
@click.option("--listen", default=None, help="Serve POST /falco on this address [WHOEXEC_LISTEN].")
@click.option(
    "--identity-pub",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Identity public key (or a directory of *.pub); repeatable for rotation.",
)
@click.option(
    "--procfs",
    type=click.Path(path_type=Path),
    default=None,
    help="Walk this procfs for lineage (a DaemonSet with hostPID: /proc).",
)
@click.option("--db", default=None, help="Session store URL [WHOEXEC_DB].")
@click.option(
    "--output",
    type=click.Path(path_type=Path),
    default=None,
    help="Also append enriched alerts to this file.",
)
@click.option(
    "--forward",
    "forward_url",
    default=None,
    help="POST each enriched alert here (falcosidekick), with an on-disk spool.",
)
@click.option("--no-stdout", is_flag=True, help="Do not write enriched alerts to stdout.")
@click.option(
    "--forward-roots",
    is_flag=True,
    default=None,
    help="Also pass on the session-root rule's own alerts.",
)
@click.option(
    "--hold",
    "hold_seconds",
    type=click.FloatRange(0),
    default=None,
    help="Seconds to hold an unattributed alert for a late session root [2].",
)
@click.option(
    "--max-processes",
    type=click.IntRange(1),
    default=None,
    help="Bound of the process table [100000].",
)
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where offsets and spools live [whoexec-state].",
)
@click.option("--tls-cert", type=click.Path(path_type=Path), default=None)
@click.option("--tls-key", type=click.Path(path_type=Path), default=None)
@click.option(
    "--client-ca",
    type=click.Path(path_type=Path),
    default=None,
    help="Require client certificates signed by this CA (mTLS).",
)
@click.option("--log-level", default=None, help="[WHOEXEC_LOG_LEVEL; info]")
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="HTTP intake processes with --listen [WHOEXEC_WORKERS; 2].",
)
@_friendly
def consume(
    input_path: str | None,
    follow: bool,
    listen: str | None,
    identity_pub: tuple[Path, ...],
    procfs: Path | None,
    db: str | None,
    output: Path | None,
    forward_url: str | None,
    no_stdout: bool,
    forward_roots: bool | None,
    hold_seconds: float | None,
    max_processes: int | None,
    state_dir: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    log_level: str | None,
    workers: int | None,
) -> None:
    """Attribute Falco alerts to the Kubernetes user of their exec session.

    Batch: `whoexec consume --input events.json --identity-pub identity.pub` reads the
    file to its end, writes enriched alerts as JSON lines to stdout and exits 0.
    """
    from webhook.settings import Settings

    settings = Settings.from_env(
        os.environ,
        identity_pub=identity_pub,
        procfs=procfs,
        db=db,
        output=output,
        forward_url=forward_url,
        forward_roots=forward_roots,
        hold_seconds=hold_seconds,
        max_processes=max_processes,
        state_dir=state_dir,
        listen=listen,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        log_level=log_level,
        workers=workers,
    )
    logging.basicConfig(level=settings.log_level.upper(), format="%(message)s", stream=sys.stderr)
    if settings.listen and input_path:
        raise click.UsageError("use either --listen or --input, not both")
    if not settings.listen and not input_path:
        raise click.UsageError("give --input FILE (or - for stdin), or --listen ADDRESS")
    if follow and (not input_path or input_path == "-"):
        raise click.UsageError("--follow needs --input FILE")
    stdout = None if no_stdout else sys.stdout.buffer
    if settings.listen:
        # before anything imports prometheus_client (see prepare_metrics_dir)
        from webhook.wsgi import prepare_metrics_dir

        prepare_metrics_dir(settings.workers)
        from webhook import consumer_app

        consumer_app.serve_consumer(settings, stdout)
        return
    from webhook import consumer_app

    assert input_path is not None
    consumer = consumer_app.build_consumer(settings, stdout=stdout, input_name="file")
    if follow:
        with contextlib.suppress(KeyboardInterrupt):
            consumer_app.run_follow(consumer, Path(input_path), settings.state_dir)
        return
    if input_path == "-":
        count = consumer_app.run_batch(consumer, sys.stdin.buffer)
    else:
        try:
            stream = Path(input_path).open("rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            consumer.close()
            raise click.ClickException(
                f"cannot read --input {input_path}: {exc.strerror}"
            ) from None
        with stream:
            count = consumer_app.run_batch(consumer, stream)
    stats = consumer.pipeline.stats
    skipped = sum(v for k, v in stats.items() if k.startswith("skipped_"))
    attributed = [
        f"{key.removeprefix('attribution_')} {value}"
        for key, value in sorted(stats.items())
        if key.startswith("attribution_")
    ]
    click.echo(
        f"whoexec: {count} alerts read, {skipped} lines skipped, {stats['findings']} findings; "
        f"attribution: {', '.join(attributed) or 'nothing passed on'}",
        err=True,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
